"""LoRA on (tied) embeddings: weight_delta and dl.load against plain peft.

peft saves an embedding LoRA as bare ``lora_embedding_A`` / ``lora_embedding_B`` parameters (no
``.weight``) plus the embedding's own weight. On a model with tied word embeddings a live LoRA
changes only the module it wraps, while merging it into the one shared tensor would change both:
peft's own ``merge_and_unload`` does exactly that. The references here are plain peft: merged
weights on an untied model, the live (unmerged) adapter's logits on a tied one.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import deltalens as dl
from deltalens.checkpoints import CheckpointError
from deltalens.testing import tiny_config, tiny_tokenizer

PROMPTS = ["import os", "def f(x): return x"]
BACKENDS = ("nnsight", "transformer_lens")
EMBED = "model.embed_tokens.weight"


def _make_adapter(base_dir, out_dir, targets, seed=0, scale=1.0, **lora_kw):
    """A LoRA adapter with non-zero factors saved by peft (factors scaled by ``scale``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False, **lora_kw)
    pm = get_peft_model(base, cfg).eval()
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.mul_(scale)
    pm.save_pretrained(out_dir)
    return out_dir


def _peft(base_dir, adapter_dir):
    """Plain peft: the base model from disk with the adapter live."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()


def _logits(model, batch):
    with torch.no_grad():
        return model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits


def _assert_logits_match(m, ref_model, base_logits=None):
    batch = m.tokenize(PROMPTS)
    mask = batch.attention_mask.bool()
    got, ref = m.logits(PROMPTS), _logits(ref_model, batch)
    torch.testing.assert_close(got[mask], ref[mask], atol=1e-5, rtol=0)
    if base_logits is not None:  # the adapter does something
        assert (got[mask] - base_logits[mask]).abs().max() > 1e-2


@pytest.fixture(scope="module")
def embed_adapter(tiny_dirs, tmp_path_factory):
    return _make_adapter(tiny_dirs["llama"], tmp_path_factory.mktemp("emb") / "a", ["embed_tokens", "q_proj"])


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    """A tiny Llama with ``tie_word_embeddings=True`` saved as a checkpoint directory."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config("llama", len(tok))
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.config.architectures = [type(model).__name__]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path = tmp_path_factory.mktemp("tied") / "llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tied_adapters(tied_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tied_lora")
    return {t: _make_adapter(tied_dir, root / t, [t, "q_proj"], seed=1) for t in ("embed_tokens", "lm_head")}


# ------------------------------------------------------------------ untied embedding LoRA
def test_adapter_file_has_bare_embedding_factors(embed_adapter):
    keys = set(load_file(str(embed_adapter / "adapter_model.safetensors")))
    assert "base_model.model.model.embed_tokens.lora_embedding_A" in keys
    assert "base_model.model.model.embed_tokens.base_layer.weight" in keys  # peft's save_embedding_layers


def test_weight_delta_of_embedding_lora_equals_peft_merge(tiny_dirs, embed_adapter):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).state_dict()
    merged = _peft(tiny_dirs["llama"], embed_adapter).merge_and_unload().state_dict()
    d = dl.weight_delta(tiny_dirs["llama"], embed_adapter)
    assert set(d) == set(base)
    assert d.is_factored(EMBED)
    assert {n for n in d if not d.is_zero(n)} == {
        EMBED,
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    }
    for name in d:
        torch.testing.assert_close(d[name], merged[name] - base[name], atol=1e-5, rtol=0, msg=name)
    assert d.sq_norm(EMBED) > 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_embedding_lora_matches_peft(tiny_dirs, embed_adapter, backend):
    m = dl.load(tiny_dirs["llama"], adapter=embed_adapter, backend=backend)
    base_logits = dl.load(tiny_dirs["llama"], backend=backend).logits(PROMPTS)
    _assert_logits_match(m, _peft(tiny_dirs["llama"], embed_adapter), base_logits)
    assert m.provenance.adapter_merged is True


def test_live_embedding_lora_matches_peft(tiny_dirs, embed_adapter):
    """A live (unmerged) embedding adapter on nnsight: the hook interface reads the wrapped embedding."""
    m = dl.load(tiny_dirs["llama"], adapter=embed_adapter, backend="nnsight", merge_adapter=False)
    _assert_logits_match(m, _peft(tiny_dirs["llama"], embed_adapter))
    assert m.run_with_cache(PROMPTS, names="hook_embed")["hook_embed"].shape[-1] == m.d_model


def test_embedding_adapter_missing_a_factor_is_refused(tiny_dirs, embed_adapter, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(embed_adapter, bad)
    state = load_file(str(bad / "adapter_model.safetensors"))
    save_file(
        {k: v for k, v in state.items() if "lora_embedding_B" not in k},
        str(bad / "adapter_model.safetensors"),
    )
    with pytest.raises(CheckpointError, match=r"incomplete.*model\.embed_tokens"):
        dl.load(tiny_dirs["llama"], adapter=bad, backend="nnsight")
    with pytest.raises(ValueError, match=r"'model\.embed_tokens' has only one of its LoRA factors"):
        dl.weight_delta(tiny_dirs["llama"], bad)


# ------------------------------------------------------------------ tied embeddings
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_merge_into_tied_embedding_matches_live_peft(tied_dir, tied_adapters, target, backend):
    live = _peft(tied_dir, tied_adapters[target])
    m = dl.load(tied_dir, adapter=tied_adapters[target], backend=backend)
    base = dl.load(tied_dir, backend="nnsight")
    _assert_logits_match(m, live, base.logits(PROMPTS))
    # untied: the module the adapter did not target keeps the base's tensor
    sd, w0 = m.state_dict(), base.state_dict()[EMBED]
    untouched, changed = ("lm_head.weight", EMBED) if target == "embed_tokens" else (EMBED, "lm_head.weight")
    torch.testing.assert_close(sd[untouched], w0, atol=0, rtol=0)
    assert (sd[changed] - w0).abs().max() > 1e-2


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_peft_merge_of_a_tied_embedding_is_off(tied_dir, tied_adapters, target):
    """The failure mode guarded above: merging into the shared tensor changes both modules."""
    batch = dl.load(tied_dir, backend="nnsight").tokenize(PROMPTS)
    mask = batch.attention_mask.bool()
    live = _logits(_peft(tied_dir, tied_adapters[target]), batch)
    merged = _logits(_peft(tied_dir, tied_adapters[target]).merge_and_unload(), batch)
    assert (live[mask] - merged[mask]).abs().max() > 1.0


def test_live_lora_on_tied_lm_head_matches_peft(tied_dir, tied_adapters):
    m = dl.load(tied_dir, adapter=tied_adapters["lm_head"], backend="nnsight", merge_adapter=False)
    _assert_logits_match(m, _peft(tied_dir, tied_adapters["lm_head"]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_with_peft_weight_tying_matches_live_peft(tied_dir, tmp_path, backend):
    """``ensure_weight_tying=True``: peft puts a tied LoRA on lm_head too; each gets its own delta."""
    a = _make_adapter(tied_dir, tmp_path / "a", ["embed_tokens"], scale=0.2, ensure_weight_tying=True)
    live = _peft(tied_dir, a)
    assert hasattr(live.base_model.model.lm_head, "lora_A")
    _assert_logits_match(dl.load(tied_dir, adapter=a, backend=backend), live)


def test_untied_adapter_on_tied_base_keeps_weights_tied(tied_dir, tmp_path):
    """An adapter that touches no embedding leaves the tie (and the tensor set) alone."""
    a = _make_adapter(tied_dir, tmp_path / "a", ["q_proj"])
    m = dl.load(tied_dir, adapter=a, backend="nnsight")
    inner = m.hf_model
    assert inner.lm_head.weight is inner.model.embed_tokens.weight
    _assert_logits_match(m, _peft(tied_dir, a))


def test_weight_delta_of_tied_embedding_lora(tied_dir, tied_adapters):
    live = _peft(tied_dir, tied_adapters["embed_tokens"])
    want = live.base_model.model.model.embed_tokens.get_delta_weight("default")
    d = dl.weight_delta(tied_dir, tied_adapters["embed_tokens"])
    torch.testing.assert_close(d[EMBED], want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"'lm_head\.weight' is not a tensor of its base model.*tied"):
        dl.weight_delta(tied_dir, tied_adapters["lm_head"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "arch,targets",
    [("gpt2", ["wte", "c_attn"]), ("gemma3", ["embed_tokens", "q_proj"])],
    ids=["gpt2-tied-wte", "gemma3-scaled-embedding"],
)
def test_embedding_lora_other_archs(tiny_dirs, tmp_path, arch, targets, backend):
    a = _make_adapter(tiny_dirs[arch], tmp_path / "a", targets, scale=0.3)
    base_logits = dl.load(tiny_dirs[arch], backend=backend).logits(PROMPTS)
    _assert_logits_match(
        dl.load(tiny_dirs[arch], adapter=a, backend=backend), _peft(tiny_dirs[arch], a), base_logits
    )
