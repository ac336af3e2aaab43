"""Does the paper replicate on this family? One row per claim and variant, with its rule and the count.

Every row names the rule that produced it (``rule``, defined in ``docs/verdicts.md`` with the
paper's wording, the rule, its threshold and why), how many cases it checked (``of``) and in how
many the paper's claim held (``holds``), and the outcome: ``replicates`` (all), ``does not``
(none), ``mixed`` (some) or ``not tested`` (the tables lack what the rule needs; ``detail``
says what). The rules live in :mod:`~deltalens.study.battery.rules_sweep` (Exp 1, Exp 2) and
:mod:`~deltalens.study.battery.rules_overlap` (Exp 3, Exp 4, harmful–harmless, probes).

Tables are checked against their schemas (:mod:`deltalens.study.tables`): a table that lacks a
required column raises :class:`~deltalens.schemas.SchemaError` naming it; an experiment that did
not run gives no rows.

Example:
    >>> v = verdicts(tables, context={"primary_scope": "all"})
    >>> v[["claim", "rule", "outcome", "numbers"]]
    >>> robustness({0: v0, 1: v1, 2: v2})        # "holds in x of y seeds"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deltalens.study.battery.rules_common import (
    OUTCOMES,
    ROBUSTNESS_RULE,
    RULES,
    VERDICT_COLUMNS,
    VERDICTS,
    Row,
    claim_row,
)
from deltalens.study.battery.rules_overlap import activation_verdicts, exp3_verdicts, probe_verdicts
from deltalens.study.battery.rules_sweep import exp1_verdicts, exp2_verdicts

__all__ = ["OUTCOMES", "ROBUSTNESS_RULE", "RULES", "VERDICTS", "VERDICT_COLUMNS", "robustness", "verdicts"]


def verdicts(tables: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> Any:
    """The verdict table for the paper's claims, from the battery's tables.

    Args:
        tables: table name -> DataFrame; reads ``sweep`` (Exp 1, Exp 2), ``evals`` (Exp 2's
            un-projected references), ``weight_overlap`` (Exp 3), ``activation_overlap`` (Exp 4,
            harmful–harmless) and ``probes`` where present (see :mod:`deltalens.study.tables`).
        context: run facts from ``summary.json``: ``primary_scope`` (the sweep scope whose rows
            carry no variant label; default ``"all"``, the paper's), ``h1_source`` and
            ``h2_source`` (named in Exp 4's detail).

    Returns:
        DataFrame with :data:`VERDICT_COLUMNS` (``claim, rule, outcome, holds, of, replicates,
        numbers, detail``), one row per (claim, variant) whose experiment ran.

    Raises:
        SchemaError: a present table lacks a column its schema requires.
    """
    ctx = dict(context or {})
    rows: list[Row] = [
        *exp1_verdicts(tables.get("sweep"), ctx),
        *exp2_verdicts(tables.get("sweep"), tables.get("evals"), ctx),
        *exp3_verdicts(tables.get("weight_overlap"), ctx),
        *activation_verdicts(tables.get("activation_overlap"), ctx),
        *probe_verdicts(tables.get("probes"), ctx),
    ]
    return VERDICTS.frame(rows)


def _seed_cell(seed: Any, r: Any) -> str:
    count = f" ({r['holds']} of {r['of']})" if r["of"] else ""
    return f"seed {seed}: {r['outcome']}{count}"


def robustness(per_seed: Mapping[Any, Any]) -> Any:
    """Summarise the verdicts of several organism seeds: ``holds in x of y seeds`` per claim.

    Rule ``robustness.seeds.v1``: for each (claim, rule), ``of`` counts the seeds where it was
    tested and ``holds`` those where it replicated (all its cases held); the outcome follows the
    same words (``mixed`` when some seeds replicate; ``does not`` when none does).

    Args:
        per_seed: seed -> that seed's verdict table (:func:`verdicts`), or its records.

    Returns:
        DataFrame with :data:`VERDICT_COLUMNS`; ``detail`` lists each seed's outcome.

    Raises:
        ValueError: ``per_seed`` is empty or a table lacks the verdict columns.
    """
    import pandas as pd

    if not per_seed:
        raise ValueError("per_seed: expected {seed: verdict table} for at least one seed, got none")
    frames = []
    for seed, v in per_seed.items():
        v = v if hasattr(v, "columns") else pd.DataFrame(list(v))  # records, as in robustness.json
        VERDICTS.check(v, where=f"robustness (seed {seed})")
        frames.append(v.assign(_seed=seed))
    allv = pd.concat(frames, ignore_index=True)
    rows = []
    for (claim, rule), d in allv.groupby(["claim", "rule"], sort=False):
        tested = d[d["outcome"] != "not tested"]
        holds, of = int((tested["outcome"] == "replicates").sum()), len(tested)
        cells = "; ".join(_seed_cell(s, r) for s, r in zip(d["_seed"], d.to_dict("records")))
        numbers = f"holds in {holds} of {of} seeds"
        rows.append(claim_row(claim, rule, holds, of, numbers, f"{ROBUSTNESS_RULE}: {cells}"))
    return VERDICTS.frame(rows)
