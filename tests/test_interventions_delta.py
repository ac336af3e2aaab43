"""Weight deltas: values against numpy, checkpoints and adapters, architecture checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltalens.interventions import weight_delta
from deltalens.testing import tiny_model


def _perturbed(seed: int, scale: float = 0.01, arch: str = "llama", **kw):
    model, tok = tiny_model(arch, seed=0, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model, tok


@pytest.fixture(scope="module")
def pair():
    a, tok = _perturbed(1)
    b, _ = _perturbed(2)
    return a, b, tok


def test_dense_delta_matches_numpy(pair):
    a, b, _ = pair
    d = weight_delta(a.state_dict(), b.state_dict())
    sa, sb = a.state_dict(), b.state_dict()
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"]:
        ref = sb[name].double().numpy() - sa[name].double().numpy()
        assert d[name].dtype == torch.float32
        np.testing.assert_allclose(d[name].numpy(), ref, atol=1e-7)
        assert d.norms()[name] == pytest.approx(np.linalg.norm(ref), rel=1e-5)
    total = sum(np.sum((sb[n].double().numpy() - sa[n].double().numpy()) ** 2) for n in sa)
    assert d.global_norm() == pytest.approx(np.sqrt(total), rel=1e-5)
    assert set(d.names("2d")) | set(d.names("1d")) == set(d)
    assert "lm_head.weight" not in d.names(include_embeddings=False)
    assert "model.embed_tokens.weight" not in d.names("2d", include_embeddings=False)
    assert "b=" in repr(d) and "global_norm" in repr(d)


def test_checkpoint_paths_and_models_agree(pair, tmp_path):
    a, b, tok = pair
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    from_paths = weight_delta(tmp_path / "a", str(tmp_path / "b"))
    from_models = weight_delta(a, b)
    assert set(from_paths) == set(from_models)
    for n in from_models:
        assert torch.equal(from_paths[n], from_models[n])
    assert from_paths.reference.fingerprint_a == from_models.reference.fingerprint_a
    assert from_paths.reference.fingerprint_b != from_paths.reference.fingerprint_a


def test_tied_embeddings_counted_once(tmp_path):
    from transformers import AutoModelForCausalLM

    from deltalens.testing import tiny_config, tiny_tokenizer

    cfg = tiny_config("llama", len(tiny_tokenizer()))
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    a = AutoModelForCausalLM.from_config(cfg)
    torch.manual_seed(1)
    b = AutoModelForCausalLM.from_config(cfg)
    a.save_pretrained(tmp_path / "a")
    d = weight_delta(tmp_path / "a", b.state_dict())  # saved file has no lm_head; the state dict aliases it
    assert "lm_head.weight" not in d and "model.embed_tokens.weight" in d


def test_architecture_mismatch_is_named(pair):
    a, _, _ = pair
    wide, _ = tiny_model("llama", seed=0, d_model=32)
    with pytest.raises(ValueError, match=r"different architectures.*first shape mismatch: 'model\.") as e:
        weight_delta(a, wide)
    assert "(64, 64)" in str(e.value) or "(512, 64)" in str(e.value)
    gpt, _ = tiny_model("gpt2", seed=0)
    with pytest.raises(ValueError, match="missing from b"):
        weight_delta(a, gpt)
    with pytest.raises(TypeError, match="expected a HookedModel"):
        weight_delta(a, 3)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        weight_delta(a, "/nonexistent/ckpt")


def test_gpt2_conv1d_is_oriented_out_in():
    a, _ = _perturbed(1, arch="gpt2")
    b, _ = _perturbed(2, arch="gpt2")
    d = weight_delta(a, b)
    name = "transformer.h.0.attn.c_attn.weight"
    assert name in d.transposed and "transformer.wte.weight" not in d.transposed
    assert d.shapes[name] == (64, 192) and d.oriented_shape(name) == (192, 64)
    assert torch.equal(d.oriented(name), d[name].T)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, pair):
    from peft import LoraConfig, get_peft_model

    base, _, _ = pair
    model, _ = _perturbed(1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], modules_to_save=["lm_head"])
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(path)
    merged = peft_model.merge_and_unload()
    return path, base, merged


def test_lora_adapter_stays_factored_and_matches_merge(adapter):
    path, base, merged = adapter
    d = weight_delta(base, path)
    dense = weight_delta(base, merged)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert d.is_factored(q) and d.factors(q)[0].shape == (64, 4) and d.factors(q)[1].shape == (4, 64)
    assert d.is_zero("model.layers.0.mlp.up_proj.weight")
    assert not d.is_factored("lm_head.weight") and float(d["lm_head.weight"].abs().sum()) > 0
    for n in dense:
        torch.testing.assert_close(d[n], dense[n], atol=1e-6, rtol=0)
        assert d.norms()[n] == pytest.approx(dense.norms()[n], rel=1e-5, abs=1e-9)
    for n, v in dense.reference.samples_b.items():  # the adapter's endpoint, sampled without merging
        torch.testing.assert_close(d.reference.samples_b[n], v, atol=1e-6, rtol=0)
    neg = weight_delta(path, base)  # the adapter read as an update of the dense side
    torch.testing.assert_close(neg[q], -d[q])
    assert neg.is_factored(q)
    assert "4 low-rank" in repr(d)


def test_adapter_for_another_base_is_rejected(adapter):
    path, _, _ = adapter
    other, _ = tiny_model("llama", seed=0, d_model=32)
    with pytest.raises(ValueError, match="different base model|different architectures"):
        weight_delta(other, path)
    with pytest.raises(ValueError, match="base="):
        weight_delta(path, path)
