"""Verdict rules of the projection sweeps: Exp 1 (parallel projection) and Exp 2 (orthogonal removal).

Each rule is defined, with the paper's wording and the reason for its threshold, in
``docs/verdicts.md`` under its id. The sweep table is :data:`deltalens.study.tables.BATTERY_SWEEP`;
``subspace`` (alignment / safety) and ``scope`` (all / blocks) label variants where present.
"""

from __future__ import annotations

from typing import Any

from deltalens.study.battery.rules_common import (
    Row,
    fmt,
    groups,
    harm_column,
    judge_note,
    not_tested,
    present,
    row,
)
from deltalens.study.tables import BATTERY_SWEEP, SCOPE, SUBSPACE, TASK, columns

_METHOD, _MODE, _FRAC, _ENERGY, _UTILITY = columns(
    BATTERY_SWEEP, "method", "mode", "frac", "energy_kept", "utility"
)
CONTROLS = {"randomk": "RandomK", "random": "Random"}
"""The random controls Top-K is compared with, at the same k."""

ENERGY_BAND = 1.5
"""E_k(useful) ≈ E_k(harmful): the ratio lies within [1/1.5, 1.5]."""

FALL = 0.10
"""Exp 2: a metric "falls" when the projection loses at least this fraction of the fine-tune's gain over W_A."""

SIMILAR = 0.10
"""Exp 2: harm falls "at a similar rate" when the kept harm of Top-K and of a control differ by at most this
fraction of the fine-tune's harm gain."""

MIN_GAIN = 0.05
"""Exp 2 is not tested when the contaminated fine-tune raised utility or harm by less than this fraction of
the metric's scale over W_A (there is nothing to remove)."""


def variant(labels: dict[str, Any], context: dict[str, Any]) -> str:
    """The variant suffix of a claim: empty for the alignment subspace at the primary scope."""
    parts = []
    if labels.get(SUBSPACE, "alignment") != "alignment":
        parts.append(
            f"{labels[SUBSPACE]} subspace (Δ_S)" if labels[SUBSPACE] == "safety" else f"{labels[SUBSPACE]}"
        )
    scope = labels.get(SCOPE)
    if scope is not None and scope != context.get("primary_scope", "all"):
        parts.append({"blocks": "blocks only", "all": "every tensor"}.get(scope, f"scope {scope}"))
    return "; ".join(parts)


def _table(d: Any, task: str, metric: str) -> Any:
    """``metric`` of ``task``'s rows as a frac × method table (mean over duplicates)."""
    t = d[d[TASK] == task]
    return t.pivot_table(index=_FRAC, columns=_METHOD, values=metric, aggfunc="mean")


def _signed(xs: list[float]) -> str:
    return ", ".join("nan" if x != x else f"{x:+.2f}" for x in xs)


# ---------------------------------------------------------------- Exp 1
def _contrast(u: Any, h: Any, control: str) -> tuple[int, int, str]:
    """Fracs where Top-K beats ``control`` on both utility and harm: ``(holds, of, numbers)``."""
    fracs = [f for f in u.index.intersection(h.index) if not (u.loc[f].isna().any() or h.loc[f].isna().any())]
    du = [float(u.loc[f, "topk"] - u.loc[f, control]) for f in fracs]
    dh = [float(h.loc[f, "topk"] - h.loc[f, control]) for f in fracs]
    holds = sum(a > 0 and b > 0 for a, b in zip(du, dh))
    name = CONTROLS[control]
    text = (
        f"vs {name}: {holds} of {len(fracs)} fracs (Top-K − {name} at frac {', '.join(f'{f:g}' for f in fracs)}: "
        f"utility {_signed(du)}; harm {_signed(dh)})"
    )
    return holds, len(fracs), text


def topk_vs_random(d: Any, harm: tuple[str, str, float], var: str = "") -> Row:
    """``exp1.topk-vs-random.v2``: at each frac, Top-K > RandomK and Top-K > Random on both metrics
    (``harm``: :func:`harm_column` of the harmful update's rows)."""
    rule = "exp1.topk-vs-random.v2"
    column, what, _ = harm
    u, h = _table(d, "useful", _UTILITY), _table(d, "harmful", column)
    controls = [c for c in CONTROLS if c in u.columns and c in h.columns]
    if "topk" not in u.columns or "topk" not in h.columns or not controls:
        return not_tested(
            rule, "needs parallel Top-K and RandomK / Random rows of both the useful and harmful update", var
        )
    parts = [_contrast(u[["topk", c]], h[["topk", c]], c) for c in controls]
    holds, of = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return row(
        rule,
        holds,
        of,
        f"holds in {holds} of {of} (frac, control) pairs; " + "; ".join(p[2] for p in parts),
        f"parallel projection W_A + P_k Δ_T at equal k; utility (exact match) of the useful update, harm = "
        f"{what} ({column}) of the harmful update; both must be strictly higher for Top-K",
        var,
    )


def energy_even(d: Any, var: str = "") -> Row:
    """``exp1.energy-even.v2``: at each frac, E_k(useful) / E_k(harmful) within [1/1.5, 1.5] under Top-K."""
    rule = "exp1.energy-even.v2"
    e = _table(d[d[_METHOD] == "topk"], "useful", _ENERGY).join(
        _table(d[d[_METHOD] == "topk"], "harmful", _ENERGY), lsuffix="_u", rsuffix="_h", how="inner"
    )
    if e.empty or "topk_u" not in e.columns:
        return not_tested(rule, "needs parallel Top-K rows of both the useful and harmful update", var)
    ratio = (e["topk_u"] / e["topk_h"]).tolist()
    holds = sum(1 / ENERGY_BAND <= r <= ENERGY_BAND for r in ratio)
    pairs = ", ".join(f"{f:g}: {fmt(a, 3)}/{fmt(b, 3)}" for f, a, b in zip(e.index, e["topk_u"], e["topk_h"]))
    return row(
        rule,
        holds,
        len(ratio),
        f"holds in {holds} of {len(ratio)} fracs; E_k useful/harmful at frac {pairs}",
        f"Top-K, parallel; E_k = Σ‖PΔT‖²/Σ‖ΔT‖² over the projected tensors; ≈ means a ratio within "
        f"[1/{ENERGY_BAND:g}, {ENERGY_BAND:g}]",
        var,
    )


def exp1_verdicts(sweep: Any, context: dict[str, Any]) -> list[Row]:
    """Exp 1 rows, one pair per (subspace, scope) variant of the parallel sweep."""
    if not present(sweep):
        return []
    BATTERY_SWEEP.check(sweep, where="the sweep verdicts")
    par = sweep[sweep[_MODE] == "parallel"]
    if par.empty:
        why = "the sweep has no parallel rows (experiment parallel_sweep)"
        return [not_tested("exp1.topk-vs-random.v2", why), not_tested("exp1.energy-even.v2", why)]
    rows = []
    for labels, d in groups(par, (SUBSPACE, SCOPE)):
        var = variant(labels, context)
        harm = harm_column(d[d[TASK] == "harmful"])
        contrast = topk_vs_random(d, harm, var)
        if contrast["of"]:
            contrast["detail"] += judge_note(context, harm[0])
        rows += [contrast, energy_even(d, var)]
    return rows


# ---------------------------------------------------------------- Exp 2
def references(evals: Any, harm: str, harm_span: float) -> tuple[dict[str, tuple[float, float]], str]:
    """``({metric: (W_A value, contaminated gain over W_A)}, why-not)`` from the evals table; ``harm_span`` is
    the scale of the ``harm`` column (:func:`harm_column`)."""
    if not present(evals) or "stage" not in evals.columns:
        return {}, "needs the evals rows of wa and contaminated (the un-projected references)"
    ev = evals.set_index("stage")
    if not {"wa", "contaminated"} <= set(ev.index) or harm not in ev.columns:
        return {}, f"needs the evals rows of wa and contaminated with utility and {harm}"
    out = {}
    for metric, span in ((_UTILITY, 1.0), (harm, harm_span)):
        base, gain = float(ev.loc["wa", metric]), float(ev.loc["contaminated", metric] - ev.loc["wa", metric])
        if not gain >= MIN_GAIN * span:
            return {}, (
                f"the contaminated fine-tune changed {metric} by {fmt(gain)} over W_A (needs ≥ {MIN_GAIN * span:g}); "
                "there is nothing to remove"
            )
        out[metric] = (base, gain)
    return out, ""


def _kept(d: Any, metric: str, ref: tuple[float, float]) -> Any:
    """Fraction of the fine-tune's gain kept, as a frac × method table."""
    return (_table(d, "contaminated", metric) - ref[0]) / ref[1]


def fall_together(ku: Any, kh: Any, var: str = "") -> Row:
    """``exp2.fall-together.v1``: at every (method, frac) where a metric fell, both fell."""
    both = one = neither = 0
    for m in ku.columns:
        for f in ku.index:
            u, h = ku.loc[f, m], kh.loc[f, m]
            if u != u or h != h:
                continue
            fu, fh = u <= 1 - FALL, h <= 1 - FALL
            both, one, neither = both + (fu and fh), one + (fu != fh), neither + (not fu and not fh)
    tk = (
        "; ".join(f"{f:g}: {fmt(ku.loc[f, 'topk'])}/{fmt(kh.loc[f, 'topk'])}" for f in ku.index)
        if ("topk" in ku.columns)
        else "no Top-K rows"
    )
    return row(
        "exp2.fall-together.v1",
        both,
        both + one,
        f"holds in {both} of {both + one} (method, frac) points where a metric fell ({neither} where neither "
        f"fell); Top-K utility/harm kept at frac {tk}",
        f"W_A + (I − P_k) Δ_T of the contaminated update; kept = (metric − W_A) / (contaminated − W_A); "
        f"a metric falls when kept ≤ {1 - FALL:g}",
        var,
    )


def topk_costs_utility(ku: Any, kh: Any, var: str = "") -> Row:
    """``exp2.topk-costs-utility.v1``: Top-K keeps less utility than a control, harm kept within SIMILAR."""
    rule = "exp2.topk-costs-utility.v1"
    controls = [c for c in CONTROLS if c in ku.columns]
    if "topk" not in ku.columns or not controls:
        return not_tested(rule, "needs orth Top-K and RandomK / Random rows of the contaminated update", var)
    holds = of = 0
    parts = []
    for c in controls:
        h_c = o_c = 0
        for f in ku.index:
            tu, cu, th, ch = ku.loc[f, "topk"], ku.loc[f, c], kh.loc[f, "topk"], kh.loc[f, c]
            if any(x != x for x in (tu, cu, th, ch)) or min(tu, cu) > 1 - FALL:
                continue  # a metric is missing, or neither removal cost utility: nothing to compare
            o_c += 1
            h_c += bool(tu < cu and th <= 1 - FALL and abs(th - ch) <= SIMILAR)
        parts.append(f"vs {CONTROLS[c]}: {h_c} of {o_c} fracs")
        holds, of = holds + h_c, of + o_c
    return row(
        rule,
        holds,
        of,
        f"holds in {holds} of {of} (frac, control) pairs where utility fell; " + "; ".join(parts),
        f"Top-K keeps less of the utility gain than the control, its harm falls (kept ≤ {1 - FALL:g}) and the "
        f"kept harm of the two differs by ≤ {SIMILAR:g} of the harm gain; fracs where neither removal cost "
        "utility are not counted",
        var,
    )


def exp2_verdicts(sweep: Any, evals: Any, context: dict[str, Any]) -> list[Row]:
    """Exp 2 rows, one pair per (subspace, scope) variant of the contaminated update's orth sweep."""
    if not present(sweep):
        return []
    BATTERY_SWEEP.check(sweep, where="the sweep verdicts")
    orth = sweep[(sweep[_MODE] == "orth") & (sweep[TASK] == "contaminated")]
    rules = ("exp2.fall-together.v1", "exp2.topk-costs-utility.v1")
    if orth.empty:
        return [
            not_tested(r, "the sweep has no orth rows of the contaminated update (experiment orth_sweep)")
            for r in rules
        ]
    harm, what, span = harm_column(orth, evals)
    refs, why = references(evals, harm, span)
    if not refs:
        return [not_tested(r, why) for r in rules]
    rows = []
    for labels, d in groups(orth, (SUBSPACE, SCOPE)):
        var = variant(labels, context)
        ku, kh = _kept(d, _UTILITY, refs[_UTILITY]), _kept(d, harm, refs[harm])
        rows += [fall_together(ku, kh, var), topk_costs_utility(ku, kh, var)]
    for r in rows:
        r["detail"] += f"; harm = {what} ({harm}){judge_note(context, harm)}"
    return rows
