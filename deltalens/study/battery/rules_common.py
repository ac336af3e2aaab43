"""What every verdict rule shares: the verdict table, rule ids, outcomes, and the random-subspace null.

A verdict row names its rule (``rule``: an id defined in ``docs/verdicts.md``), counts the cases
the rule checked (``of``) and those where the paper's claim held (``holds``), and turns the
count into an ``outcome``:

* ``replicates``: it held in every case; ``does not``: in none; ``mixed``: in some
  (``numbers`` says "holds in x of y ...");
* ``not tested``: the tables lack what the rule needs (``detail`` says what).

Example:
    >>> outcome(3, 5), outcome(5, 5), outcome(0, 5), outcome(0, 0)
    ('mixed', 'replicates', 'does not', 'not tested')
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from deltalens.schemas import Schema

Row = dict[str, Any]

VERDICTS = Schema(
    "verdicts",
    {
        "claim": "str",
        "rule": "str",
        "outcome": "str",
        "holds": "int64",
        "of": "int64",
        "replicates": "object",
        "numbers": "str",
        "detail": "str",
    },
    doc={
        "claim": "the paper's claim (and the variant checked: subspace, scope, prompts, centring)",
        "rule": "the rule's id; docs/verdicts.md defines it (the paper's wording, the rule, its threshold)",
        "outcome": "replicates / does not / mixed / not tested",
        "holds": "cases where the claim held",
        "of": "cases the rule checked (0: not tested)",
        "replicates": "True (replicates), False (does not), None (mixed or not tested)",
        "numbers": "the count and the numbers behind it",
        "detail": "how it was measured, or why it was not tested",
    },
    extra=False,
)
"""The verdict table: one row per (claim, variant)."""

VERDICT_COLUMNS = list(VERDICTS.names)
"""Columns of the verdict table, in order."""

OUTCOMES = ("replicates", "does not", "mixed", "not tested")
"""The outcomes of a verdict row."""

RULES: dict[str, str] = {
    "exp1.topk-vs-random.v2": (
        "Exp 1: at the same k, Top-K projection recovers more utility (useful update) and more harm "
        "(harmful update) than RandomK and Random"
    ),
    "exp1.energy-even.v2": "Exp 1: E_k(useful) ≈ E_k(harmful) under Top-K projection",
    "exp2.fall-together.v1": (
        "Exp 2: removing subspace directions from the contaminated update lowers utility and harm together"
    ),
    "exp2.topk-costs-utility.v1": (
        "Exp 2: removing Top-K directions costs more utility than removing random ones, while harm falls "
        "at a similar rate"
    ),
    "exp3.useful-harmful-highest.v2": (
        "Exp 3: the harmful update overlaps the useful update at least as much as the alignment "
        "(and safety) update, above random"
    ),
    "exp4.useful-vs-harmful.v2": (
        "Exp 4: activation MSO(useful, harmful) is comparable to or above MSO(H1, H2), all above random"
    ),
    "overlap.harmful-harmless.v2": (
        "Harmful and harmless prompts activate overlapping representations (MSO above what random "
        "subspaces reach)"
    ),
    "probes.selectivity.v1": (
        "Harmful and harmless prompts are linearly separable beyond a control task (extra to the paper)"
    ),
}
"""Rule id -> the claim it checks (the claim column, before any variant suffix)."""

ROBUSTNESS_RULE = "robustness.seeds.v1"
"""How verdicts of several organism seeds are summarised ("holds in x of y seeds")."""

ALPHA = 1e-3
"""Chance that a random subspace pair passes a random-subspace threshold (:func:`haar_threshold`)."""


def outcome(holds: int, of: int) -> str:
    """``replicates`` (all), ``does not`` (none), ``mixed`` (some) or ``not tested`` (no case)."""
    if of == 0:
        return "not tested"
    if holds == of:
        return "replicates"
    return "does not" if holds == 0 else "mixed"


def claim(rule: str, variant: str = "") -> str:
    """The claim of ``rule``, with the variant checked (e.g. ``"Δ_S subspace"``) appended."""
    return RULES[rule] + (f" [{variant}]" if variant else "")


def row(rule: str, holds: int, of: int, numbers: str, detail: str = "", variant: str = "") -> Row:
    """A verdict row of ``rule``'s claim (with ``variant``)."""
    return claim_row(claim(rule, variant), rule, holds, of, numbers, detail)


def claim_row(text: str, rule: str, holds: int, of: int, numbers: str, detail: str = "") -> Row:
    """A verdict row whose claim is ``text`` (ready, variant included); the outcome and ``replicates``
    follow from the count."""
    out = outcome(holds, of)
    return {
        "claim": text,
        "rule": rule,
        "outcome": out,
        "holds": int(holds),
        "of": int(of),
        "replicates": {"replicates": True, "does not": False}.get(out),
        "numbers": numbers,
        "detail": detail,
    }


def not_tested(rule: str, why: str, variant: str = "") -> Row:
    """A ``not tested`` row; ``why`` names what the tables lack."""
    return row(rule, 0, 0, "not tested", why, variant)


def present(df: Any) -> bool:
    """A table was produced and has rows."""
    return df is not None and len(df) > 0


def groups(df: Any, labels: Sequence[str]) -> Iterator[tuple[dict[str, Any], Any]]:
    """``(labels -> value, rows)`` for each combination of the ``labels`` columns ``df`` has, in order."""
    have = [c for c in labels if c in df.columns]
    if not have:
        yield {}, df
        return
    for key, sub in df.groupby(have, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(have, key)), sub


def fmt(x: float, digits: int = 2) -> str:
    """A number for the ``numbers`` column (``nan`` stays ``nan``)."""
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# ---------------------------------------------------------------- which harm number
HARM_COLUMNS = (("harm_score", "mean 1-5 rubric score (LLM judge)", 4.0), ("harm", "harmful compliance", 1.0))
"""Harm columns by preference: the paper's 1-5 judge score where a run has it, else the compliance rate;
with what they measure and the span of their scale."""


def harm_column(*tables: Any) -> tuple[str, str, float]:
    """``(column, what it measures, scale span)`` of the harm number every one of ``tables`` has."""
    for col, what, span in HARM_COLUMNS:
        if all(col in t.columns and t[col].notna().any() for t in tables if t is not None):
            return col, what, span
    return HARM_COLUMNS[-1]


def judge_note(context: dict[str, Any], column: str) -> str:
    """``"; <column> scored by <judge>"`` from the run's ``judges`` records (empty when not recorded)."""
    judges = context.get("judges") or []
    who = next((j.get("judge") for j in judges if isinstance(j, dict) and j.get("column") == column), None)
    return f"; {column} scored by {who}" if who else ""


# ---------------------------------------------------------------- random-subspace null
def haar_moments(k_a: float, k_b: float, d: float) -> tuple[float, float]:
    """Mean and standard deviation of the MSO of two independent uniformly random subspaces.

    For projectors P_a (rank p) and P_b (rank q) in R^d, one of them Haar-random,
    E tr(P_a P_b) = pq/d and Var tr(P_a P_b) = 2 p(d−p) q(d−q) / ((d−1) d² (d+2)); MSO divides
    tr(P_a P_b) by min(p, q). At p = q = 1 this is Beta(1/2, (d−1)/2), mean 1/d.

    Example:
        >>> m, s = haar_moments(1, 1, 100)
        >>> round(m, 4), round(s, 4)
        (0.01, 0.0139)
    """
    p, q, d = float(k_a), float(k_b), float(d)
    lo = min(p, q)
    var = 2 * p * (d - p) * q * (d - q) / ((d - 1) * d * d * (d + 2)) if d > 1 else 0.0
    return p * q / d / lo, math.sqrt(max(var, 0.0)) / lo


def haar_threshold(k_a: float, k_b: float, d: float, alpha: float = ALPHA) -> float:
    """The MSO that two independent random subspaces of dims ``k_a, k_b`` in R^d exceed with
    probability ``alpha``: the (1 − alpha) quantile of a Beta with the null's mean and variance
    (exact at k = 1, where the null is Beta(1/2, (d−1)/2)).

    Example:
        >>> round(haar_threshold(1, 1, 128), 3)   # 5x random would be 0.039
        0.082
    """
    from scipy.stats import beta

    mean, sd = haar_moments(max(1.0, round(k_a)), max(1.0, round(k_b)), d)
    var = sd * sd
    if var <= 0 or mean >= 1:
        return mean
    common = mean * (1 - mean) / var - 1
    return float(beta.ppf(1 - alpha, mean * common, (1 - mean) * common))
