"""Refusal directions, directional ablation, activation addition and weight orthogonalisation.

Independent references: the difference of means is recomputed in numpy from raw PyTorch forward
pre-hooks on a freshly loaded Hugging Face model (one prompt at a time, no padding); writer
outputs are recomputed from the raw weights; weight orthogonalisation is checked against
hook-based ablation of every writer, on both backends, including tied embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltalens as dl
from deltalens.circuits import (
    ablate_direction,
    add_direction,
    direction_stats,
    orthogonalize,
    refusal_directions,
)
from deltalens.circuits.refusal import apply_orthogonalization
from deltalens.hooks.writers import residual_writers
from deltalens.testing import perturb, tiny_config, tiny_tokenizer

BACKENDS = ("nnsight", "transformer_lens")
HARMFUL = ["import os and delete", "def kill(): return 1 + 2", "class Bad: pass", "raise ValueError"]
HARMLESS = ["import json", "def main(): return 0", "for x in range(3): print(x)", "x = [1, 2]"]
PROMPTS = ["import os", "def main(): return 1 + 2 + 3"]


def _save(arch: str, root, tied: bool = False):
    """A tiny checkpoint, perturbed so norm gains and biases are not trivial; optionally tied."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config(arch, len(tok))
    cfg.tie_word_embeddings = tied or arch == "gpt2"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.config.architectures = [type(model).__name__]
    perturb(model, seed=3, scale=0.1)
    path = root / f"{arch}{'-tied' if tied else ''}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusal")
    out = {a: _save(a, root) for a in ("gpt2", "llama", "qwen2", "gemma3")}
    out["qwen2-tied"] = _save("qwen2", root, tied=True)
    return out


def _random_dir(d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "qwen2-tied"])
def test_orthogonalize_equals_ablation_and_restores(ckpts, arch, backend):
    m = dl.load(ckpts[arch], backend=backend)
    assert m.tied_embeddings == (arch in ("gpt2", "qwen2-tied"))
    tied = m.tied_embeddings
    before = {k: v.detach().clone() for k, v in m.named_weights().items()}
    r = _random_dir(m.d_model)
    plain = m.logits(PROMPTS)
    with ablate_direction(m, r):
        ablated = m.logits(PROMPTS)
    assert (ablated - plain).abs().max() > 1e-3  # the ablation does something
    with orthogonalize(m, r) as h:
        assert m.active_edits()["weights"] == h.label and m.active_edits()["hooks"] == []
        assert h.untied == (0 if not tied else (1 if backend == "nnsight" else 2))
        orth = m.logits(PROMPTS)
        gen_orth = m.generate(PROMPTS[:1], max_new_tokens=4)
        with ablate_direction(m, r):  # ablating again after orthogonalising changes nothing
            twice = m.logits(PROMPTS)
    assert (orth - ablated).abs().max() <= 1e-4
    assert (twice - ablated).abs().max() <= 1e-4
    with ablate_direction(m, r):
        assert m.generate(PROMPTS[:1], max_new_tokens=4) == gen_orth
    assert m.active_edits() == {"hooks": [], "weights": None}
    assert m.tied_embeddings == tied
    after = m.named_weights()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(m.logits(PROMPTS), plain)


def test_orthogonalize_refuses_a_second_edit_and_restores_on_error(ckpts):
    m = dl.load(ckpts["llama"], backend="nnsight")
    w = m.named_weights()["model.layers.0.mlp.down_proj.weight"].detach().clone()
    with pytest.raises(RuntimeError, match="another weight edit"):
        with orthogonalize(m, _random_dir(m.d_model)):
            assert not torch.equal(m.named_weights()["model.layers.0.mlp.down_proj.weight"], w)
            with orthogonalize(m, _random_dir(m.d_model, seed=2)):
                pass
    assert torch.equal(m.named_weights()["model.layers.0.mlp.down_proj.weight"], w)
    assert m.active_edits()["weights"] is None


def test_orthogonalize_refuses_gemma3_and_live_lora(ckpts, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    g = dl.load(ckpts["gemma3"], backend="nnsight")
    with pytest.raises(ValueError, match="post_attention_layernorm.*ablate_direction") as e:
        with orthogonalize(g, _random_dir(g.d_model)):
            pass
    assert "\n" not in str(e.value)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(ckpts["llama"])
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj"], init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(tmp_path / "lora")
    live = dl.load(ckpts["llama"], adapter=tmp_path / "lora", backend="nnsight", merge_adapter=False)
    with pytest.raises(ValueError, match="LoRA adapter.*merge_adapter=True"):
        with orthogonalize(live, _random_dir(live.d_model)):
            pass


def test_apply_orthogonalization_edits_writers_and_restores_bit_exactly(ckpts):
    m = dl.load(ckpts["qwen2-tied"], backend="nnsight")
    before = {k: v.detach().clone() for k, v in m.named_weights().items()}
    r = _random_dir(m.d_model)
    h = apply_orthogonalization(m, r)
    assert h.active and m.active_edits()["weights"] == h.label and "active" in repr(h)
    assert h.untied == 1 and not m.tied_embeddings
    assert sorted(h.names) == sorted(w.weight_name for w in residual_writers(m))  # qwen2 writers have no bias
    emb = m.named_weights()["model.embed_tokens.weight"]
    assert (emb.double() @ (r.double() / r.double().norm())).abs().max() < 1e-5  # no writer writes along r
    assert not torch.equal(emb, before["model.embed_tokens.weight"])
    h.restore()
    assert not h.active and h.names == [] and h.untied == 0 and "restored" in repr(h)
    assert m.tied_embeddings and m.active_edits()["weights"] is None
    after = m.named_weights()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    h.restore()  # idempotent
    assert all(torch.equal(before[k], v) for k, v in m.named_weights().items())


def test_vectors_stack_the_raw_vector_of_every_layer(ckpts):
    m = dl.load(ckpts["llama"], backend="nnsight")
    rd = refusal_directions({"a": m}, HARMFUL, HARMLESS, layers=[1, 0], batch_size=3)
    v = rd.vectors("a")
    assert v.shape == (2, m.d_model) and v.dtype == torch.float32
    for i, ly in enumerate(rd.layers):
        assert torch.equal(v[i], rd.vector(ly, "a"))
    assert torch.equal(rd.vectors(), v)  # one stage: stage=None picks it
    with pytest.raises(KeyError, match="'b'"):
        rd.vectors("b")


def _hf_means(path, prompts, layers, offset=-1):
    """Mean over prompts of the input of each HF decoder block at one token, via raw pre-hooks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    blocks = hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers
    rows: dict[int, list[np.ndarray]] = {ly: [] for ly in layers}
    hooks = [
        blocks[ly].register_forward_pre_hook(
            lambda mod, args, kwargs, ly=ly: rows[ly].append(
                (args[0] if args else kwargs["hidden_states"])[0, offset].double().numpy()
            ),
            with_kwargs=True,
        )
        for ly in layers
    ]
    with torch.no_grad():
        for p in prompts:
            hf(**tok(p, return_tensors="pt"))
    for h in hooks:
        h.remove()
    return np.stack([np.mean(rows[ly], axis=0) for ly in layers])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_directions_equal_numpy_difference_of_means(ckpts, arch, backend):
    m = dl.load(ckpts[arch], backend=backend)
    layers = [0, 1]
    rd = refusal_directions(m, HARMFUL, HARMLESS, layers=layers, batch_size=3)
    want = _hf_means(ckpts[arch], HARMFUL, layers) - _hf_means(ckpts[arch], HARMLESS, layers)
    got = np.stack([rd.vector(ly).numpy() for ly in layers])
    np.testing.assert_allclose(got, want, atol=1e-5)
    for ly in layers:
        unit = rd.direction(ly).numpy()
        np.testing.assert_allclose(unit, want[layers.index(ly)] / np.linalg.norm(want[layers.index(ly)]), atol=1e-5)
    df = rd.to_frame()
    assert list(df["layer"]) == layers
    np.testing.assert_allclose(df["norm"], np.linalg.norm(want, axis=1), rtol=1e-5)
    assert "RefusalDirections(" in repr(rd) and "<table" in rd._repr_html_()
    if backend == "nnsight":  # an earlier post-instruction position
        rd2 = refusal_directions(m, HARMFUL, HARMLESS, layers=[1], position=-2)
        want2 = _hf_means(ckpts[arch], HARMFUL, [1], -2) - _hf_means(ckpts[arch], HARMLESS, [1], -2)
        np.testing.assert_allclose(rd2.vector(1).numpy(), want2[0], atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_ablation_at_all_writers_zeroes_every_residual_component(ckpts, arch):
    m = dl.load(ckpts[arch], backend="nnsight")
    r = _random_dir(m.d_model)
    u = r / r.norm()
    names = [n for n in m.hook_names if n.split(".")[-1] in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")]
    before = m.run_with_cache(PROMPTS, names=names)
    assert max(float((before[n] @ u).abs().max()) for n in names) > 1e-2
    for where in ("all_writers", "resid"):
        with ablate_direction(m, r, where=where) as h:
            assert set(m.active_edits()["hooks"]) == set(h.names)
            cache = m.run_with_cache(PROMPTS, names=names)
        assert max(float((cache[n] @ u).abs().max()) for n in names) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_addition_adds_exactly_alpha_r_at_every_position(ckpts, backend):
    m = dl.load(ckpts["qwen2"], backend=backend)
    r, layer, alpha = _random_dir(m.d_model), 1, 2.5
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    base = m.run_with_cache(PROMPTS, names=names)
    with add_direction(m, r, layer=layer, alpha=alpha):
        added = m.run_with_cache(PROMPTS, names=names)
    diff = added["blocks.1.hook_resid_pre"] - base["blocks.1.hook_resid_pre"]
    assert diff.shape[1] > 3
    torch.testing.assert_close(diff, (alpha * r).expand_as(diff), atol=1e-5, rtol=0)
    assert torch.equal(added["blocks.0.hook_resid_pre"], base["blocks.0.hook_resid_pre"])


def test_direction_stats_self_cosine_is_one(ckpts):
    m = dl.load(ckpts["llama"], backend="nnsight")
    other = dl.load(ckpts["qwen2"], backend="nnsight")
    df = direction_stats({"a": m, "b": m, "c": other}, HARMFUL, HARMLESS, reference="a")
    assert list(df.columns) == ["stage", "layer", "norm", "norm_ratio", "cosine"]
    same = df[df["stage"] == "b"]
    np.testing.assert_allclose(same["cosine"], 1.0, atol=1e-6)
    np.testing.assert_allclose(same["norm_ratio"], 1.0, atol=1e-9)
    assert (df[df["stage"] == "c"]["cosine"].abs() < 0.99).all()  # an unrelated model is not aligned


def test_writers_reproduce_hook_outputs(ckpts):
    for arch in ("gpt2", "llama"):
        m = dl.load(ckpts[arch], backend="nnsight")
        ws = {w.name: w for w in residual_writers(m)}
        assert list(ws)[:2] == (["embed", "pos_embed"] if arch == "gpt2" else ["embed", "a0"])
        names = ["hook_embed", "blocks.1.attn.hook_z", "blocks.1.hook_attn_out", "blocks.0.mlp.hook_post",
                 "blocks.0.hook_mlp_out"]
        c = m.run_with_cache(PROMPTS, names=names)
        with torch.no_grad():
            w = {k: (v.oriented.detach(), 0 if v.bias is None else v.bias.detach()) for k, v in ws.items()}
            torch.testing.assert_close(w["embed"][0].T[c.input_ids], c["hook_embed"])
            z = c["blocks.1.attn.hook_z"].flatten(-2)
            torch.testing.assert_close(z @ w["a1"][0].T + w["a1"][1], c["blocks.1.hook_attn_out"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(c["blocks.0.mlp.hook_post"] @ w["m0"][0].T + w["m0"][1],
                                       c["blocks.0.hook_mlp_out"], atol=1e-5, rtol=1e-5)
        assert (ws["a1"].bias is not None) == (arch == "gpt2")
    g = {w.name: w for w in residual_writers(dl.load(ckpts["gemma3"], backend="nnsight"))}
    assert g["m1"].post_norm == "model.layers.1.post_feedforward_layernorm" and not g["m1"].direct


def _one_line(fn, match):
    with pytest.raises((ValueError, KeyError)) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and __import__("re").search(match, msg), msg


def test_bad_inputs_give_one_clear_line(ckpts):
    m = dl.load(ckpts["llama"], backend="nnsight")

    def enter(cm):
        return lambda: cm.__enter__()

    _one_line(enter(ablate_direction(m, torch.ones(m.d_model + 1))), r"direction has shape \(65,\).*\(64,\)")
    _one_line(enter(orthogonalize(m, torch.ones(3))), r"direction has shape \(3,\)")
    _one_line(enter(orthogonalize(m, torch.zeros(m.d_model))), r"zero vector")
    _one_line(enter(ablate_direction(m, torch.ones(m.d_model), where="x")), r"where='x'.*all_writers")
    _one_line(enter(add_direction(m, torch.ones(m.d_model), layer=2)), r"layer=2 is out of range.*2 layers")
    _one_line(lambda: refusal_directions(m, HARMFUL, HARMLESS, layers=[5]), r"layers=5 is out of range")
    _one_line(lambda: refusal_directions(m, [], HARMLESS), r"harmful must be a non-empty list")
    _one_line(lambda: refusal_directions(m, HARMFUL, HARMLESS, position=0), r"position=0")
    _one_line(lambda: refusal_directions(m, HARMFUL, HARMLESS, hook="resid"), r"hook='resid'")
    _one_line(lambda: direction_stats({"a": m}, HARMFUL, HARMLESS, reference="z"), r"reference='z'")
    same = refusal_directions(m, HARMLESS, HARMLESS, layers=[0])
    _one_line(lambda: same.direction(0), r"difference of means .* at layer 0 is zero")
    _one_line(lambda: same.direction(1), r"layer=1 has no direction")
    assert m.active_edits() == {"hooks": [], "weights": None}
