"""Evaluations: harmfulness (judged generations, pluggable judge), utility (exact match), perplexity.

The paper's harm metric is :class:`LLMJudge`: the Qi et al. 1-5 rubric over an OpenAI-compatible
endpoint (mean score, distribution, unparsable and failed answers counted).

Example:
    >>> from deltalens.evals import harmfulness, utility, perplexity, RefusalJudge
    >>> rep = harmfulness(model, harmbench(), judge=RefusalJudge(), chat=True)
    >>> rep.refusal_rate, rep.compliance_rate, rep.verdicts.head()
"""

from deltalens.evals.judge import REFUSAL_PREFIXES, Judge, RefusalJudge, Verdict, normalize_response
from deltalens.evals.llm_judge import JudgeError, LLMJudge, RubricScore, RubricScores
from deltalens.evals.metrics import (
    GROUP_RATE_COLUMNS,
    PER_TEXT_COLUMNS,
    UTILITY_COLUMNS,
    VERDICT_COLUMNS,
    HarmfulnessReport,
    PerplexityReport,
    UtilityReport,
    extract_integers,
    harmfulness,
    perplexity,
    utility,
)

__all__ = [
    "GROUP_RATE_COLUMNS",
    "PER_TEXT_COLUMNS",
    "REFUSAL_PREFIXES",
    "UTILITY_COLUMNS",
    "VERDICT_COLUMNS",
    "HarmfulnessReport",
    "Judge",
    "JudgeError",
    "LLMJudge",
    "PerplexityReport",
    "RefusalJudge",
    "RubricScore",
    "RubricScores",
    "UtilityReport",
    "Verdict",
    "extract_integers",
    "harmfulness",
    "normalize_response",
    "perplexity",
    "utility",
]
