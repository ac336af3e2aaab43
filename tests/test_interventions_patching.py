"""Activation patching: exact restoration, no-ops, sweeps within a model and across checkpoints."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import deltalens as dl
from deltalens.interventions import logit_diff, patch, patching_sweep
from deltalens.schemas import PATCHING
from deltalens.testing import param_hash, tiny_model

CLEAN = torch.tensor([[5, 17, 99, 3, 250], [7, 7, 120, 64, 2]])
CORRUPT = torch.tensor([[5, 17, 42, 3, 250], [9, 7, 120, 64, 11]])


@pytest.fixture(scope="module", params=["nnsight", "transformer_lens"])
def models(request):
    hf, tok = tiny_model("llama", seed=0)
    other, _ = tiny_model("llama", seed=1)
    return dl.load(hf, tokenizer=tok, backend=request.param), dl.load(
        other, tokenizer=tok, backend=request.param
    )


def test_own_clean_cache_restores_clean_logits_exactly(models):
    model, _ = models
    before = param_hash(model.hf_model)
    clean = model.logits(CLEAN)
    corrupt = model.logits(CORRUPT)
    cache = model.run_with_cache(CLEAN, names=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"])
    for name in cache:
        with patch(model, cache, name):
            assert torch.equal(model.logits(CORRUPT), clean), name
    with patch(
        model, cache, "blocks.0.hook_resid_pre", positions=[2]
    ):  # the only position that differs in row 0
        part = model.logits(CORRUPT)
    torch.testing.assert_close(part[0], clean[0], atol=0, rtol=0)
    assert not torch.equal(part[1], clean[1])
    assert torch.equal(model.logits(CORRUPT), corrupt)
    assert param_hash(model.hf_model) == before


def test_patching_nothing_changes_nothing(models):
    model, _ = models
    corrupt = model.logits(CORRUPT)
    cache = model.run_with_cache(CLEAN, names="blocks.*.hook_resid_post")
    with patch(model, cache, []):
        assert torch.equal(model.logits(CORRUPT), corrupt)
    own = model.run_with_cache(CORRUPT, names="blocks.*.hook_resid_post")
    with patch(model, own):
        assert torch.equal(model.logits(CORRUPT), corrupt)
    last = model.run_with_cache(CLEAN, names="blocks.1.hook_resid_post", positions="last")
    with patch(model, last):
        patched = model.logits(CORRUPT)
    torch.testing.assert_close(patched[:, -1], model.logits(CLEAN)[:, -1], atol=1e-6, rtol=0)
    torch.testing.assert_close(patched[:, :-1], corrupt[:, :-1], atol=0, rtol=0)


def test_patching_sweep_within_a_model(models):
    model, _ = models
    metric = logit_diff(3, 4)
    table = patching_sweep(
        model, CLEAN, CORRUPT, metric=metric, names="blocks.*.hook_resid_pre", progress=False
    )
    assert len(table) == 2 * CLEAN.shape[1]
    assert list(table.columns) == ["name", "layer", "position", "metric", "effect"]
    assert table.attrs["metric_clean"] == pytest.approx(metric(model.logits(CLEAN)))
    # at the embeddings, positions where clean and corrupted tokens agree carry no information
    layer0 = table[table.layer == 0].set_index("position")["effect"]
    assert layer0[1] == 0.0 and layer0[3] == 0.0
    assert layer0[[0, 2, 4]].abs().min() > 1e-4
    together = patching_sweep(
        model, CLEAN, CORRUPT, metric=metric, names="blocks.0.hook_resid_pre", positions=None, progress=False
    )
    assert together.effect[0] == pytest.approx(1.0, abs=1e-6) and together.position[0] == -1


def test_patching_across_checkpoints(models):
    model, source = models
    metric = logit_diff(3, 4)
    table = patching_sweep(
        model,
        CLEAN,
        source_model=source,
        metric=metric,
        names=["blocks.0.hook_resid_pre", "ln_final.hook_normalized"],
        positions=None,
        progress=False,
    )
    # independent reference: the source's final normalised stream through the target's unembedding
    normed = source.run_with_cache(CLEAN, names="ln_final.hook_normalized")["ln_final.hook_normalized"]
    with torch.no_grad():
        want = metric(model.hf_model.lm_head(normed))
    final = table.set_index("name").loc["ln_final.hook_normalized"]
    assert final.metric == pytest.approx(want, abs=1e-5)
    assert table["layer"].dtype == "Int64" and pd.isna(final.layer) and table["layer"].iloc[0] == 0  # no block
    assert table.attrs["metric_clean"] == pytest.approx(metric(source.logits(CLEAN)), abs=1e-6)
    assert table.attrs["metric_corrupted"] == pytest.approx(metric(model.logits(CLEAN)), abs=1e-6)


def test_bad_patch_input(models):
    model, _ = models
    cache = model.run_with_cache(CLEAN, names="blocks.0.hook_resid_pre")
    with pytest.raises(KeyError, match="unknown hook name"):
        with patch(model, cache, "blocks.1.hook_resid_pre"):
            pass
    with pytest.raises(ValueError, match="same batch size and length"):
        with patch(model, cache, "blocks.0.hook_resid_pre"):
            model.logits(CLEAN[:, :3])
    with pytest.raises(ValueError, match="same batch size and length"):
        patching_sweep(model, CLEAN, CORRUPT[:, :4], metric=logit_diff(3, 4), progress=False)
    assert torch.equal(model.logits(CLEAN), model.logits(CLEAN))


def test_patching_one_attention_head(models):
    """Patching one head's pattern works on both backends (nnsight through the hooked attention)."""
    model, _ = models
    clean = model.run_with_cache(CLEAN, names="blocks.1.attn.hook_pattern")
    corrupt = model.run_with_cache(CORRUPT, names="blocks.1.attn.hook_pattern")["blocks.1.attn.hook_pattern"]
    with patch(model, clean, heads=[2]):
        got = model.run_with_cache(CORRUPT, names="blocks.1.attn.hook_pattern")["blocks.1.attn.hook_pattern"]
    want = corrupt.clone()
    want[:, 2] = clean["blocks.1.attn.hook_pattern"][:, 2]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    table = patching_sweep(
        model,
        CLEAN,
        CORRUPT,
        logit_diff(3, 4),
        names="blocks.*.attn.hook_pattern",
        heads=True,
        positions=None,
        progress=False,
    )
    assert len(table) == 2 * model.n_heads and set(table["head"]) == set(range(model.n_heads))
    assert list(table.columns) == list(PATCHING.names) and table["head"].dtype == "Int64"


def test_paired_batches_left_pad_and_refuse_unequal_shapes(models):
    """Both batches left-padded (position -1 is each row's last real token); unequal shapes are
    refused naming the caller and both shapes; attribution patching uses the same check."""
    from deltalens.circuits import attribution_patching
    from deltalens.circuits.attribution import logit_diff_metric
    from deltalens.interventions.patching import paired_batches

    m, _ = models
    c, t = paired_batches(m, [[5, 6, 7], [8, 9]], [[5, 6, 4], [8, 3]])
    assert c.input_ids.tolist()[1][1:] == [8, 9] and c.attention_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert t.attention_mask.tolist() == c.attention_mask.tolist() and t.input_ids[1, -1] == 3
    same, again = paired_batches(m, [[5, 6, 7]], None)
    assert same is again
    with pytest.raises(ValueError, match=r"tokenize to \(1, 3\) but corrupted to \(1, 2\); edge patching needs"):
        paired_batches(m, [[5, 6, 7]], [[5, 6]], "edge patching")
    with pytest.raises(ValueError, match="attribution patching needs the same batch size and length"):
        attribution_patching(m, [[5, 6, 7]], [[5, 6]], logit_diff_metric(1, 2))
