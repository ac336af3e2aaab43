"""An edit at any hook changes everything downstream exactly as the same edit made inside the model.

The reference is independent of deltalens: raw PyTorch hooks on a freshly built Hugging Face model
with the same weights, at the place each TransformerLens hook name denotes. Every architecture,
both backends, a left- and a right-padded batch. Weights are perturbed so that norm gains are not 1
(TransformerLens's ``hook_normalized`` is before the gain: an edit there is scaled by it).
"""

from __future__ import annotations

import functools

import pytest
import torch

import deltalens as dl
from deltalens.testing import perturb, tiny_model

ARCHS = ("gpt2", "llama", "qwen2", "gemma3")
PROMPTS = ["import os", "def main(): return 1 + 2"]


def _paths(arch: str, layer: int) -> dict[str, str]:
    """Module paths in the HF tree (the test's own map, written from the modeling files)."""
    if arch == "gpt2":
        block = f"transformer.h.{layer}"
        return {"block": block, "attn": f"{block}.attn", "mlp": f"{block}.mlp", "embed": "transformer.wte",
                "norm": "transformer.ln_f", "ln1": f"{block}.ln_1", "ln2": f"{block}.ln_2",
                "o": f"{block}.attn.c_proj"}
    block = f"model.layers.{layer}"
    common = {"block": block, "embed": "model.embed_tokens", "norm": "model.norm", "ln1": f"{block}.input_layernorm",
              "o": f"{block}.self_attn.o_proj"}
    if arch == "gemma3":  # Gemma 3 adds the *normalised* sublayer outputs to the residual stream
        return {**common, "attn": f"{block}.post_attention_layernorm", "mlp": f"{block}.post_feedforward_layernorm",
                "ln2": f"{block}.pre_feedforward_layernorm"}
    return {**common, "attn": f"{block}.self_attn", "mlp": f"{block}.mlp", "ln2": f"{block}.post_attention_layernorm"}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


def _model(arch: str):
    model, tok = tiny_model(arch)
    return perturb(model, seed=3, scale=0.1), tok


@functools.cache
def _reference_model(arch: str):
    return _model(arch)[0]


def _norm_kind(arch: str) -> str:
    return {"gpt2": "layernorm", "gemma3": "gemma"}.get(arch, "rms")


def _on_norm(module, fn, part: str, kind: str):
    """Edit a norm's scale or normalised vector (before its gain) and recompute its output."""

    def h(mod, args, out):
        x = args[0]
        if kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        eps = getattr(mod, "variance_epsilon", None) or mod.eps
        scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        if part == "scale":
            scale = fn(scale)
        normed = x / scale
        if part == "normalized":
            normed = fn(normed)
        if kind == "gemma":
            return normed * (1.0 + mod.weight)
        return normed * mod.weight + (mod.bias if kind == "layernorm" else 0.0)

    return module.register_forward_hook(h)


def _on_result(module, fn, n_heads: int):
    """Edit each head's write through the output projection: out = sum_h fn(result)_h + bias."""

    def h(mod, args, out):
        z = args[0].reshape(*args[0].shape[:-1], n_heads, -1)
        w = mod.weight.T if type(mod).__name__ == "Conv1D" else mod.weight  # [d_model, heads * d_head]
        result = torch.einsum("bphd,mhd->bphm", z, w.reshape(w.shape[0], n_heads, -1))
        return fn(result).sum(-2) + (mod.bias if mod.bias is not None else 0.0)

    return module.register_forward_hook(h)


def _on_output(module, fn):
    return module.register_forward_hook(lambda mod, args, out: _replace_first(out, fn(_first(out))))


def _on_block_input(module, fn):
    def pre(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return module.register_forward_pre_hook(pre, with_kwargs=True)


def _resid_mid(model, p, fn):
    """resid_mid = resid_pre + attn_out: the reference edits it through the attention output."""
    state = {}

    def keep(mod, args, kwargs):
        state["pre"] = args[0] if args else kwargs["hidden_states"]

    def edit(mod, args, out):
        return _replace_first(out, fn(state["pre"] + _first(out)) - state["pre"])

    return [
        model.get_submodule(p["block"]).register_forward_pre_hook(keep, with_kwargs=True),
        model.get_submodule(p["attn"]).register_forward_hook(edit),
    ]


_SITES = {  # hook suffix -> (kind, key of _paths)
    "hook_embed": ("output", "embed"),
    "hook_resid_pre": ("input", "block"),
    "hook_resid_post": ("output", "block"),
    "hook_attn_out": ("output", "attn"),
    "hook_mlp_out": ("output", "mlp"),
}


def _reference_logits(arch: str, hook: str, fn, batch) -> torch.Tensor:
    """Logits of a plain HF model (same weights) with ``fn`` applied at ``hook`` through raw torch hooks."""
    model = _reference_model(arch)
    layer = int(hook.split(".")[1]) if hook.startswith("blocks.") else 0
    p = _paths(arch, layer)
    suffix = hook.split(".", 2)[-1] if hook.startswith("blocks.") else hook
    norm = {"ln1": "ln1", "ln2": "ln2", "ln_final": "norm"}.get(suffix.split(".")[0])
    if suffix == "hook_resid_mid":
        handles = _resid_mid(model, p, fn)
    elif norm is not None:
        handles = [_on_norm(model.get_submodule(p[norm]), fn, suffix.split("hook_")[1], _norm_kind(arch))]
    elif suffix == "attn.hook_result":
        heads = getattr(model.config, "num_attention_heads", None) or model.config.n_head
        handles = [_on_result(model.get_submodule(p["o"]), fn, heads)]
    else:
        kind, key = _SITES[suffix]
        register = _on_output if kind == "output" else _on_block_input
        handles = [register(model.get_submodule(p[key]), fn)]
    try:
        with torch.no_grad():
            return model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).logits
    finally:
        for hd in handles:
            hd.remove()


HOOKS = (
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_resid_mid",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "blocks.0.ln1.hook_normalized",
    "blocks.1.ln2.hook_scale",
    "blocks.1.attn.hook_result",
    "ln_final.hook_normalized",
    "ln_final.hook_scale",
)


@pytest.fixture(scope="module", params=[(a, b) for a in ARCHS for b in ("nnsight", "transformer_lens")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def loaded(request):
    arch, backend = request.param
    model, tok = _model(arch)
    return arch, dl.load(model, tokenizer=tok, backend=backend)


CASES = [(h, "left") for h in HOOKS] + [(h, "right") for h in ("blocks.0.hook_resid_mid", "blocks.1.hook_resid_post")]


@pytest.mark.parametrize("hook,side", CASES)
def test_edit_matches_the_same_edit_inside_the_model(loaded, hook, side):
    arch, m = loaded
    batch = m.tokenize(PROMPTS, padding_side=side)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(m.d_model, generator=g)

    def fn(x):
        return x * 1.5 + (v.to(x.dtype) if x.shape[-1] == v.shape[0] else 0.5)

    with m.hooks({hook: fn}):
        got = m.logits(batch.input_ids, attention_mask=batch.attention_mask)
    want = _reference_logits(arch, hook, fn, batch)
    plain = m.logits(batch.input_ids, attention_mask=batch.attention_mask)
    mask = batch.attention_mask.bool()
    assert (want[mask] - plain[mask]).abs().max() > 1e-3  # the edit does something
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_resid_mid_is_what_flows_on(loaded, side):
    """With an edit at resid_mid the cache shows the edited value and resid_post = resid_mid + mlp_out."""
    arch, m = loaded
    batch = m.tokenize(PROMPTS, padding_side=side)
    names = ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    with m.hooks({"blocks.0.hook_resid_mid": lambda x: x + 3.0}):
        cache = m.run_with_cache(batch.input_ids, names=names, attention_mask=batch.attention_mask)
    mask = batch.attention_mask.bool()
    total = cache["blocks.0.hook_resid_mid"] + cache["blocks.0.hook_mlp_out"]
    torch.testing.assert_close(total[mask], cache["blocks.0.hook_resid_post"][mask], atol=1e-5, rtol=1e-5)


ALL_SITE_HOOKS = HOOKS + ("blocks.1.ln1.hook_scale", "blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_post")


@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_values_equal_the_raw_site_values(loaded, side):
    """The value each hook caches is what a raw torch hook sees at that place (norms: before the gain)."""
    arch, m = loaded
    batch = m.tokenize(PROMPTS, padding_side=side)
    cache = m.run_with_cache(batch.input_ids, names=list(ALL_SITE_HOOKS), attention_mask=batch.attention_mask)
    mask = batch.attention_mask.bool()
    for hook in ALL_SITE_HOOKS:
        seen: list[torch.Tensor] = []
        _reference_logits(arch, hook, functools.partial(_keep, seen), batch)
        assert cache[hook].shape == seen[0].shape, hook
        torch.testing.assert_close(cache[hook][mask], seen[0][mask], atol=1e-5, rtol=1e-5, msg=hook)


def _keep(store: list, x: torch.Tensor) -> torch.Tensor:
    store.append(x)
    return x


def _test_attention(edits: dict[str, object]):
    """The test's own eager attention (written from the HF modeling files) with edit points."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        fns = edits.get(getattr(module, "layer_idx", None), {})
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        if "rot_q" in fns:
            query = fns["rot_q"](query.transpose(1, 2)).transpose(1, 2)
        groups = query.shape[1] // key.shape[1]
        k = key.repeat_interleave(groups, dim=1)
        v = value.repeat_interleave(groups, dim=1)
        scores = query @ k.transpose(-1, -2) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        if "scores" in fns:
            scores = fns["scores"](scores)
        pattern = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        if "pattern" in fns:
            pattern = fns["pattern"](pattern)
        return (pattern @ v).transpose(1, 2).contiguous(), pattern

    return attention


@pytest.mark.parametrize("hook,kind", [("attn.hook_pattern", "pattern"), ("attn.hook_attn_scores", "scores"),
                                       ("attn.hook_rot_q", "rot_q")])
def test_attention_internal_edits_equal_the_same_edit_in_eager_attention(loaded, hook, kind):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    arch, m = loaded
    if kind == "rot_q" and arch == "gpt2":
        pytest.skip("GPT-2 has no rotary embeddings")
    batch = m.tokenize(PROMPTS, padding_side="left")

    def fn(x):  # scale everything, and head 0 once more
        y = x * 1.3
        if kind == "rot_q":  # [batch, pos, head, d_head]
            y[:, :, 0] = y[:, :, 0] * 0.5
        else:  # [batch, head, q, k]
            y[:, 0] = y[:, 0] * 0.5
        return y

    with m.hooks({f"blocks.1.{hook}": fn}):
        got = m.logits(batch.input_ids, attention_mask=batch.attention_mask)
    name = "parity_test_attention"
    AttentionInterface.register(name, _test_attention({1: {kind: fn}}))
    AttentionMaskInterface.register(name, eager_mask)
    ref = _reference_model(arch)
    old = ref.config._attn_implementation
    ref.config._attn_implementation = name
    if hasattr(ref.config, "text_config"):
        ref.config.text_config._attn_implementation = name
    try:
        with torch.no_grad():
            want = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
    finally:
        ref.config._attn_implementation = old
    mask = batch.attention_mask.bool()
    assert (want[mask] - m.logits(batch.input_ids, attention_mask=batch.attention_mask)[mask]).abs().max() > 1e-4
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)
