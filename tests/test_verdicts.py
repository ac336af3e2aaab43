"""Verdict rules on hand-made tables: each rule where it must pass, where it must fail, mixed
outcomes, missing tables and columns, robustness over seeds, and every emitted rule id defined in
docs/verdicts.md. Counts are recomputed here with numpy; the random-subspace null is checked
against Monte Carlo draws of random subspaces."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deltalens.schemas import EVALS, SchemaError
from deltalens.study.battery.rules_common import RULES, haar_moments, haar_threshold
from deltalens.study.battery.verdict import ROBUSTNESS_RULE, VERDICT_COLUMNS, robustness, verdicts
from deltalens.study.tables import (
    BATTERY_ACTIVATION_OVERLAP,
    BATTERY_PROBES,
    BATTERY_SWEEP,
    BATTERY_WEIGHT_OVERLAP,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "verdicts.md"
FRACS = [0.01, 0.25, 0.5, 0.75, 0.99]
EMITTED: set[str] = set()


def _v(tables, context=None):
    v = verdicts(tables, context)
    EMITTED.update(v["rule"])
    assert list(v.columns) == VERDICT_COLUMNS
    return v


def _one(v, rule, variant=""):
    r = v[(v["rule"] == rule) & (v["claim"] == RULES[rule] + (f" [{variant}]" if variant else ""))]
    assert len(r) == 1, v[["claim", "rule"]]
    return r.iloc[0]


# ------------------------------------------------------------------ Exp 1
def _sweep(points, subspace="alignment", scope="all"):
    """points: (task, mode, method, frac) -> dict of metrics (utility, harm, energy_kept, ...)."""
    labels = dict(subspace=subspace, scope=scope)
    rows = []
    for (task, mode, method, frac), m in points.items():
        e = m.get("energy_kept", 0.5)
        rows.append(dict(task=task, **labels, method=method, mode=mode, frac=frac, alpha=1.0, k_total=4,
                         energy_kept=e, energy_kept_no_embed=e, harm=m.get("harm", np.nan),
                         refusal_harmful=np.nan, utility=m.get("utility", np.nan),
                         **{k: v for k, v in m.items() if k.startswith("harm_")}))  # fmt: skip
    return BATTERY_SWEEP.frame(rows)


def _exp1(util: dict[str, list[float]], harm: dict[str, list[float]], harm_col="harm", **labels):
    pts = {}
    for method in util:
        for i, f in enumerate(FRACS):
            pts[("useful", "parallel", method, f)] = {"utility": util[method][i]}
            pts[("harmful", "parallel", method, f)] = {harm_col: harm[method][i]}
    return _sweep(pts, **labels)


def _old_rule(rows, metric):
    """0.1's Exp 1 rule: the metric at the largest frac exceeds the metric at the smallest."""
    d = rows.sort_values("frac")
    return bool(d[metric].iloc[-1] > d[metric].iloc[0])


def test_exp1_topk_above_both_controls_replicates():
    rng = np.random.default_rng(0)
    base_u, base_h = np.sort(rng.uniform(0.2, 0.6, 5)), np.sort(rng.uniform(0.0, 0.5, 5))
    util = {"topk": base_u + 0.2, "randomk": base_u + 0.1, "random": base_u}
    harm = {"topk": base_h + 0.2, "randomk": base_h + 0.05, "random": base_h}
    r = _one(_v({"sweep": _exp1(util, harm)}), "exp1.topk-vs-random.v2")
    assert (r["outcome"], r["holds"], r["of"], r["replicates"]) == ("replicates", 10, 10, True)
    assert r["numbers"].startswith("holds in 10 of 10 (frac, control) pairs")
    assert "vs RandomK: 5 of 5 fracs" in r["numbers"] and "vs Random: 5 of 5 fracs" in r["numbers"]


def test_exp1_random_passes_the_old_rule_but_not_the_new_one():
    rising = [0.1, 0.2, 0.3, 0.4, 0.5]
    util = {"topk": rising, "randomk": rising, "random": rising}  # Top-K no better than random
    harm = {"topk": rising, "randomk": rising, "random": rising}
    sweep = _exp1(util, harm)
    rand = sweep[sweep["method"] == "random"]
    assert _old_rule(rand[rand["task"] == "useful"], "utility") and _old_rule(
        rand[rand["task"] == "harmful"], "harm"
    )
    r = _one(_v({"sweep": sweep}), "exp1.topk-vs-random.v2")
    assert (r["outcome"], r["holds"], r["of"], r["replicates"]) == ("does not", 0, 10, False)
    # Top-K below Random everywhere fails the same way
    worse = _exp1({**util, "topk": [x - 0.05 for x in rising]}, {**harm, "topk": [x - 0.05 for x in rising]})
    assert _one(_v({"sweep": worse}), "exp1.topk-vs-random.v2")["outcome"] == "does not"


def test_exp1_mixed_counts_the_pairs_where_it_holds():
    rng = np.random.default_rng(1)
    u_ctrl, h_ctrl = rng.uniform(0.2, 0.5, 5), rng.uniform(0.1, 0.4, 5)
    du = np.array([0.1, 0.1, -0.1, 0.1, 0.0])  # utility: Top-K ahead at fracs 0, 1, 3
    dh = np.array([0.1, -0.1, 0.1, 0.1, 0.1])  # harm: Top-K ahead at fracs 0, 2, 3, 4
    util = {"topk": u_ctrl + du, "randomk": u_ctrl, "random": u_ctrl - 1.0}  # Random far below
    harm = {"topk": h_ctrl + dh, "randomk": h_ctrl, "random": h_ctrl - 1.0}
    expect_k = int(np.sum((du > 0) & (dh > 0)))  # independent count: fracs 0 and 3
    r = _one(_v({"sweep": _exp1(util, harm)}), "exp1.topk-vs-random.v2")
    assert (r["outcome"], r["holds"], r["of"]) == ("mixed", expect_k + 5, 10)
    assert f"vs RandomK: {expect_k} of 5 fracs" in r["numbers"]


def test_exp1_on_the_papers_table1_numbers_with_the_llm_harm_score():
    """paper-method.md §3 (Qwen-2.5-1.5B): Top-K vs Random, utility (GSM8K) and mean 1-5 judge score."""
    util = {"topk": [0.50, 0.53, 0.55, 0.57, 0.58], "random": [0.49, 0.50, 0.53, 0.53, 0.56]}
    harm = {"topk": [1.62, 1.80, 1.92, 1.90, 1.97], "random": [1.56, 1.65, 1.74, 1.83, 1.95]}
    sweep = _exp1(util, harm, harm_col="harm_score")
    sweep["harm"] = 0.0  # the refusal judge's number says nothing here; the rubric score is used
    judges = [
        {"column": "harm", "judge": "refusal-phrases"},
        {"column": "harm_score", "judge": "llm-rubric:m@u"},
    ]
    r = _one(_v({"sweep": sweep}, {"judges": judges}), "exp1.topk-vs-random.v2")
    assert (r["outcome"], r["holds"], r["of"]) == ("replicates", 5, 5)
    assert "+0.02" in r["numbers"]  # 1.97 − 1.95 at frac 0.99
    assert r["detail"].endswith("harm_score scored by llm-rubric:m@u")


def test_exp1_energy_even_band_and_variants():
    pts = {}
    ratios = [1.0, 1.4, 1.6, 0.7, 0.5]  # in band: 1.0, 1.4, 0.7
    for f, q in zip(FRACS, ratios):
        for t, e in (("useful", 0.4 * q), ("harmful", 0.4)):
            pts[(t, "parallel", "topk", f)] = {"utility": 0.5, "harm": 0.5, "energy_kept": e}
    sub = []
    for subspace in ("alignment", "safety"):
        for scope in ("all", "blocks"):
            sub.append(_sweep(pts, subspace=subspace, scope=scope))
    v = _v({"sweep": pd.concat(sub, ignore_index=True)}, {"primary_scope": "all"})
    expect = int(sum(1 / 1.5 <= q <= 1.5 for q in ratios))
    for var in ("", "blocks only", "safety subspace (Δ_S)", "safety subspace (Δ_S); blocks only"):
        r = _one(v, "exp1.energy-even.v2", var)
        assert (r["outcome"], r["holds"], r["of"]) == ("mixed", expect, 5)
        # only Top-K rows: the contrast is not tested, and says what it needs
        t = _one(v, "exp1.topk-vs-random.v2", var)
        assert t["outcome"] == "not tested" and "RandomK / Random" in t["detail"]


def test_exp1_reads_only_the_metric_each_update_is_scored_on():
    """The SmolLM2 preset's sweep_metrics "paper": useful rows have no harm, harmful rows no utility."""
    util = {"topk": [0.3, 0.4, 0.5, 0.6, 0.7], "random": [0.2, 0.3, 0.4, 0.5, 0.6]}
    harm = {"topk": [0.3, 0.4, 0.5, 0.6, 0.7], "random": [0.2, 0.3, 0.4, 0.5, 0.6]}
    sweep = _exp1(util, harm)
    assert sweep.loc[sweep["task"] == "useful", "harm"].isna().all()
    r = _one(_v({"sweep": sweep}), "exp1.topk-vs-random.v2")
    assert (r["outcome"], r["of"]) == ("replicates", 5)


# ------------------------------------------------------------------ Exp 2
def _evals(wa=(0.2, 0.0), contaminated=(0.8, 0.9)):
    rows = [dict(stage=s, harm=h, refusal_harmful=1 - h, utility=u) for s, (u, h) in
            (("wa", wa), ("contaminated", contaminated), ("useful", (0.9, 0.0)))]  # fmt: skip
    return EVALS.frame(rows)


def _exp2(kept_u: dict[str, list[float]], kept_h: dict[str, list[float]], wa=(0.2, 0.0), ft=(0.8, 0.9)):
    """Orth rows whose metrics keep the given fractions of the contaminated fine-tune's gain."""
    pts = {}
    for m in kept_u:
        for f, ku, kh in zip(FRACS, kept_u[m], kept_h[m]):
            pts[("contaminated", "orth", m, f)] = {
                "utility": wa[0] + ku * (ft[0] - wa[0]),
                "harm": wa[1] + kh * (ft[1] - wa[1]),
            }
    return _sweep(pts)


def test_exp2_utility_and_harm_fall_together_and_topk_costs_more_utility():
    ku = {"topk": [1.0, 0.7, 0.5, 0.3, 0.1], "random": [1.0, 0.85, 0.7, 0.5, 0.3]}
    kh = {"topk": [1.0, 0.75, 0.55, 0.35, 0.1], "random": [1.0, 0.7, 0.6, 0.4, 0.15]}
    v = _v({"sweep": _exp2(ku, kh), "evals": _evals()})
    ft = _one(v, "exp2.fall-together.v1")
    # independent count: points where both kept ≤ 0.9 / where exactly one is
    both = sum(a <= 0.9 and b <= 0.9 for m in ku for a, b in zip(ku[m], kh[m]))
    one = sum((a <= 0.9) != (b <= 0.9) for m in ku for a, b in zip(ku[m], kh[m]))
    assert (ft["outcome"], ft["holds"], ft["of"]) == ("replicates", both, both + one)
    assert "(2 where neither fell)" in ft["numbers"]
    tc = _one(v, "exp2.topk-costs-utility.v1")
    assert (tc["outcome"], tc["holds"], tc["of"]) == (
        "replicates",
        4,
        4,
    )  # frac 0.01: nothing fell, not counted


def test_exp2_harm_that_never_falls_does_not_replicate():
    """The organism's 0.1 result: harm stays at the fine-tune's level while utility collapses."""
    ku = {"topk": [1.0, 0.5, 0.2, 0.0, 0.0], "random": [1.0, 0.8, 0.5, 0.2, 0.0]}
    kh = {"topk": [1.0] * 5, "random": [1.0] * 5}
    v = _v({"sweep": _exp2(ku, kh), "evals": _evals()})
    ft, tc = _one(v, "exp2.fall-together.v1"), _one(v, "exp2.topk-costs-utility.v1")
    fell = sum(u <= 0.9 for m in ku for u in ku[m])  # utility fell, harm never did
    assert (ft["outcome"], ft["holds"], ft["of"]) == ("does not", 0, fell)
    assert (tc["outcome"], tc["holds"]) == ("does not", 0)  # harm must fall too


def test_exp2_mixed_and_not_tested():
    ku = {"topk": [1.0, 0.5, 0.4, 0.3, 0.2], "random": [1.0, 0.8, 0.8, 0.8, 0.8]}
    kh = {"topk": [1.0, 0.5, 1.0, 0.4, 1.0], "random": [1.0, 0.5, 1.0, 0.4, 1.0]}
    v = _v({"sweep": _exp2(ku, kh), "evals": _evals()})
    ft = _one(v, "exp2.fall-together.v1")
    assert (ft["outcome"], ft["holds"], ft["of"]) == ("mixed", 4, 8)
    # no references: a clear row, not a crash
    v = _v({"sweep": _exp2(ku, kh)})
    assert set(v["outcome"]) == {"not tested"}  # Exp 1 too: the sweep has no parallel rows
    assert "evals rows of wa and contaminated" in _one(v, "exp2.fall-together.v1")["detail"]
    assert "experiment parallel_sweep" in _one(v, "exp1.topk-vs-random.v2")["detail"]
    # a fine-tune that added no harm: nothing to remove
    v = _v({"sweep": _exp2(ku, kh, ft=(0.8, 0.02)), "evals": _evals(contaminated=(0.8, 0.02))})
    assert all(v["outcome"] == "not tested")
    assert "changed harm by 0.02 over W_A" in _one(v, "exp2.topk-costs-utility.v1")["detail"]
    # a sweep without orth rows names the experiment
    par = _exp1({"topk": [0.5] * 5}, {"topk": [0.5] * 5})
    v = _v({"sweep": par, "evals": _evals()})
    assert "experiment orth_sweep" in _one(v, "exp2.fall-together.v1")["detail"]


# ------------------------------------------------------------------ Exp 3
def _weights(
    mso: dict[tuple[str, str], list[float]], etas=(0.1, 0.5, 0.9), baseline=0.05, embeddings="included"
):
    rows = [dict(a=a, b=b, embeddings=embeddings, eta=e, mso=m, baseline=baseline, mso_std=0.0, k_a=3.0, k_b=3.0,
                 n_tensors=4, ratio=m / baseline)
            for (a, b), ms in mso.items() for e, m in zip(etas, ms)]  # fmt: skip
    return BATTERY_WEIGHT_OVERLAP.frame(rows)


def test_exp3_ordering_over_the_eta_sweep():
    good = {("useful", "harmful"): [0.4, 0.5, 0.6], ("alignment", "harmful"): [0.1, 0.2, 0.3],
            ("safety", "harmful"): [0.1, 0.1, 0.1], ("alignment", "safety"): [0.9, 0.9, 0.9]}  # fmt: skip
    r = _one(_v({"weight_overlap": _weights(good)}), "exp3.useful-harmful-highest.v2")
    assert (r["outcome"], r["holds"], r["of"]) == ("replicates", 3, 3)
    assert "a–s 0.900" in r["numbers"]  # all pairs are reported, the ordering is the paper's
    # safety–harmful on top at one η, alignment–harmful at another: mixed 1 of 3
    mixed = {**good, ("safety", "harmful"): [0.1, 0.7, 0.1], ("alignment", "harmful"): [0.1, 0.2, 0.8]}
    r = _one(_v({"weight_overlap": _weights(mixed)}), "exp3.useful-harmful-highest.v2")
    assert (r["outcome"], r["holds"], r["of"]) == ("mixed", 1, 3)
    # ordering right but not above random
    r = _one(_v({"weight_overlap": _weights(good, baseline=0.7)}), "exp3.useful-harmful-highest.v2")
    assert (r["outcome"], r["holds"]) == ("does not", 0)


def test_exp3_variants_and_missing_pairs():
    pairs = {("useful", "harmful"): [0.4, 0.5, 0.6], ("alignment", "harmful"): [0.5, 0.6, 0.7]}
    wo = pd.concat([_weights(pairs), _weights(pairs, embeddings="excluded")], ignore_index=True)
    v = _v({"weight_overlap": wo})
    assert _one(v, "exp3.useful-harmful-highest.v2")["outcome"] == "does not"
    assert _one(v, "exp3.useful-harmful-highest.v2", "embeddings excluded")["of"] == 3
    r = _one(
        _v({"weight_overlap": _weights({("useful", "harmful"): [0.4, 0.5, 0.6]})}),
        "exp3.useful-harmful-highest.v2",
    )
    assert r["outcome"] == "not tested" and "alignment–harmful" in r["detail"]
    with pytest.raises(SchemaError, match=r"missing columns \['embeddings'\]"):
        verdicts({"weight_overlap": wo.drop(columns="embeddings")})


# ------------------------------------------------------------------ Exp 4 and harmful–harmless
def _act(mso: dict[tuple[str, str], float], k=4.0, d=64, layers=(2, 3), models=("w0", "wa"), etas=(0.1, 0.5),
         centered=(False,), prompts="raw"):  # fmt: skip
    rows = []
    for m in models:
        for e in etas:
            for c in centered:
                for (a, b), v in mso.items():
                    common = dict(prompts=prompts, model=m, set_a=a, set_b=b, eta=e, centered=c, n_a=32, n_b=32,
                                  k_a=k, k_b=k, d=d, mso=v, baseline=k / d)  # fmt: skip
                    rows.append({**common, "scope": "slice_mean", "layer": pd.NA})
                    rows += [{**common, "scope": "layer", "layer": lay} for lay in layers]
    return BATTERY_ACTIVATION_OVERLAP.frame(rows)


SETS = {("useful", "harmful_1"): 0.5, ("useful", "harmful_2"): 0.45, ("harmful_1", "harmful_2"): 0.6,
        ("harmful_1", "harmless"): 0.5, ("harmful_2", "harmless"): 0.4, ("useful", "harmless"): 0.4}  # fmt: skip


def test_exp4_comparable_and_above_random():
    ctx = {"h1_source": "organism/harmful-howto", "h2_source": "organism/harassment"}
    v = _v({"activation_overlap": _act(SETS, centered=(False, True))}, ctx)
    for var in ("", "centred"):
        r = _one(v, "exp4.useful-vs-harmful.v2", var)
        assert (r["outcome"], r["holds"], r["of"]) == ("replicates", 4, 4)  # 2 stages × 2 η
        assert "layers 2–3 (2 layers)" in r["detail"] and "H2 = organism/harassment" in r["detail"]
    # 0.45 < 2/3 · 0.7: useful–H2 not comparable to H1–H2
    r = _one(
        _v({"activation_overlap": _act({**SETS, ("harmful_1", "harmful_2"): 0.7})}),
        "exp4.useful-vs-harmful.v2",
    )
    assert r["outcome"] == "does not" and 0.45 < (2 / 3) * 0.7
    # templated prompts are their own variant
    both = pd.concat([_act(SETS), _act({**SETS, ("useful", "harmful_1"): 0.1}, prompts="templated")])
    v = _v({"activation_overlap": both})
    assert _one(v, "exp4.useful-vs-harmful.v2")["outcome"] == "replicates"
    assert _one(v, "exp4.useful-vs-harmful.v2", "templated prompts")["outcome"] == "does not"


def test_exp4_needs_two_layers_and_both_harmful_sets():
    r = _one(_v({"activation_overlap": _act(SETS, layers=(3,))}), "exp4.useful-vs-harmful.v2")
    assert r["outcome"] == "not tested" and "needs ≥ 2" in r["detail"]
    no_h2 = {p: m for p, m in SETS.items() if "harmful_2" not in p}
    r = _one(_v({"activation_overlap": _act(no_h2)}), "exp4.useful-vs-harmful.v2")
    assert r["outcome"] == "not tested" and "harmful_1–harmful_2" in r["detail"]
    with pytest.raises(SchemaError, match="activation-overlap verdicts"):
        verdicts({"activation_overlap": _act(SETS).drop(columns="d")})


def test_harmful_harmless_old_rule_passes_random_at_k1_new_rule_does_not():
    d = 128
    mso = 0.04  # what 0.1's "≥ 5× random" needed at k = 1
    assert mso >= 5 * (1 / d)
    ao = _act({("harmful_1", "harmless"): mso}, k=1.0, d=d, centered=(True,))
    r = _one(_v({"activation_overlap": ao}), "overlap.harmful-harmless.v2", "centred")
    assert (r["outcome"], r["holds"], r["of"]) == ("does not", 0, 4)
    # uncentred k = 1 cells are not counted at all (the top direction is the mean activation)
    ao = _act({("harmful_1", "harmless"): 0.9}, k=1.0, d=d)
    r = _one(_v({"activation_overlap": ao}), "overlap.harmful-harmless.v2")
    assert r["outcome"] == "not tested" and "4 uncentred k = 1 rows" in r["detail"]
    # a clear overlap at k = 4 passes
    r = _one(_v({"activation_overlap": _act(SETS)}), "overlap.harmful-harmless.v2")
    assert (r["outcome"], r["holds"], r["of"]) == ("replicates", 8, 8)


def _random_mso(rng, k_a, k_b, d, n):
    out = np.empty(n)
    for i in range(n):
        qa = np.linalg.qr(rng.standard_normal((d, k_a)))[0]
        qb = np.linalg.qr(rng.standard_normal((d, k_b)))[0]
        out[i] = np.sum((qa.T @ qb) ** 2) / min(k_a, k_b)
    return out


@pytest.mark.parametrize("k_a,k_b,d", [(1, 1, 128), (2, 3, 32), (4, 4, 64)])
def test_random_subspaces_rarely_pass_the_new_threshold(k_a, k_b, d):
    rng = np.random.default_rng(k_a * 100 + d)
    draws = _random_mso(rng, k_a, k_b, d, 4000)
    mean, sd = haar_moments(k_a, k_b, d)
    assert abs(draws.mean() - mean) < 0.05 * mean and abs(draws.std() - sd) < 0.08 * sd
    assert np.mean(draws > haar_threshold(k_a, k_b, d)) <= 0.004  # α = 0.001, 4000 draws
    if (k_a, k_b) == (1, 1):
        assert np.mean(draws >= 5 * max(k_a, k_b) / d) > 0.01  # the old rule: ~2.5 % of random pairs pass


# ------------------------------------------------------------------ probes
def _probes(acc, shuffled, random_acc, n_test=25.0, models=("wa",)):
    rows = [dict(model=m, name=f"blocks.{lay}.hook_resid_post", hook="hook_resid_post", layer=lay, n_train=50.0,
                 n_test=n_test, accuracy=a, roc_auc=a, train_accuracy=1.0, majority_accuracy=0.5,
                 random_accuracy=r, random_roc_auc=r, shuffled_accuracy=s, selectivity=a - s)
            for m in models for lay, (a, s, r) in enumerate(zip(acc, shuffled, random_acc))]  # fmt: skip
    return BATTERY_PROBES.frame(rows)


def test_probe_selectivity_against_its_controls():
    # the 0.1 situation: accuracy 1.00, but a random direction scores 0.99
    r = _one(_v({"probes": _probes([0.8, 1.0], [0.5, 0.5], [0.7, 0.99])}), "probes.selectivity.v1")
    assert (r["outcome"], r["holds"], r["of"]) == ("does not", 0, 1) and "needs ≥ 0.20" in r["numbers"]
    r = _one(
        _v({"probes": _probes([0.95, 0.9], [0.55, 0.5], [0.6, 0.6], models=("w0", "wa"))}),
        "probes.selectivity.v1",
    )
    assert (r["outcome"], r["holds"], r["of"]) == ("replicates", 2, 2)
    assert "margin 0.35" in r["numbers"]  # 0.95 − max(0.55, 0.6)
    old = _probes([0.95], [0.5], [0.6]).drop(columns=["shuffled_accuracy", "selectivity"])
    r = _one(_v({"probes": old}), "probes.selectivity.v1")
    assert r["outcome"] == "not tested" and "control task" in r["detail"]


# ------------------------------------------------------------------ the table, robustness, docs
def test_empty_and_missing():
    v = _v({})
    assert v.empty and list(v.columns) == VERDICT_COLUMNS
    with pytest.raises(SchemaError, match=r"for the sweep verdicts: missing columns \['task'\]"):
        verdicts({"sweep": _exp1({"topk": [0.5] * 5}, {"topk": [0.5] * 5}).drop(columns="task")})


def test_robustness_over_seeds():
    good = {"topk": [0.3, 0.4, 0.5, 0.6, 0.7], "random": [0.2, 0.3, 0.4, 0.5, 0.6]}
    bad = {"topk": [0.2, 0.3, 0.4, 0.5, 0.6], "random": [0.2, 0.3, 0.4, 0.5, 0.6]}
    per_seed = {
        0: _v({"sweep": _exp1(good, good)}),
        1: _v({"sweep": _exp1(good, good)}),
        2: _v({"sweep": _exp1(bad, good)}),
    }
    r = robustness(per_seed)
    EMITTED.update(r["rule"])
    row = _one(r, "exp1.topk-vs-random.v2")
    assert (row["outcome"], row["holds"], row["of"], row["numbers"]) == (
        "mixed",
        2,
        3,
        "holds in 2 of 3 seeds",
    )
    assert "seed 2: does not (0 of 5)" in row["detail"] and ROBUSTNESS_RULE in row["detail"]
    with pytest.raises(ValueError, match="per_seed"):
        robustness({})


def test_every_rule_id_is_defined_in_the_docs():
    text = DOCS.read_text()
    defined = set(re.findall(r"^#+ .*`([a-z0-9.-]+\.v\d+)`", text, flags=re.M))
    assert set(RULES) | {ROBUSTNESS_RULE} <= defined, sorted(set(RULES) - defined)
    ku = {"topk": [1.0, 0.7, 0.5, 0.3, 0.1], "random": [1.0, 0.85, 0.7, 0.5, 0.3]}
    sweep = pd.concat([_exp1(ku, ku), _exp2(ku, ku)], ignore_index=True)
    pairs = {("useful", "harmful"): [0.4, 0.5, 0.6], ("alignment", "harmful"): [0.1, 0.2, 0.3]}
    tables = {"sweep": sweep, "evals": _evals(), "weight_overlap": _weights(pairs),
              "activation_overlap": _act(SETS), "probes": _probes([0.9], [0.5], [0.6])}  # fmt: skip
    v = verdicts(tables)
    emitted = set(v["rule"]) | set(robustness({0: v})["rule"]) | EMITTED
    assert emitted == set(RULES), sorted(set(RULES) ^ emitted)  # every rule runs on a full set of tables
    assert emitted <= defined and (v["outcome"] != "not tested").all(), v[["rule", "outcome", "detail"]]
    for rule in defined:  # each definition states the paper's wording, the rule, its threshold and why
        section = text.split(f"`{rule}`", 1)[1].split("\n#", 1)[0]
        for part in ("Paper", "Rule", "Threshold", "Why"):
            assert f"**{part}" in section, (rule, part)
