"""Verdict rules of the overlap experiments: Exp 3 (weight updates), Exp 4 and harmful–harmless
(activations), and the probes' separability (extra to the paper).

Each rule is defined, with the paper's wording and the reason for its threshold, in
``docs/verdicts.md`` under its id. "Above random" for activations means above the (1 − α)
quantile of the MSO of two independent random subspaces of the same k and d
(:func:`~deltalens.study.battery.rules_common.haar_threshold`), not a multiple of its mean.
"""

from __future__ import annotations

import math
from typing import Any

from deltalens.study.battery.rules_common import (
    ALPHA,
    Row,
    fmt,
    groups,
    haar_threshold,
    not_tested,
    present,
    row,
)
from deltalens.study.tables import (
    BATTERY_ACTIVATION_OVERLAP,
    BATTERY_PROBES,
    BATTERY_WEIGHT_OVERLAP,
    EMBEDDINGS,
    MODEL,
    PROMPTS,
    columns,
)

_W_A, _W_B, _W_ETA, _W_MSO, _W_BASE = columns(BATTERY_WEIGHT_OVERLAP, "a", "b", "eta", "mso", "baseline")
_SET_A, _SET_B, _SCOPE, _LAYER, _CENTERED, _MODEL, _ETA, _MSO, _K_A, _K_B, _D = columns(
    BATTERY_ACTIVATION_OVERLAP,
    "set_a",
    "set_b",
    "scope",
    "layer",
    "centered",
    "model",
    "eta",
    "mso",
    "k_a",
    "k_b",
    "d",
)
_ACC, _RANDOM, _N_TEST, _P_LAYER = columns(BATTERY_PROBES, "accuracy", "random_accuracy", "n_test", "layer")
SHUFFLED = "shuffled_accuracy"
"""The probes' control-task accuracy (an optional column of ``BATTERY_PROBES``)."""

COMPARABLE = 2 / 3
"""Exp 4: MSO(useful, H) is "comparable to" MSO(H1, H2) when it is at least this fraction of it (the same
factor-1.5 band as E_k ≈)."""

SHORT = {"alignment": "a", "safety": "s", "useful": "u", "harmful": "h", "contaminated": "c"}


def _pairs(d: Any, a: str, b: str, pair: tuple[str, str]) -> Any:
    """Rows whose columns ``a, b`` hold the unordered ``pair``."""
    x, y = pair
    return d[((d[a] == x) & (d[b] == y)) | ((d[a] == y) & (d[b] == x))]


# ---------------------------------------------------------------- Exp 3
def _pair_at(d: Any, x: str, y: str) -> dict[float, tuple[float, float]]:
    """η -> (MSO, random baseline) of the update pair ``{x, y}``."""
    r = _pairs(d, _W_A, _W_B, (x, y))
    return {float(e): (float(m), float(b)) for e, m, b in zip(r[_W_ETA], r[_W_MSO], r[_W_BASE])}


def _all_pairs_at(d: Any, eta: float) -> str:
    """Every pair's MSO at ``eta``, e.g. ``u–h 0.31, a–h 0.12``."""
    r = d[(d[_W_ETA] == eta) & d[_W_A].isin(list(SHORT)[:4]) & d[_W_B].isin(list(SHORT)[:4])]
    return ", ".join(f"{SHORT[a]}–{SHORT[b]} {fmt(m, 3)}" for a, b, m in zip(r[_W_A], r[_W_B], r[_W_MSO]))


def useful_harmful_highest(d: Any, var: str = "") -> Row:
    """``exp3.useful-harmful-highest.v2``: per η, MSO(u, h) ≥ MSO(a, h), MSO(s, h) and > its random baseline."""
    rule = "exp3.useful-harmful-highest.v2"
    uh, others = (
        _pair_at(d, "useful", "harmful"),
        {n: _pair_at(d, n, "harmful") for n in ("alignment", "safety")},
    )
    others = {n: v for n, v in others.items() if v}
    if not uh or "alignment" not in others:
        return not_tested(
            rule, "needs the useful–harmful and alignment–harmful rows of the weight overlap", var
        )
    etas = sorted(e for e in uh if all(e in v for v in others.values()))
    cells = []
    for e in etas:
        rival = max(v[e][0] for v in others.values())
        cells.append((e, uh[e][0], rival, uh[e][1], uh[e][0] >= rival and uh[e][0] > uh[e][1]))
    holds = sum(c[-1] for c in cells)
    mid = etas[len(etas) // 2] if etas else float("nan")
    per_eta = "; ".join(f"{e:g}: {fmt(m, 3)}/{fmt(r, 3)}/{fmt(b, 3)}" for e, m, r, b, _ in cells)
    return row(
        rule,
        holds,
        len(cells),
        f"holds at {holds} of {len(cells)} η; per η u–h / max({', '.join(o[0] + '–h' for o in others)}) / "
        f"random: {per_eta}; all pairs at η={mid:g}: {_all_pairs_at(d, mid)}",
        "weight MSO per tensor, mean over tensors; random = max(k_a, k_b)/d; a = alignment (W_A − W_0), "
        "s = safety (W_S − W_0), u/h = useful/harmful (W_FT − W_A)",
        var,
    )


def exp3_verdicts(wo: Any, context: dict[str, Any]) -> list[Row]:
    """Exp 3 rows: one per embeddings scope (included = the paper's code, every tensor)."""
    if not present(wo):
        return []
    BATTERY_WEIGHT_OVERLAP.check(wo, where="the weight-overlap verdict")
    rows = []
    for labels, d in groups(wo, (EMBEDDINGS,)):
        emb = labels.get(EMBEDDINGS, "included")
        rows.append(useful_harmful_highest(d, "" if emb == "included" else f"embeddings {emb}"))
    return rows


# ---------------------------------------------------------------- activations: shared
def _above(r: Any) -> bool:
    """An activation-overlap row's MSO lies above what random subspaces of its k and d reach."""
    return float(r[_MSO]) > haar_threshold(float(r[_K_A]), float(r[_K_B]), float(r[_D]))


def _cells(d: Any, pairs: list[tuple[str, str]]) -> dict[tuple[str, float], dict[tuple[str, str], Any]]:
    """Slice-mean rows by (stage, η), then by prompt-set pair (as given in ``pairs``)."""
    out: dict[tuple[str, float], dict[tuple[str, str], Any]] = {}
    s = d[d[_SCOPE] == "slice_mean"]
    for _, r in s.iterrows():
        key = next((p for p in pairs if {r[_SET_A], r[_SET_B]} == set(p)), None)
        if key is not None:
            out.setdefault((str(r[_MODEL]), float(r[_ETA])), {})[key] = r
    return out


def _layers(d: Any) -> list[int]:
    return sorted({int(x) for x in d.loc[d[_SCOPE] == "layer", _LAYER].dropna()})


def _act_variant(labels: dict[str, Any]) -> str:
    parts = []
    if labels.get(PROMPTS, "raw") != "raw":
        parts.append(f"{labels[PROMPTS]} prompts")
    if bool(labels.get(_CENTERED, False)):
        parts.append("centred")
    return "; ".join(parts)


def _sources(context: dict[str, Any]) -> str:
    """What the run recorded about the layer range and the two harmful sets, for Exp 4's detail."""
    layers = context.get("activation_layers")
    out = (
        f"; {layers['note']}"
        if isinstance(layers, dict) and layers.get("widened") and layers.get("note")
        else ""
    )
    h1, h2 = context.get("h1_source"), context.get("h2_source")
    if not h1 or not h2:
        return out
    same = " (the same source: H1–H2 is a split-half reference, stricter than the paper)" if h1 == h2 else ""
    return f"{out}; H1 = {h1}, H2 = {h2}{same}"


# ---------------------------------------------------------------- Exp 4
_EXP4 = [("useful", "harmful_1"), ("useful", "harmful_2"), ("harmful_1", "harmful_2")]


def _exp4_cell(c: dict[tuple[str, str], Any]) -> bool:
    uh = min(float(c[p][_MSO]) for p in _EXP4[:2])
    return uh >= COMPARABLE * float(c[_EXP4[2]][_MSO]) and all(_above(c[p]) for p in _EXP4)


def useful_vs_harmful(d: Any, var: str = "", context: dict[str, Any] | None = None) -> Row:
    """``exp4.useful-vs-harmful.v2``: per (stage, η), min MSO(U, H1/H2) ≥ 2/3 · MSO(H1, H2), all above random."""
    rule = "exp4.useful-vs-harmful.v2"
    layers = _layers(d)
    if len(layers) < 2:
        return not_tested(
            rule, f"the layer range has {len(layers)} layer(s) {layers}; the rule needs ≥ 2", var
        )
    cells = {k: c for k, c in _cells(d, _EXP4).items() if len(c) == 3}
    if not cells:
        return not_tested(
            rule, "needs slice-mean rows of useful–harmful_1, useful–harmful_2 and harmful_1–harmful_2", var
        )
    ok = {k: _exp4_cell(c) for k, c in cells.items()}
    stages = sorted({s for s, _ in ok})
    by_stage = ", ".join(
        f"{s} {sum(v for (t, _), v in ok.items() if t == s)}/{sum(t == s for t, _ in ok)}" for s in stages
    )
    show = next((k for k in sorted(cells) if k[0] == "wa"), sorted(cells)[0])
    c = cells[show]
    values = ", ".join(f"{a}–{b} {fmt(float(c[(a, b)][_MSO]), 3)}" for a, b in _EXP4)
    return row(
        rule,
        sum(ok.values()),
        len(ok),
        f"holds in {sum(ok.values())} of {len(ok)} (stage, η) cells ({by_stage}); at {show[0]}, η={show[1]:g}: "
        f"{values}",
        f"last-token activation MSO, mean over layers {layers[0]}–{layers[-1]} ({len(layers)} layers); comparable = "
        f"at least {COMPARABLE:.2f}× H1–H2; random = the {1 - ALPHA:.1%} quantile of random subspaces' MSO at the "
        f"same k and d{_sources(context or {})}",
        var,
    )


# ---------------------------------------------------------------- harmful vs harmless
_HL = [("harmful_1", "harmless"), ("harmful_2", "harmless")]


def harmful_harmless(d: Any, var: str = "") -> Row:
    """``overlap.harmful-harmless.v2``: harmful–harmless MSO above the random-subspace threshold."""
    rule = "overlap.harmful-harmless.v2"
    holds = of = skipped = 0
    worst = None
    for (stage, eta), c in sorted(_cells(d, _HL).items()):
        for pair, r in c.items():
            if not bool(r[_CENTERED]) and min(float(r[_K_A]), float(r[_K_B])) < 1.5:
                skipped += 1  # uncentred at k = 1: the top direction is the mean activation of any prompt set
                continue
            t = haar_threshold(float(r[_K_A]), float(r[_K_B]), float(r[_D]))
            of, holds = of + 1, holds + (float(r[_MSO]) > t)
            margin = float(r[_MSO]) / t if t > 0 else math.inf
            if worst is None or margin < worst[0]:
                worst = (
                    margin,
                    f"{stage} η={eta:g} {pair[0]}–{pair[1]} MSO {fmt(float(r[_MSO]), 3)} vs {fmt(t, 3)}",
                )
    if not of:
        return not_tested(
            rule, f"needs slice-mean harmful–harmless rows with k ≥ 2 ({skipped} uncentred k = 1 rows)", var
        )
    return row(
        rule,
        holds,
        of,
        f"holds in {holds} of {of} (stage, η, pair) cells ({skipped} uncentred k = 1 cells not counted); "
        f"weakest: {worst[1] if worst else ''}",
        f"random = the {1 - ALPHA:.1%} quantile of the MSO of two random subspaces with the same k and d "
        "(a random pair passes with probability ≤ 0.1% at any k, k = 1 included)",
        var,
    )


def activation_verdicts(ao: Any, context: dict[str, Any]) -> list[Row]:
    """Exp 4 and harmful–harmless rows, one per (prompts, centring) variant; raw uncentred = the paper."""
    if not present(ao):
        return []
    BATTERY_ACTIVATION_OVERLAP.check(ao, where="the activation-overlap verdicts")
    rows = []
    for labels, d in groups(ao, (PROMPTS, _CENTERED)):
        var = _act_variant(labels)
        rows += [useful_vs_harmful(d, var, context), harmful_harmless(d, var)]
    return rows


# ---------------------------------------------------------------- probes
def probe_verdicts(probes: Any, context: dict[str, Any]) -> list[Row]:
    """``probes.selectivity.v1``: per stage, the best layer's accuracy minus its strongest control
    (shuffled-label task, random direction) is at least 1/√n_test."""
    rule = "probes.selectivity.v1"
    if not present(probes):
        return []
    BATTERY_PROBES.check(probes, where="the probe verdict")
    if SHUFFLED not in probes.columns:
        return [
            not_tested(
                rule, f"the probe table has no control task ({SHUFFLED}); no separability claim without one"
            )
        ]
    parts, holds = [], 0
    for stage, d in probes.groupby(MODEL, sort=True):
        margin = d[_ACC] - d[[SHUFFLED, _RANDOM]].max(axis=1)
        best = d.loc[margin.idxmax()]
        need = 1 / math.sqrt(max(float(best[_N_TEST]), 1.0))
        ok = float(margin.max()) >= need
        holds += ok
        parts.append(
            f"{stage}: layer {int(best[_P_LAYER])} accuracy {fmt(best[_ACC])}, shuffled {fmt(best[SHUFFLED])}, "
            f"random direction {fmt(best[_RANDOM])} -> margin {fmt(float(margin.max()))} (needs ≥ {fmt(need)})"
        )
    n = len(parts)
    return [
        row(
            rule,
            holds,
            n,
            f"holds in {holds} of {n} stages; " + "; ".join(parts),
            "logistic probe, group-held-out split; margin = accuracy − max(shuffled-label control, random "
            "direction); needs two standard errors of a chance-level accuracy, 2·0.5/√n_test",
        )
    ]
