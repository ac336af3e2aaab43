"""Per-head and per-neuron hooks: cached values and edits equal raw torch hooks on the HF modules.

The reference reads (and edits) the Hugging Face module tensors the TransformerLens names denote:
``attn.hook_q/k/v`` the projections' outputs split into heads (GPT-2: thirds of ``c_attn``; key and
value with the key-value head count under grouped-query attention), ``attn.hook_z`` the output
projection's input split into heads, ``mlp.hook_pre`` / ``hook_pre_linear`` / ``hook_post`` the
gate / up projections' outputs and the down projection's input (GPT-2: ``c_fc`` out, ``c_proj`` in).
"""

from __future__ import annotations

import functools

import pytest
import torch

import deltalens as dl
from deltalens.testing import tiny_model

PROMPTS = ["import os", "def main(): return 1 + 2"]
ARCHS = ("gpt2", "llama", "qwen2", "gemma3")


def _site(arch: str, name: str):
    """(module path, "in" | "out", part) of a hook, written from the HF modeling files."""
    layer = name.split(".")[1] if name.startswith("blocks.") else "0"
    suffix = name.split(".", 2)[-1]
    if arch == "gpt2":
        a, m = f"transformer.h.{layer}.attn", f"transformer.h.{layer}.mlp"
        table = {"attn.hook_q": (f"{a}.c_attn", "out", 0), "attn.hook_k": (f"{a}.c_attn", "out", 1),
                 "attn.hook_v": (f"{a}.c_attn", "out", 2), "attn.hook_z": (f"{a}.c_proj", "in", None),
                 "mlp.hook_pre": (f"{m}.c_fc", "out", None), "mlp.hook_post": (f"{m}.c_proj", "in", None),
                 "hook_pos_embed": ("transformer.wpe", "out", None)}
    else:
        a, m = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
        table = {"attn.hook_q": (f"{a}.q_proj", "out", None), "attn.hook_k": (f"{a}.k_proj", "out", None),
                 "attn.hook_v": (f"{a}.v_proj", "out", None), "attn.hook_z": (f"{a}.o_proj", "in", None),
                 "mlp.hook_pre": (f"{m}.gate_proj", "out", None), "mlp.hook_pre_linear": (f"{m}.up_proj", "out", None),
                 "mlp.hook_post": (f"{m}.down_proj", "in", None)}
    return table[suffix]


def _heads(model, name: str) -> int | None:
    cfg = model.config
    if name.split(".")[-1] not in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return None
    n = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    if name.endswith(("hook_k", "hook_v")):
        return getattr(cfg, "num_key_value_heads", None) or n
    return n


@functools.cache
def _reference_model(arch: str):
    return tiny_model(arch)[0]


def _run_reference(arch: str, name: str, batch, fn=None):
    """(activation at ``name``, logits) of a plain HF model, with ``fn`` applied there if given."""
    model = _reference_model(arch)
    path, io, part = _site(arch, name)
    heads = _heads(model, name)
    width = model.config.hidden_size if arch != "gpt2" else model.config.n_embd
    seen = {}

    def to_hook(t):
        if part is not None:
            t = t[..., part * width : (part + 1) * width]
        return t.reshape(*t.shape[:-1], heads, -1) if heads else t

    def from_hook(t, whole):
        flat = t.reshape(*t.shape[:-2], -1) if heads else t
        if part is None:
            return flat
        return torch.cat([whole[..., : part * width], flat, whole[..., (part + 1) * width :]], -1)

    def visit(t):
        act = to_hook(t)
        if fn is not None:
            act = fn(act)
        seen["act"] = act
        return from_hook(act, t)

    module = model.get_submodule(path)
    if io == "out":
        handle = module.register_forward_hook(lambda mod, args, out: visit(out))
    else:
        handle = module.register_forward_pre_hook(lambda mod, args: (visit(args[0]), *args[1:]))
    try:
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids).logits
    finally:
        handle.remove()
    return seen["act"], logits


@pytest.fixture(scope="module", params=[(a, b) for a in ARCHS for b in ("nnsight", "transformer_lens")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def loaded(request):
    arch, backend = request.param
    model, tok = tiny_model(arch)
    return arch, dl.load(model, tokenizer=tok, backend=backend)


def _names(arch: str) -> list[str]:
    names = ["attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "mlp.hook_pre", "mlp.hook_post"]
    names = [f"blocks.1.{n}" for n in names]
    if arch == "gpt2":
        names.append("hook_pos_embed")
    else:
        names.append("blocks.1.mlp.hook_pre_linear")
    return names


@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_values_equal_the_hf_modules(loaded, side):
    arch, m = loaded
    batch = m.tokenize(PROMPTS, padding_side=side)
    names = _names(arch)
    assert set(names) <= set(m.hook_names)
    cache = m.run_with_cache(batch.input_ids, names=names, attention_mask=batch.attention_mask)
    mask = batch.attention_mask.bool()
    for name in names:
        want, _ = _run_reference(arch, name, batch)
        assert cache[name].shape == want.shape, name
        torch.testing.assert_close(cache[name][mask], want[mask], atol=1e-5, rtol=1e-5, msg=name)


def test_edits_equal_the_same_edit_in_the_hf_modules(loaded):
    arch, m = loaded
    batch = m.tokenize(PROMPTS, padding_side="left")
    mask = batch.attention_mask.bool()

    def fn(x):  # scale one head (or one neuron block) and shift everything
        y = x * 0.5 + 0.25
        if x.ndim == 4:
            y[:, :, 0] = x[:, :, 0] * -2.0
        return y

    plain = m.logits(batch.input_ids, attention_mask=batch.attention_mask)
    for name in _names(arch):
        with m.hooks({name: fn}):
            got = m.logits(batch.input_ids, attention_mask=batch.attention_mask)
        _, want = _run_reference(arch, name, batch, fn)
        assert (want[mask] - plain[mask]).abs().max() > 1e-3, name
        torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5, msg=name)


def test_hook_names_per_architecture():
    gpt2 = dl.load(*tiny_model("gpt2"), backend="nnsight")
    llama = dl.load(*tiny_model("llama"), backend="nnsight")
    assert "hook_pos_embed" in gpt2.hook_names and "hook_pos_embed" not in llama.hook_names
    assert "blocks.0.mlp.hook_pre_linear" in llama.hook_names
    assert "blocks.0.mlp.hook_pre_linear" not in gpt2.hook_names
    with pytest.raises(KeyError, match="blocks.0.mlp.hook_pre"):
        gpt2.run_with_cache("x", names="blocks.0.mlp.hook_pre_linear")


def _raw_internals(arch: str, batch) -> dict[str, torch.Tensor]:
    """Block 1's norm, attention and per-head values computed from raw HF module tensors (perturbed weights)."""
    from deltalens.testing import perturb

    model = perturb(tiny_model(arch)[0], seed=3, scale=0.1)
    gpt2 = arch == "gpt2"
    block = model.transformer.h[1] if gpt2 else model.model.layers[1]
    ln1 = block.ln_1 if gpt2 else block.input_layernorm
    attn = block.attn if gpt2 else block.self_attn
    o_proj = attn.c_proj if gpt2 else attn.o_proj
    seen = {}
    hs = [ln1.register_forward_hook(lambda m, a, o: seen.__setitem__("ln1_in", a[0])),
          o_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("z", a[0]))]
    if not gpt2:
        hs.append(attn.q_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o)))
        hs.append(attn.k_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o)))
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, output_attentions=True)
    finally:
        for h in hs:
            h.remove()
    x = seen["ln1_in"]
    if gpt2:
        x = x - x.mean(-1, keepdim=True)
    eps = getattr(ln1, "variance_epsilon", None) or ln1.eps
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    n = getattr(model.config, "num_attention_heads", None) or model.config.n_head
    z = seen["z"].reshape(*seen["z"].shape[:-1], n, -1)
    w = o_proj.weight.T if gpt2 else o_proj.weight
    ref = {"blocks.1.ln1.hook_scale": scale, "blocks.1.ln1.hook_normalized": x / scale,
           "blocks.1.attn.hook_result": torch.einsum("bphd,mhd->bphm", z, w.reshape(w.shape[0], n, -1)),
           "blocks.1.attn.hook_pattern": out.attentions[1]}
    if not gpt2:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        extra = (model.config.layer_types[1],) if arch == "gemma3" else ()
        cos, sin = model.model.rotary_emb(seen["q"], batch.position_ids, *extra)
        d = attn.head_dim
        q = seen["q"].reshape(*seen["q"].shape[:-1], -1, d).transpose(1, 2)
        k = seen["k"].reshape(*seen["k"].shape[:-1], -1, d).transpose(1, 2)
        if arch == "gemma3":
            q, k = attn.q_norm(q), attn.k_norm(k)
        rq, rk = apply_rotary_pos_emb(q, k, cos, sin)
        ref["blocks.1.attn.hook_rot_q"], ref["blocks.1.attn.hook_rot_k"] = rq.transpose(1, 2), rk.transpose(1, 2)
        groups = rq.shape[1] // rk.shape[1]
        ref["blocks.1.attn.hook_attn_scores"] = rq @ rk.repeat_interleave(groups, 1).transpose(2, 3) * attn.scaling
    return ref


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("arch", ARCHS)
def test_norm_attention_and_result_hooks_equal_raw_values(arch, backend, side):
    from deltalens.testing import perturb

    model, tok = tiny_model(arch)
    m = dl.load(perturb(model, seed=3, scale=0.1), tokenizer=tok, backend=backend)
    batch = m.tokenize(PROMPTS, padding_side=side)
    ref = _raw_internals(arch, batch)
    cache = m.run_with_cache(batch.input_ids, names=list(ref), attention_mask=batch.attention_mask)
    mask = batch.attention_mask.bool()
    # real, causal (query, key) pairs
    seen = (ref["blocks.1.attn.hook_pattern"] > 0) & mask[:, None, :, None] & mask[:, None, None, :]
    for name, want in ref.items():
        got = cache[name]
        assert got.shape == want.shape, name
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            torch.testing.assert_close(got[seen], want[seen], atol=1e-5, rtol=1e-5, msg=name)
        else:
            torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5, msg=name)
