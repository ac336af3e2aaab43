"""Subspace sweeps: every point equals a standalone projection; weights restored; tidy output."""

from __future__ import annotations

import pytest
import torch

from deltalens.interventions import project, random_k, random_like, subspace_sweep, top_k, weight_delta
from deltalens.schemas import ENERGY_SWEEP, SWEEP
from deltalens.testing import param_hash, tiny_model
from deltalens.testing import perturb as _step


@pytest.fixture(scope="module")
def fam():
    w0 = tiny_model("llama", seed=0)[0]
    wa = _step(tiny_model("llama", seed=0)[0], 1)
    wt = _step(_step(tiny_model("llama", seed=0)[0], 1), 2)
    return wa, weight_delta(w0, wa), weight_delta(wa, wt)


def test_each_point_equals_a_standalone_projection(fam):
    wa, d_align, d_task = fam
    before = param_hash(wa)
    snapshots = []

    def evaluate(model):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return {"probe": float(next(model.parameters()).sum()), "call": len(snapshots)}

    fracs = (0.5, 0.1)
    df = subspace_sweep(wa, d_task, d_align, fracs=fracs, evaluate=evaluate, seed=4, progress=False)
    assert param_hash(wa) == before
    assert len(df) == 2 + 3 * 2 * 2 and len(snapshots) == len(df)
    assert list(df.columns[:9]) == [
        "method",
        "mode",
        "frac",
        "alpha",
        "k_total",
        "energy_kept",
        "energy_kept_no_embed",
        "edit_s",
        "eval_s",
    ]
    assert list(df.columns[:7]) == list(SWEEP.names) and SWEEP.check(df) is df  # the declared schema
    assert df["k_total"].dtype == "int64" and df["frac"].dtype == "float64" and df["frac"].isna().sum() == 2
    assert list(df["frac"].iloc[2:6]) == [0.5, 0.5, 0.1, 0.1]  # the caller's order
    makers = {
        "topk": lambda f: top_k(d_align, f),
        "randomk": lambda f: random_k(d_align, f, seed=4),
        "random": lambda f: random_like(d_align, f, seed=4),
    }
    for row in df.itertuples():
        snap = snapshots[row.call - 1]
        if row.method == "none":
            want = {n: p.detach() for n, p in wa.named_parameters()} if row.mode == "reference" else None
            if want:
                assert all(torch.equal(snap[n], want[n]) for n in want)
            continue
        with project(wa, d_task, makers[row.method](row.frac), row.mode) as h:
            for n, p in wa.named_parameters():
                torch.testing.assert_close(snap[n], p.detach(), atol=1e-6, rtol=0)
        assert row.energy_kept == pytest.approx(h.energy_kept, rel=1e-5)
    par = df[df["mode"] == "parallel"].set_index(["method", "frac"])["energy_kept"]
    orth = df[df["mode"] == "orth"].set_index(["method", "frac"])["energy_kept"]
    assert ((par + orth - 1).abs() < 1e-6).all()
    ks = df[df.method == "topk"].drop_duplicates("frac").sort_values("frac")["k_total"]
    assert (ks.diff().dropna() > 0).all()


def test_restores_on_error_and_energy_only_mode(fam):
    wa, d_align, d_task = fam
    before = param_hash(wa)
    calls = []

    def failing(model):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("evaluation failed")
        return {}

    with pytest.raises(RuntimeError, match="evaluation failed"):
        subspace_sweep(wa, d_task, d_align, fracs=(0.25, 0.5), evaluate=failing, progress=False)
    assert param_hash(wa) == before
    df = subspace_sweep(
        wa,
        d_task,
        d_align,
        fracs=(0.25,),
        methods=("topk",),
        modes=("orth",),
        evaluate=None,
        baselines=False,
        modules="mlp",
        progress=False,
    )
    assert len(df) == 1 and param_hash(wa) == before
    assert df.energy_kept[0] == pytest.approx(
        1 - _energy_parallel(d_task, top_k(d_align, 0.25), "mlp"), abs=1e-6
    )


def _energy_parallel(d_task, basis, modules):
    from deltalens.interventions import energy_kept

    return energy_kept(d_task, basis, "parallel", modules=modules)


def test_bad_sweep_input(fam):
    wa, d_align, d_task = fam
    before = param_hash(wa)
    with pytest.raises(ValueError, match=r"frac must be in \(0, 1\]"):
        subspace_sweep(wa, d_task, d_align, fracs=(0.5, 1.2), evaluate=lambda m: {}, progress=False)
    with pytest.raises(ValueError, match="unknown sweep methods"):
        subspace_sweep(wa, d_task, d_align, fracs=(0.5,), methods=("svd",), progress=False)
    with pytest.raises(ValueError, match="unknown modes"):
        subspace_sweep(wa, d_task, d_align, fracs=(0.5,), modes=("same",), progress=False)
    with pytest.raises(TypeError, match="fracs"):  # no default grid: the paper's fractions live in the study
        subspace_sweep(wa, d_task, d_align, progress=False)
    assert param_hash(wa) == before


def test_energy_sweep_matches_energy_kept(fam):
    from deltalens.interventions import ModuleFilter, energy_kept, energy_sweep

    wa, d_align, d_task = fam
    df = energy_sweep({"t": d_task, "same": d_align}, d_align, fracs=(0.25, 0.75), seed=2)
    assert len(df) == 2 * 3 * 2 * 2
    assert list(df.columns) == list(ENERGY_SWEEP.names) and df["k_total"].dtype == "int64"
    makers = {
        "topk": lambda f: top_k(d_align, f),
        "randomk": lambda f: random_k(d_align, f, seed=2),
        "random": lambda f: random_like(d_align, f, seed=2),
    }
    no_emb = ModuleFilter(embeddings=False, unembedding=False)
    for row in df.itertuples():
        delta = d_task if row.task == "t" else d_align
        modules = None if row.group == "all" else no_emb
        want = energy_kept(delta, makers[row.method](row.frac), "parallel", modules=modules)
        assert row.energy_kept_parallel == pytest.approx(want, rel=1e-6)
    top = df[(df.task == "same") & (df.method == "topk")]
    assert (top.energy_kept_parallel > top.random_expected).all()  # a delta's own top subspace beats chance
    rnd = df[(df.task == "t") & (df.method == "random")]
    assert (abs(rnd.energy_kept_parallel - rnd.random_expected) < 0.1).all()
