"""Steering and ablation through HookedModel.hooks, against plain PyTorch forward hooks."""

from __future__ import annotations

import pytest
import torch

import deltalens as dl
from deltalens.interventions import ablate, add_steering, steer, svd_directions, weight_delta
from deltalens.testing import param_hash, tiny_model


@pytest.fixture(scope="module", params=["nnsight", "transformer_lens"])
def model(request):
    hf, tok = tiny_model("llama", seed=0)
    return dl.load(hf, tokenizer=tok, backend=request.param)


IDS = torch.tensor([[5, 17, 99, 3, 250, 41], [7, 7, 120, 64, 2, 300]])


def _reference_logits(hf, layer: int, edit) -> torch.Tensor:
    """Logits with ``edit`` applied to decoder layer ``layer``'s output by a plain forward hook."""

    def hook(module, args, out):
        if isinstance(out, tuple):
            return (edit(out[0]), *out[1:])
        return edit(out)

    handle = hf.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return hf(input_ids=IDS).logits
    finally:
        handle.remove()


def test_steer_matches_forward_hook(model):
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(model.d_model, generator=g)
    before = param_hash(model.hf_model)
    with steer(model, direction, "blocks.1.hook_resid_post", alpha=2.5):
        got = model.logits(IDS)
    want = _reference_logits(model.hf_model, 1, lambda x: x + 2.5 * direction)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, model.logits(IDS), atol=1e-3)
    with steer(model, direction, "blocks.0.hook_resid_post", alpha=1.0, positions=[-1]):
        last_only = model.logits(IDS)
    torch.testing.assert_close(
        last_only[:, :-1], model.logits(IDS)[:, :-1]
    )  # causal: earlier positions intact
    assert param_hash(model.hf_model) == before


def test_ablate_removes_the_span(model):
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(2, model.d_model, generator=g)
    with ablate(model, dirs, "blocks.*.hook_resid_post"):
        cache = model.run_with_cache(IDS, names="blocks.*.hook_resid_post")
        got = model.logits(IDS)
    q, _ = torch.linalg.qr(dirs.T)
    for act in cache.values():
        assert (act @ q).abs().max() < 1e-5
    plain = model.run_with_cache(IDS, names="blocks.0.hook_resid_post")["blocks.0.hook_resid_post"]
    assert (plain @ q).abs().max() > 1e-2

    def remove(x):
        return x - (x @ q) @ q.T

    hf = model.hf_model
    handles = [
        hf.model.layers[i].register_forward_hook(
            lambda m, a, o: (remove(o[0]), *o[1:]) if isinstance(o, tuple) else remove(o)
        )
        for i in range(2)
    ]
    try:
        with torch.no_grad():
            want = hf(input_ids=IDS).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_hooks_and_weights_restored_on_exception(model):
    before = param_hash(model.hf_model)
    clean = model.logits(IDS)
    with pytest.raises(RuntimeError, match="inside"):
        with steer(model, torch.ones(model.d_model), "blocks.*.hook_resid_pre", alpha=5.0):
            raise RuntimeError("inside")
    with pytest.raises(RuntimeError, match="inside"):
        with ablate(model, torch.ones(model.d_model), "blocks.0.hook_resid_mid"):
            raise RuntimeError("inside")
    torch.testing.assert_close(model.logits(IDS), clean, atol=0, rtol=0)
    assert param_hash(model.hf_model) == before
    h = add_steering(model, torch.ones(model.d_model), "blocks.0.hook_resid_pre")
    assert not torch.equal(model.logits(IDS), clean)
    h.remove()
    assert torch.equal(model.logits(IDS), clean)


def test_directions_from_weight_updates_and_bad_input(model):
    hf = model.hf_model
    other, _ = tiny_model("llama", seed=1)
    d = weight_delta(hf, other)
    dirs = svd_directions(d, "model.layers.0.mlp.down_proj.weight", k=3)
    assert dirs.shape == (3, model.d_model)
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(3), atol=1e-5, rtol=0)
    with ablate(model, dirs, "blocks.0.hook_mlp_out"):
        cache = model.run_with_cache(IDS, names="blocks.0.hook_mlp_out")
    assert (cache["blocks.0.hook_mlp_out"] @ dirs.T).abs().max() < 1e-5
    with pytest.raises(ValueError, match="d_model is 64"):
        with steer(model, torch.ones(10), "blocks.0.hook_resid_post"):
            pass
    with pytest.raises(ValueError, match="attention pattern"):
        with steer(model, torch.ones(64), "blocks.0.attn.hook_pattern"):
            pass
    with pytest.raises(KeyError, match="unknown hook name"):
        with steer(model, torch.ones(64), "blocks.0.hook_resid"):
            pass
    with pytest.raises(ValueError, match="steer adds one direction"):
        with steer(model, torch.ones(2, 64), "blocks.0.hook_resid_post"):
            pass
