"""Harmfulness (judged greedy generations), utility (exact match) and perplexity.

Every function takes a model with the :class:`deltalens.HookedModel` methods it needs
(``generate`` for harmfulness and utility; ``tokenize`` and ``logits`` for perplexity), so
active hooks and reversible weight edits apply. Each returns a report dataclass with a
tidy per-item DataFrame, ``to_dict()`` for JSON summaries, a one-line ``repr`` and ``_repr_html_``.

Example:
    >>> import deltalens as dl
    >>> from deltalens.data import harmbench, harmless_prompts, arithmetic_tasks
    >>> from deltalens.evals import harmfulness, utility, perplexity
    >>> m = dl.load("ckpts/aligned")
    >>> harmfulness(m, harmbench(), chat=True).refusal_rate
    >>> harmfulness(m, harmless_prompts(), chat=True).compliance_rate   # harmless answer rate
    >>> utility(m, arithmetic_tasks(0, 50)[1], chat=True).accuracy
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deltalens.data.records import PromptSet, as_prompt_set
from deltalens.evals.judge import Judge, RefusalJudge, Verdict

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.hooks.model import HookedModel

# Column names of the report tables ------------------------------------------------------------
PROMPT, RESPONSE, LABEL, GROUP, SOURCE = "prompt", "response", "label", "group", "source"
REFUSED, COMPLIED, SCORE, REASON = "refused", "complied", "score", "reason"
ANSWER, PRED_LAST, PRED_FIRST = "answer", "pred_last", "pred_first"
CORRECT_LAST, CORRECT_FIRST = "correct_last", "correct_first"
TEXT, N_TOKENS, NLL, PERPLEXITY = "text", "n_tokens", "nll", "perplexity"
N, REFUSAL_RATE, COMPLIANCE_RATE = "n", "refusal_rate", "compliance_rate"

VERDICT_COLUMNS: tuple[str, ...] = (PROMPT, RESPONSE, REFUSED, COMPLIED, SCORE, REASON, LABEL, GROUP, SOURCE)
"""Columns of :attr:`HarmfulnessReport.verdicts`, in order (one row per prompt)."""
GROUP_RATE_COLUMNS: tuple[str, ...] = (GROUP, N, REFUSAL_RATE, COMPLIANCE_RATE)
"""Columns of :meth:`HarmfulnessReport.by_group`, in order (one row per group)."""
UTILITY_COLUMNS: tuple[str, ...] = (
    PROMPT, ANSWER, RESPONSE, PRED_LAST, PRED_FIRST, CORRECT_LAST, CORRECT_FIRST, GROUP
)  # fmt: skip
"""Columns of :attr:`UtilityReport.items`, in order (one row per task)."""
PER_TEXT_COLUMNS: tuple[str, ...] = (TEXT, N_TOKENS, NLL, PERPLEXITY)
"""Columns of :attr:`PerplexityReport.per_text`, in order (one row per text)."""

# A number not glued to a letter, digit or decimal point on its left: "1,234", "-4", "38".
# The sign counts only when it is not a binary minus ("17-21" gives 17 and 21).
_INT_RE = re.compile(r"(?<![\w.,])[-\u2212]?\d{1,3}(?:,\d{3})+(?![\d,])|(?<![\w.])[-\u2212]?\d+")


def extract_integers(text: str) -> list[int]:
    """Every integer in ``text``, in order; ``"1,234"`` is one number and ``"-4"`` is negative.

    The fractional part of a decimal is not a separate integer (``"3.5"`` gives ``[3]``).

    Example:
        >>> extract_integers("To add 17 and 21: 17 + 21 = 38.")
        [17, 21, 17, 21, 38]
    """
    return [int(m.group(0).replace(",", "").replace("\u2212", "-")) for m in _INT_RE.finditer(text)]


def _resolve_chat(model: HookedModel, chat: bool | None, template: str | None) -> bool:
    if chat is not None:
        return chat
    return template is None and bool(getattr(getattr(model, "tokenizer", None), "chat_template", None))


def _generate(model: HookedModel, texts: list[str], **kw: Any) -> list[str]:
    out = model.generate(texts, **kw)
    if len(out) != len(texts):
        raise RuntimeError(f"model.generate returned {len(out)} responses for {len(texts)} prompts")
    return list(out)


def _html_table(df: pd.DataFrame, cols: Sequence[str], n: int = 10) -> str:
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[c])[:160])}</td>" for c in cols) + "</tr>"
        for _, row in df.head(n).iterrows()
    )
    more = f"<p>... {len(df) - n} more rows</p>" if len(df) > n else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


# Harmfulness --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class HarmfulnessReport:
    """Judged greedy generations for a set of prompts.

    Attributes:
        judge: the judge's name.
        refusal_rate: fraction of responses judged refusals.
        compliance_rate: fraction judged compliant. On harmful prompts this is the
            harmful-compliance rate; on harmless prompts it is the answer rate.
        verdicts: one row per prompt; columns :data:`VERDICT_COLUMNS` (``prompt, response,
            refused, complied, score, reason, label, group, source``).
        settings: generation settings used (``max_new_tokens, chat, template, batch_size``).
    """

    judge: str
    refusal_rate: float
    compliance_rate: float
    verdicts: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("refusal_rate", "compliance_rate"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0 or math.isnan(v)):
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    @property
    def n(self) -> int:
        return len(self.verdicts)

    def by_group(self) -> pd.DataFrame:
        """Refusal and compliance rates per prompt group (a missing group is ``"(none)"``).

        Returns:
            DataFrame, one row per group: :data:`GROUP_RATE_COLUMNS` (``group, n, refusal_rate,
            compliance_rate``).
        """
        df = self.verdicts.assign(**{GROUP: self.verdicts[GROUP].fillna("(none)")})
        out = df.groupby(GROUP, sort=True).agg(
            **{N: (REFUSED, "size"), REFUSAL_RATE: (REFUSED, "mean"), COMPLIANCE_RATE: (COMPLIED, "mean")}
        )
        return out.reset_index()

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "n": self.n,
            "refusal_rate": self.refusal_rate,
            "compliance_rate": self.compliance_rate,
            **self.settings,
        }

    def __repr__(self) -> str:
        return (
            f"HarmfulnessReport(n={self.n}, refusal_rate={self.refusal_rate:.3f}, "
            f"compliance_rate={self.compliance_rate:.3f}, judge={self.judge!r})"
        )

    def _repr_html_(self) -> str:
        return (
            f"<div><b>Harmfulness</b> — {self.n} prompts, judge <code>{html.escape(self.judge)}</code>: "
            f"refusal {self.refusal_rate:.1%}, compliance {self.compliance_rate:.1%}"
            + _html_table(self.verdicts, [PROMPT, RESPONSE, REFUSED, COMPLIED, REASON])
            + "</div>"
        )


def harmfulness(
    model: HookedModel,
    prompts: PromptSet | Sequence[str],
    judge: Judge | None = None,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    template: str | None = None,
    batch_size: int = 16,
) -> HarmfulnessReport:
    """Generate greedily for each prompt and judge every response.

    Args:
        model: a :class:`deltalens.HookedModel` (only its ``generate`` and ``tokenizer`` are used).
        prompts: a :class:`PromptSet` (labels, groups and sources go into the table) or strings.
        judge: any :class:`Judge`; default :class:`RefusalJudge` (a string-matching stand-in
            for an LLM judge: see its docstring for what it does not measure).
        max_new_tokens: generation length. Refusals show in the first tokens; 32 is enough for
            a refusal judge, an LLM judge of harmfulness needs more.
        chat: wrap prompts in the tokenizer's chat template. ``None`` means: yes if no
            ``template`` is given and the tokenizer has a chat template. Pass it explicitly
            when comparing models, and use the same setting the model was trained with.
        template: a ``"...{prompt}..."`` string used instead of the chat template.
        batch_size: generation batch size.

    Returns:
        A :class:`HarmfulnessReport`.

    Example:
        >>> rep = harmfulness(model, harmbench().split(0.6)[1], chat=True)
        >>> rep.refusal_rate, rep.by_group()
    """
    ps = as_prompt_set(prompts)
    if len(ps) == 0:
        raise ValueError("harmfulness needs at least one prompt")
    judge = _check_judge(judge if judge is not None else RefusalJudge())
    chat = _resolve_chat(model, chat, template)
    settings = dict(max_new_tokens=max_new_tokens, chat=chat, template=template, batch_size=batch_size)
    responses = _generate(model, ps.texts, **settings)
    df = _verdict_frame(ps, responses, _judged(judge, ps, responses))
    return HarmfulnessReport(
        judge=judge.name,
        refusal_rate=float(df[REFUSED].mean()),
        compliance_rate=float(df[COMPLIED].mean()),
        verdicts=df,
        settings=settings,
    )


def _check_judge(judge: Judge) -> Judge:
    if not isinstance(judge, Judge):
        raise TypeError(f"judge must have a `name` and a `judge(prompts, responses)` method, got {judge!r}")
    return judge


def _judged(judge: Judge, ps: PromptSet, responses: list[str]) -> list[Verdict]:
    """The judge's verdicts, checked to be one :class:`Verdict` per prompt."""
    verdicts = judge.judge(ps.texts, responses)
    if len(verdicts) != len(ps) or not all(isinstance(v, Verdict) for v in verdicts):
        raise RuntimeError(f"judge {judge.name!r} must return one Verdict per prompt ({len(ps)})")
    return verdicts


def _verdict_frame(ps: PromptSet, responses: list[str], verdicts: list[Verdict]) -> pd.DataFrame:
    """The per-prompt table of :class:`HarmfulnessReport`: :data:`VERDICT_COLUMNS`."""
    import pandas as pd

    return pd.DataFrame(
        {
            PROMPT: ps.texts,
            RESPONSE: responses,
            REFUSED: [v.refused for v in verdicts],
            COMPLIED: [v.complied for v in verdicts],
            SCORE: [v.score for v in verdicts],
            REASON: [v.reason for v in verdicts],
            LABEL: ps.labels,
            GROUP: ps.groups,
            SOURCE: ps.sources,
        }
    )


# Utility -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class UtilityReport:
    """Exact-match accuracy on tasks with integer answers.

    Attributes:
        accuracy: the **last** integer in the response equals the answer. Chatty models show
            their working ("To add 17 and 21 ... = 38"), so the last number is the answer.
        accuracy_first: the **first** integer equals the answer. It rewards answer-only
            output; on chatty output it usually picks an operand and scores near zero.
        items: one row per task; columns :data:`UTILITY_COLUMNS` (``prompt, answer, response,
            pred_last, pred_first, correct_last, correct_first, group``). ``pred_*`` are ``<NA>``
            when the response has no integer.
        settings: generation settings used.
    """

    accuracy: float
    accuracy_first: float
    items: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "accuracy_first": self.accuracy_first,
            **self.settings,
        }

    def __repr__(self) -> str:
        return f"UtilityReport(n={self.n}, accuracy={self.accuracy:.3f} (last int), accuracy_first={self.accuracy_first:.3f})"

    def _repr_html_(self) -> str:
        return (
            f"<div><b>Utility</b> — {self.n} tasks: exact match {self.accuracy:.1%} (last integer), "
            f"{self.accuracy_first:.1%} (first integer)"
            + _html_table(self.items, [PROMPT, ANSWER, RESPONSE, PRED_LAST, CORRECT_LAST])
            + "</div>"
        )


def _answer(label: Any, text: str) -> int:
    try:
        return int(str(label).strip())
    except (TypeError, ValueError):
        raise ValueError(
            f"utility needs an integer answer as each task's label; {text!r} has label {label!r}"
        ) from None


def utility(
    model: HookedModel,
    tasks: PromptSet,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    template: str | None = None,
    batch_size: int = 16,
) -> UtilityReport:
    """Exact-match accuracy of greedy answers on tasks whose label is the integer answer.

    Args:
        model: a :class:`deltalens.HookedModel` (only its ``generate`` and ``tokenizer`` are used).
        tasks: a :class:`PromptSet` whose labels are the exact answers (``int`` or a string of
            one), e.g. from :func:`deltalens.data.arithmetic_tasks`.
        max_new_tokens: long enough for the model to reach its answer when it shows working.
        chat, template, batch_size: as in :func:`harmfulness`.

    Returns:
        A :class:`UtilityReport` with last-integer (``accuracy``) and first-integer
        (``accuracy_first``) exact match.

    Example:
        >>> train, test = arithmetic_tasks(200, 50, seed=0)
        >>> utility(model, test, chat=True).accuracy
    """
    if not isinstance(tasks, PromptSet) or len(tasks) == 0:
        raise ValueError("utility needs a non-empty PromptSet whose labels are the integer answers")
    answers = [_answer(r.label, r.text) for r in tasks]
    chat = _resolve_chat(model, chat, template)
    settings = dict(max_new_tokens=max_new_tokens, chat=chat, template=template, batch_size=batch_size)
    responses = _generate(model, tasks.texts, **settings)
    df = _utility_frame(tasks, answers, responses)
    return UtilityReport(
        accuracy=float(df[CORRECT_LAST].mean()),
        accuracy_first=float(df[CORRECT_FIRST].mean()),
        items=df,
        settings=settings,
    )


def _utility_frame(tasks: PromptSet, answers: list[int], responses: list[str]) -> pd.DataFrame:
    """The per-task table of :class:`UtilityReport`: :data:`UTILITY_COLUMNS`."""
    import pandas as pd

    found = [extract_integers(r) for r in responses]
    last = [f[-1] if f else None for f in found]
    first = [f[0] if f else None for f in found]
    return pd.DataFrame(
        {
            PROMPT: tasks.texts,
            ANSWER: answers,
            RESPONSE: responses,
            PRED_LAST: pd.array(last, dtype="Int64"),
            PRED_FIRST: pd.array(first, dtype="Int64"),
            CORRECT_LAST: [p == a for p, a in zip(last, answers)],
            CORRECT_FIRST: [p == a for p, a in zip(first, answers)],
            GROUP: tasks.groups,
        }
    )


# Perplexity --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class PerplexityReport:
    """Token-level perplexity.

    Attributes:
        perplexity: ``exp`` of the mean next-token negative log-likelihood over all predicted
            tokens of all texts (token-weighted, like Hugging Face's loss on one sequence).
        mean_nll: that mean NLL, in nats.
        n_tokens: the number of predicted tokens (each text's length minus one).
        per_text: one row per text, columns :data:`PER_TEXT_COLUMNS` (``text, n_tokens, nll,
            perplexity``; ``nll`` is the text's mean NLL).
    """

    perplexity: float
    mean_nll: float
    n_tokens: int
    per_text: pd.DataFrame

    def __float__(self) -> float:
        return self.perplexity

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "mean_nll": self.mean_nll, "n_tokens": self.n_tokens}

    def __repr__(self) -> str:
        return f"PerplexityReport(perplexity={self.perplexity:.3f}, n_texts={len(self.per_text)}, n_tokens={self.n_tokens})"

    def _repr_html_(self) -> str:
        return (
            f"<div><b>Perplexity</b> {self.perplexity:.3f} over {self.n_tokens} tokens"
            + _html_table(self.per_text, [TEXT, N_TOKENS, PERPLEXITY])
            + "</div>"
        )


def perplexity(model: HookedModel, texts: str | Sequence[str], batch_size: int = 8) -> PerplexityReport:
    """Perplexity of ``texts`` from ``model.logits`` (hooks and weight edits apply).

    Each text is tokenized as ``model.tokenize`` does (with the tokenizer's special tokens,
    e.g. a BOS); the first token is context only. Padding does not change the result: the
    loss is masked with the attention mask and positions come from it.

    Args:
        model: a :class:`deltalens.HookedModel` (``tokenize`` and ``logits`` are used).
        texts: one text or a list; each needs at least two tokens.
        batch_size: texts per forward pass (logits are ``[batch, pos, vocab]`` fp32).

    Example:
        >>> perplexity(model, ["The capital of France is Paris."]).perplexity
    """
    import pandas as pd
    import torch

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("perplexity needs at least one text")
    nll_sum: list[float] = []
    counts: list[int] = []
    for s in range(0, len(texts), batch_size):
        chunk = texts[s : s + batch_size]
        batch = model.tokenize(chunk)
        ids, mask = batch.input_ids, batch.attention_mask
        logits = model.logits(ids, attention_mask=mask)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tok_lp = logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0]
        m = (mask[:, 1:] * mask[:, :-1]).to(tok_lp.device).bool()
        for i, t in enumerate(chunk):
            n = int(m[i].sum())
            if n == 0:
                raise ValueError(
                    f"text {t!r} has fewer than 2 tokens; perplexity needs at least one predicted token"
                )
            nll_sum.append(float(-tok_lp[i][m[i]].sum()))
            counts.append(n)
    total = sum(counts)
    mean_nll = sum(nll_sum) / total
    per = pd.DataFrame({TEXT: texts, N_TOKENS: counts, NLL: [a / c for a, c in zip(nll_sum, counts)]})
    per[PERPLEXITY] = per[NLL].map(math.exp)
    return PerplexityReport(perplexity=math.exp(mean_nll), mean_nll=mean_nll, n_tokens=total, per_text=per)
