"""Unhooked generation on both backends is Hugging Face's greedy ``generate`` with its KV cache, batched."""

from __future__ import annotations

import pytest
import torch

import deltalens as dl

PROMPTS = ["def parse(self, args):", "import os", "return the value of x and y to the caller", "x"]
NEW = 10


def _reference(arch: str, tok, prompts: list[str]):
    """An independent copy of the model and HF's own batched greedy decoding with the KV cache."""
    from deltalens.testing import tiny_model

    ref, _ = tiny_model(arch)
    tok.padding_side = "left"
    enc = tok(prompts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = ref.generate(
            **enc, max_new_tokens=NEW, do_sample=False, use_cache=True,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
    return enc, out[:, enc["input_ids"].shape[1] :]


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_batched_generate_equals_hf_greedy_generate_with_kv_cache(arch, backend):
    from deltalens.testing import tiny_model

    model, tok = tiny_model(arch)
    m = dl.load(model, tokenizer=tok, backend=backend)
    enc, want = _reference(arch, tok, PROMPTS)
    assert (enc["attention_mask"] == 0).any()  # the batch really is left-padded
    lengths: list[int] = []
    hook = m._backend.plain.register_forward_pre_hook(
        lambda mod, args, kw: lengths.append((kw.get("input_ids") if "input_ids" in kw else args[0]).shape[1]),
        with_kwargs=True,
    )
    try:
        got = m.generate_ids(enc["input_ids"], enc["attention_mask"], max_new_tokens=NEW)
    finally:
        hook.remove()
    assert torch.equal(got, want)
    # one pass over the prompt, then one token per step: the KV cache was used
    assert lengths[0] == enc["input_ids"].shape[1] and set(lengths[1:]) == {1}
    assert len(lengths) == want.shape[1]
    texts = m.generate(PROMPTS, max_new_tokens=NEW)
    assert texts == tok.batch_decode(want, skip_special_tokens=True)


def test_transformer_lens_generate_sees_weight_edits_like_the_bridge():
    """The decoding twin shares the bridge's weight tensors: an edit reaches both, and undoing it restores HF's tokens."""
    from deltalens.testing import tiny_model

    model, tok = tiny_model("qwen2")
    m = dl.load(model, tokenizer=tok, backend="transformer_lens")
    enc, want = _reference("qwen2", tok, PROMPTS)
    w = m.named_weights()["model.layers.0.mlp.down_proj.weight"]
    saved = w.detach().clone()
    with torch.no_grad():
        w.mul_(-3.0)
    try:
        edited = m.generate_ids(enc["input_ids"], enc["attention_mask"], max_new_tokens=NEW)
        assert not torch.equal(edited, want)
        with torch.inference_mode():  # the twin computes what the bridge computes, edit included
            twin = m._backend.plain(**enc).logits
        bridged = m.logits(enc["input_ids"], attention_mask=enc["attention_mask"])
        mask = enc["attention_mask"].bool()
        torch.testing.assert_close(twin[mask], bridged[mask], atol=1e-4, rtol=1e-4)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert torch.equal(m.generate_ids(enc["input_ids"], enc["attention_mask"], max_new_tokens=NEW), want)
