"""Projections: weights against a numpy reference, exact restore, LoRA, module filters, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltalens.interventions import (
    ModuleFilter,
    apply_projection,
    energy_kept,
    energy_table,
    project,
    random_like,
    top_k,
    weight_delta,
)
from deltalens.schemas import ENERGY
from deltalens.testing import param_hash, tiny_model
from deltalens.testing import perturb as _step


def _family(seed: int = 0):
    """W_0, W_A = W_0 + Δ_A, W_T = W_A + Δ_T as tiny Llama models."""
    w0 = tiny_model("llama", seed=seed)[0]
    wa = _step(tiny_model("llama", seed=seed)[0], 100 + seed)
    wt = _step(tiny_model("llama", seed=seed)[0], 100 + seed)
    _step(wt, 200 + seed)
    return w0, wa, wt


@pytest.fixture(scope="module")
def fam():
    w0, wa, wt = _family()
    return w0, wa, wt, weight_delta(w0, wa), weight_delta(wa, wt)


def _np_expected(wa, d_align, d_task, frac, mode, alpha=1.0):
    out = {}
    sa = {n: p.detach().double().numpy() for n, p in wa.named_parameters()}
    for n in d_task:
        V, U = d_align[n].double().numpy(), d_task[n].double().numpy()
        if V.ndim == 2:
            u = np.linalg.svd(V, full_matrices=False)[0]
            k = max(1, round(frac * min(V.shape)))
            P = u[:, :k] @ (u[:, :k].T @ U)
        else:
            P = (U @ V) / (V @ V) * V
        out[n] = sa[n] + alpha * (P if mode == "parallel" else U - P)
    return out


@pytest.mark.parametrize("mode", ["parallel", "orth"])
def test_projected_weights_match_numpy(fam, mode):
    w0, wa, wt, d_align, d_task = fam
    expected = _np_expected(wa, d_align, d_task, 0.25, mode, alpha=0.7)
    basis = top_k(d_align, frac=0.25)
    for model in (wa, wt):  # from the reference and from the target endpoint
        before = param_hash(model)
        with project(model, d_task, basis, mode=mode, alpha=0.7) as h:
            live = dict(model.named_parameters())
            for n, want in expected.items():
                np.testing.assert_allclose(live[n].detach().double().numpy(), want, atol=1e-6, rtol=0)
            assert len(h.names) == len(d_task)
        assert param_hash(model) == before


def test_energies_match_numpy_and_sum_to_one(fam):
    _, wa, _, d_align, d_task = fam
    basis = top_k(d_align, frac=0.5)
    num = den = 0.0
    for n in d_task:
        V, U = d_align[n].double().numpy(), d_task[n].double().numpy()
        if V.ndim == 2:
            u = np.linalg.svd(V, full_matrices=False)[0][:, : max(1, round(0.5 * min(V.shape)))]
            num += np.sum((u.T @ U) ** 2)
        else:
            num += (U @ V) ** 2 / (V @ V)
        den += np.sum(U**2)
    assert energy_kept(d_task, basis, "parallel") == pytest.approx(num / den, rel=1e-5)
    with project(wa, d_task, basis, "parallel") as hp:
        par = hp.energy_kept
    with project(wa, d_task, basis, "orth") as ho:
        orth = ho.energy_kept
    assert par == pytest.approx(num / den, rel=1e-5)
    assert par + orth == pytest.approx(1.0, abs=1e-6)
    raw = energy_table(d_task, basis)
    assert list(raw.columns) == list(ENERGY.names) and raw["n_tensors"].dtype == "int64"
    table = raw.set_index("group")
    assert table.loc["all", "energy_kept_parallel"] == pytest.approx(num / den, rel=1e-5)
    assert table.loc["no_embeddings", "n_tensors"] == len(d_task) - 2
    assert table.loc["attn", "n_tensors"] == 8


def test_restores_exactly_on_exception(fam):
    _, wa, _, d_align, d_task = fam
    before = param_hash(wa)
    with pytest.raises(RuntimeError, match="boom"):
        with project(wa, d_task, random_like(d_align, frac=0.5, seed=3), mode="orth"):
            assert param_hash(wa) != before
            raise RuntimeError("boom")
    assert param_hash(wa) == before
    h = apply_projection(wa, d_task, top_k(d_align, frac=0.25))
    assert h.active and param_hash(wa) != before and "active" in repr(h)
    h.restore()
    h.restore()
    assert param_hash(wa) == before and "restored" in repr(h)


def test_module_filter(fam):
    _, wa, wt, d_align, d_task = fam
    basis = top_k(d_align, frac=0.25)
    before = {n: p.detach().clone() for n, p in wa.named_parameters()}
    with project(wa, d_task, basis, modules="attn") as h:
        for n, p in wa.named_parameters():
            changed = not torch.equal(p, before[n])
            assert changed == (".self_attn." in n), n
    assert energy_kept(d_task, basis, modules="attn") == pytest.approx(
        energy_table(d_task, basis).set_index("group").loc["attn", "energy_kept_parallel"]
    )
    no_emb = ModuleFilter(embeddings=False, unembedding=False)
    assert energy_kept(d_task, basis, modules=no_emb) != pytest.approx(energy_kept(d_task, basis))
    layer1 = ModuleFilter(groups=("mlp",), layers="1:2")
    with project(wt, d_task, basis, modules=layer1, outside="task") as h:
        assert sorted(h.names) == sorted(n for n in d_task if ".layers.1.mlp." in n)  # others stay at W_T


def test_lora_projection_equals_densified(tmp_path):
    from peft import LoraConfig, get_peft_model

    w0, wa, _ = _family(1)
    d_align = weight_delta(w0, wa)
    peft_model = get_peft_model(
        _step(tiny_model("llama", seed=1)[0], 101), LoraConfig(r=4, target_modules=["o_proj", "up_proj"])
    )
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path)
    low = weight_delta(wa, tmp_path)
    dense = low.densify()
    assert low.is_factored("model.layers.0.self_attn.o_proj.weight")
    basis = top_k(d_align, frac=0.25)
    for mode in ("parallel", "orth"):
        with project(wa, low, basis, mode) as h1:
            got = {n: p.detach().clone() for n, p in wa.named_parameters()}
        with project(wa, dense, basis, mode) as h2:
            for n, p in wa.named_parameters():
                torch.testing.assert_close(got[n], p.detach(), atol=1e-6, rtol=0)
        assert h1.energy_kept == pytest.approx(h2.energy_kept, rel=1e-5)
        assert energy_kept(low, basis, mode) == pytest.approx(energy_kept(dense, basis, mode), rel=1e-5)


def test_bad_input_leaves_weights_untouched(fam):
    w0, wa, wt, d_align, d_task = fam
    before = param_hash(wa)
    other0, otherA, _ = _family(seed=5)  # another model family, same architecture
    foreign = top_k(weight_delta(other0, otherA), frac=0.25)
    with pytest.raises(ValueError, match="basis was built from a delta of another model"):
        with project(wa, d_task, foreign):
            pass
    small = [tiny_model("llama", seed=0, d_model=32)[0] for _ in range(2)]
    _step(small[1], 1)
    with pytest.raises(ValueError, match="has shape"):
        apply_projection(wa, d_task, top_k(weight_delta(*small), frac=0.25))
    with pytest.raises(ValueError, match="match neither endpoint"):
        apply_projection(otherA, d_task, top_k(d_align, frac=0.25))
    with pytest.raises(ValueError, match="mode must be one of"):
        apply_projection(wa, d_task, top_k(d_align, frac=0.25), mode="same")
    with pytest.raises(ValueError, match="selects no tensor"):
        apply_projection(wa, d_task, top_k(d_align, frac=0.25), modules=lambda n: False)
    assert param_hash(wa) == before
    # a nested projection on the same model is refused
    with project(wa, d_task, top_k(d_align, frac=0.25)):
        with pytest.raises(RuntimeError, match="another weight edit"):
            apply_projection(wa, d_task, top_k(d_align, frac=0.5))
    assert param_hash(wa) == before


def test_tensor_groups_and_filters():
    from deltalens.interventions import select_names, tensor_group

    cases = {
        "model.embed_tokens.weight": "embedding",
        "lm_head.weight": "unembedding",
        "model.layers.3.self_attn.q_proj.weight": "attn",
        "model.layers.3.self_attn.q_norm.weight": "norm",
        "model.layers.3.mlp.down_proj.weight": "mlp",
        "model.layers.3.post_attention_layernorm.weight": "norm",
        "model.norm.weight": "norm",
        "transformer.wte.weight": "embedding",
        "transformer.wpe.weight": "embedding",
        "transformer.h.0.attn.c_attn.weight": "attn",
        "transformer.h.0.mlp.c_fc.bias": "mlp",
        "transformer.h.0.ln_1.weight": "norm",
        "transformer.ln_f.bias": "norm",
    }
    for name, group in cases.items():
        assert tensor_group(name) == group, name
    names = list(cases)
    assert select_names(names, ModuleFilter(groups=("attn", "mlp"), layers=3)) == [
        "model.layers.3.self_attn.q_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
    ]
    assert "lm_head.weight" not in select_names(names, ModuleFilter(unembedding=False))
    assert select_names(names, "embeddings") == [
        n for n, g in cases.items() if g in ("embedding", "unembedding")
    ]
    with pytest.raises(ValueError, match="did you mean 'attn'"):
        select_names(names, "atn")
    with pytest.raises(ValueError, match="unknown tensor groups"):
        ModuleFilter(groups=("attention",))
