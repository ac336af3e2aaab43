"""deltalens.load: checkpoints, in-memory models, LoRA adapters, provenance, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import deltalens as dl
from deltalens.checkpoints import CheckpointError
from deltalens.testing import tiny_checkpoint

PROMPTS = ["import os", "def f(x): return x"]


def _make_adapter(base_dir, out_dir, targets, seed=0):
    """A LoRA adapter with non-zero B (so it changes the output) saved with peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    pm = get_peft_model(base, cfg).eval()
    pm.save_pretrained(out_dir)
    return pm


@pytest.fixture(scope="module")
def llama_adapter(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "llama"
    pm = _make_adapter(tiny_dirs["llama"], out, ["q_proj", "v_proj", "down_proj"])
    return out, pm


@pytest.mark.parametrize("backend,merge", [("transformer_lens", True), ("nnsight", True), ("nnsight", False)])
def test_lora_logits_match_peft(tiny_dirs, llama_adapter, backend, merge):
    adapter, pm = llama_adapter
    m = dl.load(tiny_dirs["llama"], adapter=adapter, backend=backend, merge_adapter=merge)
    batch = m.tokenize(PROMPTS)
    with torch.no_grad():
        ref = pm(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
        base = dl.load(tiny_dirs["llama"], backend=backend).logits(PROMPTS)
    got = m.logits(PROMPTS)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(got[mask], ref[mask], atol=1e-5, rtol=0)
    assert (got[mask] - base[mask]).abs().max() > 1e-3  # the adapter does something
    assert m.provenance.adapter == str(adapter)
    assert m.provenance.adapter_merged is merge
    assert m.has_live_adapter is (not merge)  # a merged adapter leaves plain, editable weights
    # unprocessed, merged weights: q_proj differs from the base by exactly B @ A * scaling
    sd = m.state_dict()
    lora = pm.base_model.model.model.layers[0].self_attn.q_proj
    expect = lora.base_layer.weight + lora.get_delta_weight("default")
    torch.testing.assert_close(sd["model.layers.0.self_attn.q_proj.weight"], expect, atol=1e-6, rtol=0)


def test_gpt2_lora_on_conv1d(tiny_dirs, tmp_path):
    pm = _make_adapter(tiny_dirs["gpt2"], tmp_path / "a", ["c_attn"])
    m = dl.load(tiny_dirs["gpt2"], adapter=tmp_path / "a")
    ids = m.tokenize(["import os"]).input_ids
    with torch.no_grad():
        torch.testing.assert_close(m.logits(ids), pm(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_in_memory_model_and_provenance(tiny_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen2"])
    tok = AutoTokenizer.from_pretrained(tiny_dirs["qwen2"])
    a = dl.load(hf, tokenizer=tok, backend="nnsight")
    b = dl.load(tiny_dirs["qwen2"], backend="nnsight")
    torch.testing.assert_close(a.logits(PROMPTS), b.logits(PROMPTS), atol=1e-6, rtol=0)
    p = b.provenance.to_dict()
    assert p["arch"] == "qwen2" and p["backend"] == "nnsight" and p["dtype"] == "float32"
    assert len(p["content_hash"]) == 16
    assert dl.load(tiny_dirs["qwen2"]).provenance.content_hash == b.provenance.content_hash
    assert "qwen2" in repr(b) and "nnsight" in repr(b)
    with pytest.raises(ValueError, match="tokenizer"):
        dl.load(hf)


def test_bfloat16_load(tiny_dirs):
    m = dl.load(tiny_dirs["llama"], dtype="bfloat16", backend="nnsight")
    assert next(m.hf_model.parameters()).dtype == torch.bfloat16
    c = m.run_with_cache(PROMPTS, positions="last", dtype=torch.float32)
    assert c["blocks.0.hook_resid_post"].dtype == torch.float32
    assert torch.isfinite(c["blocks.1.hook_resid_post"]).all()


# ------------------------------------------------------------------ bad input
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        dl.load(tmp_path / "nope")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="config.json"):
        dl.load(tmp_path)


def test_adapter_passed_as_base(llama_adapter):
    with pytest.raises(CheckpointError, match="adapter="):
        dl.load(llama_adapter[0])


def test_adapter_shape_mismatch(tmp_path, llama_adapter, monkeypatch):
    wide = tiny_checkpoint("llama", tmp_path / "wide", d_model=32)
    with pytest.raises(CheckpointError, match="different base"):
        dl.load(wide, adapter=llama_adapter[0])


def test_adapter_module_mismatch(tiny_dirs, tmp_path):
    _make_adapter(tiny_dirs["gpt2"], tmp_path / "g", ["c_attn"])
    with pytest.raises(CheckpointError, match="does not exist in the base model"):
        dl.load(tiny_dirs["llama"], adapter=tmp_path / "g")


def test_missing_adapter_dir_fails_before_loading(tiny_dirs, tmp_path, monkeypatch):
    import transformers

    calls = []
    orig = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(1) or orig(*a, **k)
    )
    with pytest.raises(FileNotFoundError, match="adapter"):
        dl.load(tiny_dirs["llama"], adapter=tmp_path / "missing")
    assert calls == []  # nothing was loaded


def test_unsupported_architecture_lists_supported(tmp_path, monkeypatch):
    from transformers import OPTConfig, OPTForCausalLM

    OPTForCausalLM(
        OPTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            vocab_size=64,
            word_embed_proj_dim=16,
            max_position_embeddings=32,
        )
    ).save_pretrained(tmp_path)
    import transformers

    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="unsupported architecture 'opt'.*llama"):
        dl.load(tmp_path)
    assert calls == []


def test_unknown_backend_and_dtype(tiny_dirs):
    with pytest.raises(ValueError, match="backend"):
        dl.load(tiny_dirs["llama"], backend="pyvene")
    with pytest.raises(ValueError, match="dtype"):
        dl.load(tiny_dirs["llama"], dtype=torch.nn.Linear)


def test_adapter_config_records_its_base(llama_adapter):
    cfg = json.loads((llama_adapter[0] / "adapter_config.json").read_text())
    assert cfg["r"] == 4


def test_transposed_weights_are_named_as_the_weights_on_both_backends():
    """GPT-2's Conv1D weights: the same checkpoint names on both backends, each a key of named_weights.

    The TransformerLens bridge reaches c_attn / c_proj under renamed paths (attn.qkv, attn.o); a
    set named that way would leave the square c_proj silently unoriented.
    """

    from deltalens.testing import tiny_model

    sets = {}
    for backend in ("nnsight", "transformer_lens"):
        model, tok = tiny_model("gpt2")
        m = dl.load(model, tokenizer=tok, backend=backend)
        named = m.named_weights()
        sets[backend] = m.transposed_weights
        assert sets[backend] and sets[backend] <= set(named)
        conv = {id(mod.weight) for mod in model.modules() if type(mod).__name__ == "Conv1D"}
        assert {n for n, p in named.items() if id(p) in conv} == sets[backend]
        assert all(named[n].shape == torch.Size([64, 64]) for n in sets[backend] if n.endswith("attn.c_proj.weight"))
    assert sets["nnsight"] == sets["transformer_lens"]


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("arch,norm", [("gpt2", "layernorm"), ("llama", "rms"), ("gemma3", "rms_1p")])
def test_model_facts_asked_of_the_hooked_model(tiny_dirs, arch, norm, backend):
    """device, norm_kind, unembedding, has_live_adapter and untie_embedding, checked against the HF module."""
    from transformers import AutoModelForCausalLM

    m = dl.load(tiny_dirs[arch], backend=backend)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch])
    assert m.device == torch.device("cpu") and m.norm_kind == norm and not m.has_live_adapter
    w_u, b_u = m.unembedding()
    assert w_u.shape == (m.vocab_size, m.d_model)
    torch.testing.assert_close(w_u, hf.get_output_embeddings().weight, atol=0, rtol=0)
    assert b_u is None or not b_u.any()  # HF's head has no bias; the bridge's is zeros
    cache = m.run_with_cache(PROMPTS, names=[f"blocks.{m.n_layers - 1}.hook_resid_post"], return_logits=True)
    logits, resid = cache[0], cache[1][f"blocks.{m.n_layers - 1}.hook_resid_post"]
    if arch != "gemma3":  # Gemma 3 soft-caps its logits after the unembedding
        with torch.no_grad():
            torch.testing.assert_close(m.final_norm(resid.clone()) @ w_u.T, logits, atol=1e-4, rtol=1e-4)
    tied = m.tied_embeddings
    assert tied == (hf.get_output_embeddings().weight is hf.get_input_embeddings().weight)
    untied = m.untie_embedding()
    assert len(untied) == (0 if not tied else (1 if backend == "nnsight" else 2))
    if tied:  # own copies, equal values, until retie
        assert not m.tied_embeddings and torch.equal(m.unembedding()[0], w_u)
    untied.retie()
    assert m.tied_embeddings == tied and m.unembedding()[0] is w_u
