"""Collection, activation overlap, checkpoint comparison and the probe CLI on tiny random models."""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
import torch

import deltalens as dl
from deltalens.probes import (
    Collected,
    NonFiniteActivationError,
    ProbeConfig,
    activation_overlap,
    collect,
    compare_checkpoints,
    overlap_from_activations,
)
from deltalens.testing import tiny_checkpoint

WORDS = "alpha beta gamma delta import json return value list dict class print".split()


def _prompts(n: int, seed: int, prefix: str = "") -> list[str]:
    rng = random.Random(seed)
    return [prefix + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe-ckpts")
    return tiny_checkpoint("llama", root / "a", seed=0), tiny_checkpoint("llama", root / "b", seed=1)


@pytest.fixture(scope="module")
def model(ckpts):
    return dl.load(ckpts[0], backend="nnsight")


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_collect_equals_run_with_cache(ckpts, model, backend):
    m = model if backend == "nnsight" else dl.load(ckpts[0], backend=backend)
    prompts = _prompts(11, seed=0)
    names = ["blocks.*.hook_resid_post", "blocks.0.hook_mlp_out"]
    acts = collect(m, prompts, names, batch_size=4, labels=[i % 2 for i in range(11)], progress=False)
    ref = m.run_with_cache(prompts, names=names, positions="last")  # one batch, one padding
    assert acts.names == ["blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for n in acts.names:
        torch.testing.assert_close(acts[n], ref[n], atol=1e-5, rtol=1e-5)
    stacked = acts.stack()
    assert stacked.shape == (11, 2, m.d_model)
    torch.testing.assert_close(
        stacked, ref.stack("blocks.*.hook_resid_post").transpose(0, 1), atol=1e-5, rtol=1e-5
    )
    assert acts.labels == [i % 2 for i in range(11)] and acts.layers() == [0, 1]
    if backend == "nnsight":
        mean = collect(m, prompts[:3], "blocks.1.hook_resid_post", positions="mean", progress=False)
        full = m.run_with_cache(prompts[:3], names="blocks.1.hook_resid_post")
        mask = full.attention_mask[..., None].float()
        expect = (full["blocks.1.hook_resid_post"] * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(mean["blocks.1.hook_resid_post"], expect, atol=1e-5, rtol=1e-5)


def test_streaming_resume_does_not_recompute(model, tmp_path):
    prompts = _prompts(20, seed=1)
    labels, groups = [i % 2 for i in range(20)], [f"g{i // 2}" for i in range(20)]
    calls: list[int] = []
    real = model.run_with_cache

    def counting(inputs, *a, **kw):
        calls.append(len(inputs))
        return real(inputs, *a, **kw)

    class Stop(Exception):
        pass

    def stop_after_two(info):
        if info.index == 1:
            raise Stop

    out = tmp_path / "acts"
    model.run_with_cache = counting
    try:
        with pytest.raises(Stop):
            collect(
                model,
                prompts,
                batch_size=3,
                shard_size=6,
                out=out,
                labels=labels,
                groups=groups,
                progress=False,
                on_shard=stop_after_two,
            )
        assert sum(calls) == 12 and len(calls) == 4  # two shards of 6 prompts in batches of 3
        assert sorted(p.name for p in out.iterdir()) == [
            "index.json",
            "shard-00000.safetensors",
            "shard-00001.safetensors",
        ]
        with pytest.raises(ValueError, match="unfinished"):
            Collected.open(out)
        calls.clear()
        acts = collect(
            model, prompts, batch_size=3, shard_size=6, out=out, labels=labels, groups=groups, progress=False
        )
        assert sum(calls) == 8  # only the two missing shards (6 + 2 prompts)
        calls.clear()
        again = collect(
            model, prompts, batch_size=3, shard_size=6, out=out, labels=labels, groups=groups, progress=False
        )
        assert calls == []
    finally:
        del model.run_with_cache
    # identical to an uninterrupted run with the same batching; equal to in-memory up to padding noise
    ref = collect(model, prompts, batch_size=3, shard_size=6, out=tmp_path / "ref", progress=False)
    assert torch.equal(acts.stack(), ref.stack()) and torch.equal(again.stack(), ref.stack())
    mem = collect(model, prompts, batch_size=3, progress=False)
    torch.testing.assert_close(acts.stack(), mem.stack(), atol=1e-5, rtol=1e-5)
    assert acts.directory == out and acts.labels == labels and acts.groups == groups
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    reopened = Collected.open(out)
    assert torch.equal(reopened["blocks.1.hook_resid_post"], ref["blocks.1.hook_resid_post"])
    assert reopened.stack(layers=[1]).shape == (20, 1, model.d_model)
    with pytest.raises(ValueError, match="prompts_sha256"):
        collect(model, prompts[:-1], batch_size=3, shard_size=6, out=out, progress=False)
    fresh = collect(model, prompts[:-1], batch_size=3, out=out, overwrite=True, progress=False)
    assert len(fresh) == 19
    torch.testing.assert_close(fresh.stack(), mem.stack()[:19], atol=1e-5, rtol=1e-5)


def test_collect_bad_inputs(model):
    prompts = _prompts(6, seed=2)
    with pytest.raises(ValueError, match="one per prompt"):
        collect(model, prompts, labels=[0, 1], progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        collect(model, [], progress=False)
    with pytest.raises(KeyError, match="hook_resid_post"):
        collect(model, prompts, "blocks.0.hook_resid_pots", progress=False)
    with pytest.raises(ValueError, match="attention patterns"):
        collect(model, prompts, "blocks.0.attn.hook_pattern", progress=False)
    acts = collect(model, prompts, progress=False)
    with pytest.raises(ValueError, match="outside"):
        acts.stack(layers=[2])
    shortest = min(range(6), key=lambda i: len(prompts[i]))
    with model.hooks({"blocks.1.hook_resid_post": lambda x: x * float("nan")}):
        with pytest.raises(
            NonFiniteActivationError, match=rf"blocks\.1\.hook_resid_post.*prompt {shortest}\b"
        ):
            collect(model, prompts, batch_size=1, progress=False)


def test_activation_overlap_matches_manual_reference(ckpts, model):
    other = dl.load(ckpts[1], backend="nnsight")
    sets = {"code": _prompts(24, 3, "print "), "words": _prompts(24, 4), "mixed": _prompts(24, 5, "json ")}
    df = activation_overlap({"a": model, "b": other}, sets, layers="0:2", etas=(0.1, 0.5), progress=False)
    per_layer = df[df.scope == "layer"]
    assert len(per_layer) == 2 * 3 * 2 * 2 * 2  # models x pairs x layers x etas x centered
    assert set(zip(df.set_a, df.set_b)) == {("code", "words"), ("code", "mixed"), ("words", "mixed")}
    # independent path: run_with_cache per set, then the pure function
    manual = {
        k: model.run_with_cache(v, names="blocks.*.hook_resid_post", positions="last")
        .stack("blocks.*.hook_resid_post")
        .transpose(0, 1)
        for k, v in sets.items()
    }
    ref = overlap_from_activations(manual, layers=[0, 1], etas=(0.1, 0.5), model="a")
    got = df[df.model == "a"].reset_index(drop=True)
    np.testing.assert_allclose(got["mso"], ref["mso"], atol=1e-4)
    assert (got[["k_a", "k_b"]].values == ref[["k_a", "k_b"]].values).all()
    mean = df[(df.scope == "slice_mean") & (df.model == "b") & (df.eta == 0.5) & ~df.centered]
    layer_rows = per_layer[(per_layer.model == "b") & (per_layer.eta == 0.5) & ~per_layer.centered]
    for row in mean.itertuples():
        sel = layer_rows[(layer_rows.set_a == row.set_a) & (layer_rows.set_b == row.set_b)]
        assert row.mso == pytest.approx(sel["mso"].mean()) and row.baseline == pytest.approx(
            sel["baseline"].mean()
        )
    assert (df["baseline"] == np.maximum(df["k_a"], df["k_b"]) / df["d"]).loc[df.scope == "layer"].all()
    with pytest.raises(ValueError, match="outside"):
        activation_overlap(model, sets, layers=[0, 5], progress=False)
    with pytest.raises(ValueError, match="at least two"):
        activation_overlap(model, {"code": sets["code"]}, progress=False)


def test_compare_checkpoints_same_model_twice_and_cli(model, ckpts, tmp_path):
    texts = _prompts(24, 6, "print ") + _prompts(24, 7)
    labels = ["code"] * 24 + ["words"] * 24
    groups = [f"g{i // 3}" for i in range(48)]
    cmp = compare_checkpoints(
        {"x": model, "y": model},
        texts,
        labels,
        groups,
        config=ProbeConfig(n_random=1),
        etas=(0.5,),
        progress=False,
    )
    assert set(cmp.probe_table["model"]) == {"x", "y"}
    np.testing.assert_allclose(cmp.similarity["probe_cosine"], 1.0, atol=1e-6)
    np.testing.assert_allclose(cmp.similarity["linear_cka"], 1.0, atol=1e-9)
    acc = cmp.probes["x"].summary().set_index("name")["accuracy"]
    for row in cmp.transfer.itertuples():
        assert row.accuracy == pytest.approx(acc[row.name])
    assert set(cmp.overlap["set_a"]) == {"code"} and set(cmp.overlap["set_b"]) == {"words"}

    from deltalens.probes.cli import add_probe_arguments, probe_main

    csv = tmp_path / "p.csv"
    csv.write_text(
        "prompt,kind,topic\n" + "".join(f'"{t}",{lab},{g}\n' for t, lab, g in zip(texts, labels, groups))
    )
    parser = add_probe_arguments(argparse.ArgumentParser())
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "--model",
            str(ckpts[0]),
            "--backend",
            "nnsight",
            "--prompts",
            str(csv),
            "--labels",
            "kind",
            "--text-column",
            "prompt",
            "--groups",
            "topic",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert probe_main(args) == 0
    import pandas as pd

    table = pd.read_parquet(out / "probes.parquet")
    assert set(table["name"]) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 48 and summary["class_counts"] == {"code": 24, "words": 24}
    assert summary["model"]["backend"] == "nnsight"
    from safetensors.torch import load_file

    dirs = load_file(str(out / "directions.safetensors"))
    assert dirs["blocks.1.hook_resid_post"].shape == (model.d_model,)
    bad = parser.parse_args(
        [
            "--model",
            str(ckpts[0]),
            "--prompts",
            str(csv),
            "--labels",
            "knd",
            "--text-column",
            "prompt",
            "--out",
            str(tmp_path / "bad"),
            "--quiet",
        ]
    )
    assert probe_main(bad) == 2
