"""The shared hook interface against independent references (HF hidden states, raw torch hooks)."""

from __future__ import annotations

import pytest
import torch

import deltalens as dl
from deltalens.hooks.names import parse_layers
from tests.conftest import TINY_ARCHS

PROMPTS = ["def parse(self, args):", "import os", "return the value of x and y to the caller"]
BACKENDS = ("transformer_lens", "nnsight")


def _hf_reference(path, batch):
    """Last-real-token hidden states from a fresh HF model plus raw torch hooks on each block."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    blocks = hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers
    outs: list[torch.Tensor] = []
    handles = [
        b.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
        for b in blocks
    ]
    try:
        with torch.no_grad():
            out = hf(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                output_hidden_states=True,
            )
    finally:
        for h in handles:
            h.remove()
    rows = torch.arange(batch.input_ids.shape[0])
    last = batch.last_index
    return out, [o[rows, last] for o in outs], rows, last


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_resid_post_equals_hf_hidden_states(tiny_dirs, arch, backend, side):
    m = dl.load(tiny_dirs[arch], backend=backend)
    m.tokenizer.padding_side = side
    cache = m.run_with_cache(
        PROMPTS, names=["blocks.*.hook_resid_post", "ln_final.hook_normalized"], positions="last"
    )
    batch = m.tokenize(PROMPTS)
    # the padding really is on the requested side, and "last" follows the mask, not t-1
    assert (batch.attention_mask[:, 0 if side == "left" else -1] == 0).any()
    assert (batch.last_index != batch.input_ids.shape[1] - 1).any() == (side == "right")
    out, block_out, rows, last = _hf_reference(tiny_dirs[arch], batch)
    n = m.n_layers
    for layer in range(n - 1):
        ref = out.hidden_states[layer + 1][rows, last]
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], ref, atol=1e-5, rtol=0)
    # HF's last hidden state has the final norm applied; the last block's raw output is the reference
    for layer in range(n):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_post"], block_out[layer], atol=1e-5, rtol=0
        )
    torch.testing.assert_close(
        cache["ln_final.hook_normalized"], out.hidden_states[-1][rows, last], atol=1e-5, rtol=0
    )
    assert cache.stack("blocks.*.hook_resid_post").shape == (n, len(PROMPTS), m.d_model)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_every_hook_agrees_across_backends(tiny_dirs, arch):
    tl = dl.load(tiny_dirs[arch], backend="transformer_lens")
    ns = dl.load(tiny_dirs[arch], backend="nnsight")
    a = tl.run_with_cache(PROMPTS, names=None)
    b = ns.run_with_cache(PROMPTS, names=None)
    assert set(a) == set(b) == set(tl.hook_names)
    mask = tl.tokenize(PROMPTS).attention_mask.bool()
    for name in tl.hook_names:
        x, y = a[name], b[name]
        assert x.shape == y.shape, name
        if name.endswith("hook_pattern"):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
            real = x.transpose(1, 2)[mask]  # [real query positions, heads, keys]
            torch.testing.assert_close(real.sum(-1), torch.ones_like(real.sum(-1)), atol=1e-5, rtol=0)
        elif name.endswith("hook_attn_scores"):  # masked entries: -inf or the dtype's minimum
            seen = a[name.replace("hook_attn_scores", "hook_pattern")] > 0
            torch.testing.assert_close(x[seen], y[seen], atol=1e-5, rtol=0, msg=name)
        else:
            torch.testing.assert_close(x[mask], y[mask], atol=1e-5, rtol=0, msg=name)


def test_pattern_only_switches_nnsight_to_eager_when_asked(tiny_dirs):
    m = dl.load(tiny_dirs["llama"], backend="nnsight")
    before = m.hf_model.config._attn_implementation
    seen = []
    orig = m._backend.forward

    def spy(*a, **k):
        seen.append(m.hf_model.config._attn_implementation)
        return orig(*a, **k)

    m._backend.forward = spy
    m.run_with_cache("import os", names="blocks.0.hook_resid_post")
    m.run_with_cache("import os", names="blocks.0.attn.hook_pattern")
    assert m.hf_model.config._attn_implementation == before  # restored
    assert before != "eager"


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_edit_and_restore(tiny_dirs, backend):
    m = dl.load(tiny_dirs["llama"], backend=backend)
    clean = m.logits(PROMPTS)
    with m.hooks({"blocks.0.hook_resid_post": lambda x: x * 0}):
        edited = m.logits(PROMPTS)
    assert (edited - clean).abs().max() > 1e-3
    torch.testing.assert_close(m.logits(PROMPTS), clean, atol=0, rtol=0)

    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks({"blocks.*.hook_mlp_out": lambda x: x + 1.0}):
            assert (m.logits(PROMPTS) - clean).abs().max() > 1e-3
            raise RuntimeError("boom")
    torch.testing.assert_close(m.logits(PROMPTS), clean, atol=0, rtol=0)

    handle = m.add_hooks({"hook_embed": lambda x: x * 2})
    assert (m.logits(PROMPTS) - clean).abs().max() > 1e-3
    handle.remove()
    torch.testing.assert_close(m.logits(PROMPTS), clean, atol=0, rtol=0)

    # a cached activation reflects the edit made at the same hook
    with m.hooks({"blocks.1.hook_resid_pre": lambda x: torch.zeros_like(x)}):
        c = m.run_with_cache(PROMPTS, names="blocks.1.hook_resid_pre")
    assert c["blocks.1.hook_resid_pre"].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_with_hooks_matches_plain_generate(tiny_dirs, backend):
    m = dl.load(tiny_dirs["qwen2"], backend=backend)
    with torch.no_grad():  # sharpen the random model so greedy choices are not near-ties
        for p in m.hf_model.parameters():
            p.mul_(3.0)
    plain = m.generate(PROMPTS, max_new_tokens=6)
    with m.hooks({"blocks.0.hook_resid_post": lambda x: None}):  # identity hook -> hooked decoding loop
        looped = m.generate(PROMPTS, max_new_tokens=6)
    assert plain == looped
    assert all(isinstance(s, str) and s for s in plain)
    with m.hooks({"blocks.0.hook_resid_post": lambda x: x * 0}):
        assert m.generate(PROMPTS, max_new_tokens=6) != plain


def test_unknown_hook_name_suggests_close_ones(tiny_dirs):
    m = dl.load(tiny_dirs["gpt2"])
    with pytest.raises(KeyError, match="blocks.0.hook_resid_post"):
        m.run_with_cache("hi", names="blocks.0.hook_resid_pots")
    with pytest.raises(KeyError, match="unknown hook name"):
        m.hooks({"blocks.9.hook_resid_post": lambda x: x}).__enter__()
    with pytest.raises(KeyError):
        m.run_with_cache("hi", names="blocks.*.hook_nothing")


def test_names_filters_positions_and_dtype(tiny_dirs):
    m = dl.load(tiny_dirs["llama"], backend="nnsight")
    c = m.run_with_cache(
        PROMPTS, names=lambda n: n.endswith("hook_mlp_out"), positions=slice(0, 2), dtype=torch.float16
    )
    assert list(c) == [f"blocks.{i}.hook_mlp_out" for i in range(m.n_layers)]
    assert c["blocks.0.hook_mlp_out"].shape == (3, 2, m.d_model)
    assert c["blocks.0.hook_mlp_out"].dtype == torch.float16
    full = m.run_with_cache(PROMPTS, names="blocks.0.hook_mlp_out")
    torch.testing.assert_close(
        c["blocks.0.hook_mlp_out"].float(), full["blocks.0.hook_mlp_out"][:, :2], atol=1e-2, rtol=1e-2
    )
    ids = m.tokenize(PROMPTS)
    by_ids = m.run_with_cache(ids.input_ids, attention_mask=ids.attention_mask, names="blocks.0.hook_mlp_out")
    torch.testing.assert_close(by_ids["blocks.0.hook_mlp_out"], full["blocks.0.hook_mlp_out"])


def test_cache_save_load_roundtrip(tiny_dirs, tmp_path):
    m = dl.load(tiny_dirs["gpt2"])
    c = m.run_with_cache(
        PROMPTS, names=["blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern"], positions="last"
    )
    c.save(tmp_path / "c")
    back = dl.ActivationCache.load(tmp_path / "c")
    assert set(back) == set(c)
    for k in c:
        assert torch.equal(back[k], c[k])
    assert torch.equal(back.attention_mask, c.attention_mask)
    assert back.positions == "last"
    assert back.meta["provenance"]["arch"] == "gpt2"
    assert "ActivationCache" in c._repr_html_()


def test_parse_layers():
    assert parse_layers("65-90%", 30) == list(
        range(19, 26)
    )  # hidden states 20..26 = outputs of blocks 19..25
    assert parse_layers("1:3", 4) == [1, 2]
    assert parse_layers(None, 2) == [0, 1]
    with pytest.raises(ValueError, match="outside"):
        parse_layers([0, 7], 4)
    with pytest.raises(ValueError, match="parse"):
        parse_layers("middle", 4)


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, deltalens; print(sorted(m for m in ('torch','transformers','transformer_lens','nnsight','peft','sklearn') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_transformer_lens_generate_equals_plain_hf_generate_with_kv_cache(arch):
    """Unhooked generate on the TransformerLens backend decodes token for token like HF's own generate."""
    from deltalens.testing import tiny_model

    model, tok = tiny_model(arch)
    m = dl.load(model, tokenizer=tok, backend="transformer_lens")
    ref, _ = tiny_model(arch)
    tok.padding_side = "left"
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = ref.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id, use_cache=True)[:, enc["input_ids"].shape[1]:]
    got = m.generate_ids(enc["input_ids"], enc["attention_mask"], max_new_tokens=12)
    assert torch.equal(got, want)
    weights = m.named_weights()
    saved = {k: v.detach().clone() for k, v in weights.items()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an in-place weight edit reaches the untouched twin and the bridge alike
        for w in weights.values():
            w.add_(0.2 * torch.randn(w.shape, generator=g))
    try:
        assert not torch.equal(m.generate_ids(enc["input_ids"], enc["attention_mask"], max_new_tokens=12), want)
        mask = m.tokenize(PROMPTS).attention_mask.bool()
        plain = m.logits(PROMPTS)
        bridged = m.run_with_cache(PROMPTS, names="hook_embed", return_logits=True)[0]
        torch.testing.assert_close(plain[mask], bridged[mask], atol=1e-4, rtol=1e-4)
    finally:
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(saved[k])


def test_last_index_follows_the_mask_on_either_padding_side():
    """``last_index`` = the position of each row's last 1, checked against a plain loop."""
    from deltalens.hooks.batch import last_index

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (16,), generator=g).tolist()
    left = torch.tensor([[0] * (8 - n) + [1] * n for n in lengths])
    right = torch.tensor([[1] * n + [0] * (8 - n) for n in lengths])
    for mask in (left, right):
        expected = [max(i for i, v in enumerate(row) if v) for row in mask.tolist()]
        assert last_index(mask).tolist() == expected
