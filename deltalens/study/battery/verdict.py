"""Does the paper replicate on this family? One row per claim, with the numbers."""

from __future__ import annotations

from typing import Any


def _row(claim: str, replicates: bool | None, numbers: str, detail: str = "") -> dict[str, Any]:
    return {"claim": claim, "replicates": replicates, "numbers": numbers, "detail": detail}


def _trend(df: Any, metric: str) -> tuple[float, float]:
    d = df.sort_values("frac")
    return float(d[metric].iloc[0]), float(d[metric].iloc[-1])


def verdicts(tables: dict[str, Any]) -> Any:
    """The verdict table for the paper's claims, from the battery's tables.

    Columns: ``claim, replicates (bool or None when the experiment did not run), numbers, detail``.
    """
    import pandas as pd

    rows = []
    sweep = tables.get("sweep")
    if sweep is not None and len(sweep):
        top = sweep[(sweep["method"] == "topk") & (sweep["mode"] == "parallel")]
        u = top[top["task"] == "useful"]
        h = top[top["task"] == "harmful"]
        if len(u) >= 2 and len(h) >= 2:
            u0, u1 = _trend(u, "utility")
            h0, h1 = _trend(h, "harm")
            rows.append(
                _row(
                    "Top-K projection onto the alignment subspace raises utility and harm together",
                    bool(u1 > u0 and h1 > h0),
                    f"utility(useful) {u0:.2f} -> {u1:.2f}; harm(harmful) {h0:.2f} -> {h1:.2f} "
                    f"as frac {u['frac'].min():g} -> {u['frac'].max():g}",
                    "parallel projection, Top-K, W_A + L Lᵀ Δ_T",
                )
            )
            col = "energy_kept"
            eu, eh = float(u[col].mean()), float(h[col].mean())
            ratio = eu / eh if eh > 0 else float("inf")
            rows.append(
                _row(
                    "E_k(useful) ≈ E_k(harmful)",
                    bool(0.67 <= ratio <= 1.5),
                    f"mean E_k over fracs: useful {eu:.3f}, harmful {eh:.3f} (ratio {ratio:.2f}; ≈ means within 1.5×)",
                    "Top-K, parallel; E_k over the projected tensors (see project_embeddings)",
                )
            )
    wo = tables.get("weight_overlap")
    if wo is not None and len(wo):
        d = wo[wo["embeddings"] == "excluded"] if "excluded" in set(wo["embeddings"]) else wo
        eta = max(d["eta"])
        d = d[d["eta"] == eta]

        def mso(a: str, b: str) -> float:
            r = d[((d["a"] == a) & (d["b"] == b)) | ((d["a"] == b) & (d["b"] == a))]
            return float(r["mso"].iloc[0]) if len(r) else float("nan")

        uh, ah = mso("useful", "harmful"), mso("alignment", "harmful")
        rows.append(
            _row(
                "MSO(useful, harmful) ≥ MSO(alignment, harmful)",
                bool(uh >= ah),
                f"weight MSO at η={eta:g}: useful–harmful {uh:.3f}, alignment–harmful {ah:.3f}",
                "per 2-D tensor, mean over tensors, embeddings excluded",
            )
        )
    ao = tables.get("activation_overlap")
    if ao is not None and len(ao):
        d = ao[(ao["scope"] == "slice_mean") & (~ao["centered"].astype(bool))]
        eta = max(d["eta"])
        d = d[d["eta"] == eta]
        model = "wa" if "wa" in set(d["model"]) else d["model"].iloc[0]
        d = d[d["model"] == model]

        def pick(a: str, b: str) -> Any:
            r = d[((d["set_a"] == a) & (d["set_b"] == b)) | ((d["set_a"] == b) & (d["set_b"] == a))]
            return r.iloc[0] if len(r) else None

        uh, hh = pick("useful", "harmful_1"), pick("harmful_1", "harmful_2")
        if uh is not None and hh is not None:
            above = bool(d["mso"].min() > d["baseline"].max())
            comparable = float(uh["mso"]) >= 0.5 * float(hh["mso"])
            rows.append(
                _row(
                    "Activation MSO(useful, harmful) comparable to MSO(harmful_1, harmful_2), all above random",
                    bool(comparable and above),
                    f"{model}, η={eta:g}, last token, 65–90% layers: useful–harmful {float(uh['mso']):.3f}, "
                    f"harmful_1–harmful_2 {float(hh['mso']):.3f}, random ≤ {float(d['baseline'].max()):.3f}",
                    "comparable means at least half; uncentred as in the paper",
                )
            )
        hl = pick("harmful_1", "harmless")
        if hl is not None:
            rows.append(
                _row(
                    "Harmful and harmless prompts activate overlapping representations (MSO far above random)",
                    bool(float(hl["mso"]) >= 5 * float(hl["baseline"])),
                    f"{model}, η={eta:g}: harmful–harmless MSO {float(hl['mso']):.3f} vs random "
                    f"{float(hl['baseline']):.3f} ({float(hl['mso']) / max(float(hl['baseline']), 1e-12):.0f}×)",
                    "far above means at least 5× the random baseline",
                )
            )
    probes = tables.get("probes")
    if probes is not None and len(probes):
        d = probes[probes["model"] == "wa"] if "wa" in set(probes["model"]) else probes
        best = d.sort_values("accuracy").iloc[-1]
        rows.append(
            _row(
                "Harmful and harmless prompts are linearly separable in the residual stream",
                bool(best["accuracy"] >= 0.9),
                f"best layer {int(best['layer'])}: accuracy {best['accuracy']:.2f} "
                f"(majority {best['majority_accuracy']:.2f}, random direction {best['random_accuracy']:.2f})",
                "logistic probe, group-held-out split (extra to the paper)",
            )
        )
    return pd.DataFrame(rows, columns=["claim", "replicates", "numbers", "detail"])
