"""TransformerLens-documentation-style snippets give the same numbers on both backends.

Head-level activation patching on ``attn.hook_z``, a per-neuron ablation on ``mlp.hook_post``, and
edits inside attention (``hook_pattern``, ``hook_attn_scores``, ``hook_rot_q``) — the TransformerLens
bridge and the nnsight backend compute these with independent code, so agreement is a check of both.
"""

from __future__ import annotations

import pytest
import torch

import deltalens as dl
from deltalens.testing import tiny_model

CLEAN = ["def add(a, b): return a + b", "import os"]
CORRUPT = ["def sub(a, b): return a - b", "import re"]


def _logit_diff(logits: torch.Tensor) -> float:
    return float((logits[:, -1, 5] - logits[:, -1, 9]).mean())


def _head_patching(model) -> torch.Tensor:
    """TransformerLens docs' pattern: patch each head's z from the clean run into the corrupted run."""
    clean = model.tokenize(CLEAN, padding_side="left")
    corrupt = model.tokenize(CORRUPT, padding_side="left")
    assert clean.input_ids.shape == corrupt.input_ids.shape
    cache = model.run_with_cache(clean.input_ids, names="blocks.*.attn.hook_z", attention_mask=clean.attention_mask)
    out = torch.zeros(model.n_layers, model.n_heads)
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            name = f"blocks.{layer}.attn.hook_z"

            def patch(z, layer=layer, head=head, name=name):
                z = z.clone()
                z[:, :, head] = cache[name][:, :, head].to(z)
                return z

            with model.hooks({name: patch}):
                out[layer, head] = _logit_diff(model.logits(corrupt.input_ids, attention_mask=corrupt.attention_mask))
    return out


def _neuron_ablation(model) -> torch.Tensor:
    """Zero each of a few MLP neurons of block 0 (``mlp.hook_post[..., n] = 0``); the logit diff per neuron."""
    vals = []
    for neuron in range(0, 64, 8):

        def ablate(post, neuron=neuron):
            post = post.clone()
            post[..., neuron] = 0.0
            return post

        with model.hooks({"blocks.0.mlp.hook_post": ablate}):
            vals.append(_logit_diff(model.logits(CLEAN)))
    return torch.tensor(vals)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request):
    return tuple(dl.load(*tiny_model(request.param), backend=b) for b in ("transformer_lens", "nnsight"))


def test_head_patching_on_hook_z_agrees_across_backends(pair):
    tl, ns = pair
    a, b = _head_patching(tl), _head_patching(ns)
    assert a.std() > 0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_neuron_ablation_on_mlp_post_agrees_across_backends(pair):
    tl, ns = pair
    a, b = _neuron_ablation(tl), _neuron_ablation(ns)
    assert (a - _logit_diff(tl.logits(CLEAN))).abs().max() > 0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,fn", [
    ("blocks.0.attn.hook_pattern", lambda p: p * torch.linspace(0.5, 1.5, p.shape[-1])),
    ("blocks.1.attn.hook_attn_scores", lambda s: s * 2.0),
])
def test_edits_inside_attention_agree_across_backends(pair, name, fn):
    tl, ns = pair
    plain = tl.logits(CLEAN)
    with tl.hooks({name: fn}):
        a = tl.logits(CLEAN)
    with ns.hooks({name: fn}):
        b = ns.logits(CLEAN)
    mask = tl.tokenize(CLEAN).attention_mask.bool()
    assert (a[mask] - plain[mask]).abs().max() > 1e-4
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5)


def test_rotary_query_edit_agrees_across_backends():
    tl, ns = (dl.load(*tiny_model("llama"), backend=b) for b in ("transformer_lens", "nnsight"))
    fn = lambda q: q * 3.0  # noqa: E731
    with tl.hooks({"blocks.0.attn.hook_rot_q": fn}):
        a = tl.logits(CLEAN)
    with ns.hooks({"blocks.0.attn.hook_rot_q": fn}):
        b = ns.logits(CLEAN)
    mask = tl.tokenize(CLEAN).attention_mask.bool()
    assert (a[mask] - tl.logits(CLEAN)[mask]).abs().max() > 1e-4
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5)
