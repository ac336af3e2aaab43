"""Does the paper replicate on this family? One row per claim, with the numbers.

Each claim has its own function, reading one battery table (checked against its schema, see
:mod:`deltalens.study.tables`) and returning its verdict rows (none when the experiment
did not run or lacks the rows it needs).
"""

from __future__ import annotations

from typing import Any

from deltalens.schemas import ACTIVATION_OVERLAP
from deltalens.study.tables import (
    BATTERY_PROBES,
    BATTERY_SWEEP,
    BATTERY_WEIGHT_OVERLAP,
    EMBEDDINGS,
    MODEL,
    TASK,
    columns,
)

VERDICT_COLUMNS = ["claim", "replicates", "numbers", "detail"]
"""Columns of the verdict table."""

_METHOD, _MODE, _FRAC, _ENERGY_KEPT, _HARM, _UTILITY = columns(
    BATTERY_SWEEP, "method", "mode", "frac", "energy_kept", "harm", "utility"
)
_W_A, _W_B, _W_ETA, _W_MSO = columns(BATTERY_WEIGHT_OVERLAP, "a", "b", "eta", "mso")
_SET_A, _SET_B, _SCOPE, _CENTERED, _A_MODEL, _A_ETA, _A_MSO, _A_BASELINE = columns(
    ACTIVATION_OVERLAP, "set_a", "set_b", "scope", "centered", "model", "eta", "mso", "baseline"
)
_LAYER, _ACCURACY, _MAJORITY, _RANDOM = columns(
    BATTERY_PROBES, "layer", "accuracy", "majority_accuracy", "random_accuracy"
)

Row = dict[str, Any]


def _row(claim: str, replicates: bool | None, numbers: str, detail: str = "") -> Row:
    return {"claim": claim, "replicates": replicates, "numbers": numbers, "detail": detail}


def _present(df: Any) -> bool:
    return df is not None and len(df) > 0


# ---------------------------------------------------------------- sweeps (Exp 1)
def _trend(df: Any, metric: str) -> tuple[float, float]:
    """``metric`` at the smallest and at the largest rank fraction."""
    d = df.sort_values(_FRAC)
    return float(d[metric].iloc[0]), float(d[metric].iloc[-1])


def _steering_verdict(u: Any, h: Any) -> Row:
    """Utility of the useful and harm of the harmful update both rise with the Top-K fraction."""
    u0, u1 = _trend(u, _UTILITY)
    h0, h1 = _trend(h, _HARM)
    return _row(
        "Top-K projection onto the alignment subspace raises utility and harm together",
        bool(u1 > u0 and h1 > h0),
        f"utility(useful) {u0:.2f} -> {u1:.2f}; harm(harmful) {h0:.2f} -> {h1:.2f} "
        f"as frac {u[_FRAC].min():g} -> {u[_FRAC].max():g}",
        "parallel projection, Top-K, W_A + L Lᵀ Δ_T",
    )


def _energy_verdict(u: Any, h: Any) -> Row:
    """The useful and harmful updates keep about as much energy in the alignment subspace."""
    eu, eh = float(u[_ENERGY_KEPT].mean()), float(h[_ENERGY_KEPT].mean())
    ratio = eu / eh if eh > 0 else float("inf")
    return _row(
        "E_k(useful) ≈ E_k(harmful)",
        bool(0.67 <= ratio <= 1.5),
        f"mean E_k over fracs: useful {eu:.3f}, harmful {eh:.3f} (ratio {ratio:.2f}; ≈ means within 1.5×)",
        "Top-K, parallel; E_k over the projected tensors (see project_embeddings)",
    )


def sweep_verdicts(sweep: Any) -> list[Row]:
    """Exp 1 verdicts from the parallel Top-K sweeps of the useful and harmful updates."""
    if not _present(sweep):
        return []
    BATTERY_SWEEP.check(sweep, where="the sweep verdicts")
    top = sweep[(sweep[_METHOD] == "topk") & (sweep[_MODE] == "parallel")]
    u = top[top[TASK] == "useful"]
    h = top[top[TASK] == "harmful"]
    if len(u) < 2 or len(h) < 2:
        return []
    return [_steering_verdict(u, h), _energy_verdict(u, h)]


# ---------------------------------------------------------------- weight overlap (Exp 3)
def _pair_mso(d: Any, a: str, b: str) -> float:
    """MSO of the update pair ``{a, b}`` in either order (NaN when absent)."""
    r = d[((d[_W_A] == a) & (d[_W_B] == b)) | ((d[_W_A] == b) & (d[_W_B] == a))]
    return float(r[_W_MSO].iloc[0]) if len(r) else float("nan")


def weight_overlap_verdicts(wo: Any) -> list[Row]:
    """Exp 3: the useful update overlaps the harmful one at least as much as alignment does."""
    if not _present(wo):
        return []
    BATTERY_WEIGHT_OVERLAP.check(wo, where="the weight-overlap verdict")
    d = wo[wo[EMBEDDINGS] == "excluded"] if "excluded" in set(wo[EMBEDDINGS]) else wo
    eta = max(d[_W_ETA])
    d = d[d[_W_ETA] == eta]
    uh, ah = _pair_mso(d, "useful", "harmful"), _pair_mso(d, "alignment", "harmful")
    return [
        _row(
            "MSO(useful, harmful) ≥ MSO(alignment, harmful)",
            bool(uh >= ah),
            f"weight MSO at η={eta:g}: useful–harmful {uh:.3f}, alignment–harmful {ah:.3f}",
            "per 2-D tensor, mean over tensors, embeddings excluded",
        )
    ]


# ---------------------------------------------------------------- activation overlap (Exp 4)
def _activation_slice(ao: Any) -> tuple[Any, str, float]:
    """Uncentred last-token rows at the largest η of W_A (else the first model): ``(rows, model, eta)``."""
    d = ao[(ao[_SCOPE] == "slice_mean") & (~ao[_CENTERED].astype(bool))]
    eta = max(d[_A_ETA])
    d = d[d[_A_ETA] == eta]
    model = "wa" if "wa" in set(d[_A_MODEL]) else d[_A_MODEL].iloc[0]
    return d[d[_A_MODEL] == model], model, eta


def _pair_row(d: Any, a: str, b: str) -> Any:
    """The row of the prompt-set pair ``{a, b}`` in either order, or None."""
    r = d[((d[_SET_A] == a) & (d[_SET_B] == b)) | ((d[_SET_A] == b) & (d[_SET_B] == a))]
    return r.iloc[0] if len(r) else None


def _comparable_verdict(d: Any, model: str, eta: float, uh: Any, hh: Any) -> Row:
    """Useful–harmful overlap at least half the harmful–harmful one, every pair above random."""
    above = bool(d[_A_MSO].min() > d[_A_BASELINE].max())
    comparable = float(uh[_A_MSO]) >= 0.5 * float(hh[_A_MSO])
    return _row(
        "Activation MSO(useful, harmful) comparable to MSO(harmful_1, harmful_2), all above random",
        bool(comparable and above),
        f"{model}, η={eta:g}, last token, 65–90% layers: useful–harmful {float(uh[_A_MSO]):.3f}, "
        f"harmful_1–harmful_2 {float(hh[_A_MSO]):.3f}, random ≤ {float(d[_A_BASELINE].max()):.3f}",
        "comparable means at least half; uncentred as in the paper",
    )


def _far_above_verdict(model: str, eta: float, hl: Any) -> Row:
    """Harmful–harmless overlap at least 5× its random baseline."""
    mso, baseline = float(hl[_A_MSO]), float(hl[_A_BASELINE])
    return _row(
        "Harmful and harmless prompts activate overlapping representations (MSO far above random)",
        bool(mso >= 5 * baseline),
        f"{model}, η={eta:g}: harmful–harmless MSO {mso:.3f} vs random "
        f"{baseline:.3f} ({mso / max(baseline, 1e-12):.0f}×)",
        "far above means at least 5× the random baseline",
    )


def activation_overlap_verdicts(ao: Any) -> list[Row]:
    """Exp 4 verdicts from the activation overlap of the prompt sets."""
    if not _present(ao):
        return []
    ACTIVATION_OVERLAP.check(ao, where="the activation-overlap verdicts")
    d, model, eta = _activation_slice(ao)
    rows = []
    uh, hh = _pair_row(d, "useful", "harmful_1"), _pair_row(d, "harmful_1", "harmful_2")
    if uh is not None and hh is not None:
        rows.append(_comparable_verdict(d, model, eta, uh, hh))
    hl = _pair_row(d, "harmful_1", "harmless")
    if hl is not None:
        rows.append(_far_above_verdict(model, eta, hl))
    return rows


# ---------------------------------------------------------------- probes (extra to the paper)
def probe_verdicts(probes: Any) -> list[Row]:
    """Harmful and harmless prompts are linearly separable (best W_A probe ≥ 90 % accuracy)."""
    if not _present(probes):
        return []
    BATTERY_PROBES.check(probes, where="the probe verdict")
    d = probes[probes[MODEL] == "wa"] if "wa" in set(probes[MODEL]) else probes
    best = d.sort_values(_ACCURACY).iloc[-1]
    return [
        _row(
            "Harmful and harmless prompts are linearly separable in the residual stream",
            bool(best[_ACCURACY] >= 0.9),
            f"best layer {int(best[_LAYER])}: accuracy {best[_ACCURACY]:.2f} "
            f"(majority {best[_MAJORITY]:.2f}, random direction {best[_RANDOM]:.2f})",
            "logistic probe, group-held-out split (extra to the paper)",
        )
    ]


def verdicts(tables: dict[str, Any]) -> Any:
    """The verdict table for the paper's claims, from the battery's tables.

    Args:
        tables: table name -> DataFrame; reads ``sweep``, ``weight_overlap``,
            ``activation_overlap`` and ``probes`` where present (see :mod:`deltalens.study.tables`).

    Returns:
        DataFrame with columns ``claim, replicates, numbers, detail``, one row per claim whose
        experiment ran (``replicates`` is a bool).

    Raises:
        SchemaError: a present table lacks a column its schema requires.
    """
    import pandas as pd

    rows = [
        *sweep_verdicts(tables.get("sweep")),
        *weight_overlap_verdicts(tables.get("weight_overlap")),
        *activation_overlap_verdicts(tables.get("activation_overlap")),
        *probe_verdicts(tables.get("probes")),
    ]
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)
