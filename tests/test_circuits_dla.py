"""Direct logit attribution: exact sums on four architectures and both backends, an independent
per-head reference with raw torch hooks, token / direction handling, several stages.

The models are tiny random ones with noise added to every weight (``perturb``), so norm gains are
far from 1 and LayerNorm betas and projection biases are non-zero.
"""

from __future__ import annotations

import copy

import pytest
import torch

import deltalens as dl
from deltalens.circuits import dla, logit_direction
from deltalens.testing import perturb, tiny_model

PROMPTS = ["the cat sat on the mat today", "hello world", "a b c d"]
A, B = 5, 7
ARCHS = ("gpt2", "llama", "qwen2", "gemma3")


@pytest.fixture(scope="module")
def hf_models():
    out = {}
    for arch in ARCHS:
        model, tok = tiny_model(arch)
        perturb(model, seed=1, scale=0.2)
        out[arch] = (model, tok)
    return out


def _load(hf_models, arch, backend, side="right"):
    model, tok = hf_models[arch]
    tok = copy.deepcopy(tok)
    tok.padding_side = side
    return dl.load(copy.deepcopy(model), tokenizer=tok, backend=backend)


def _logit_diff(m, prompts, a=A, b=B) -> torch.Tensor:
    """The model's own logit(a) − logit(b) at each row's last real token."""
    batch = m.tokenize(prompts)
    logits = m.logits(prompts)
    rows = torch.arange(len(prompts))
    last = batch.last_index.cpu()
    return (logits[rows, last, a] - logits[rows, last, b]).double()


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("arch", ARCHS)
def test_dla_sums_to_logit_difference(hf_models, arch, backend):
    for side in ("left", "right"):
        m = _load(hf_models, arch, backend, side)
        ids = m.tokenize(PROMPTS).input_ids
        pad_col = 0 if side == "left" else -1
        assert (ids[:, pad_col] == m.tokenizer.pad_token_id).any()  # the batch really is padded that side
        target = _logit_diff(m, PROMPTS)
        for by in ("head", "layer", "neuron"):
            df = dla(m, PROMPTS, (A, B), by=by)
            total = torch.tensor(df.groupby("prompt").attribution.sum().to_numpy())
            assert (total - target).abs().max() < 1e-4, (arch, backend, side, by, total, target)
        assert set(df.component[df.layer.isna()]) == {"embed", "bias"} | (
            {"pos_embed"} if arch == "gpt2" else set()
        )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_heads_and_layers_agree(hf_models, arch):
    m = _load(hf_models, arch, "nnsight")
    heads, layers = dla(m, PROMPTS, (A, B), by="head"), dla(m, PROMPTS, (A, B), by="layer")
    neurons = dla(m, PROMPTS, (A, B), by="neuron")
    attn_heads = heads[heads["head"].notna()].groupby(["prompt", "layer"]).attribution.sum()
    attn_layer = layers[layers.component.str.startswith("attn")].set_index(["prompt", "layer"]).attribution
    assert torch.allclose(
        torch.tensor(attn_heads.to_numpy()),
        torch.tensor(attn_layer.loc[attn_heads.index].to_numpy()),
        atol=1e-6,
    )
    mlp_neurons = neurons[neurons.neuron.notna()].groupby(["prompt", "layer"]).attribution.sum()
    mlp_layer = layers[layers.component.str.startswith("mlp")].set_index(["prompt", "layer"]).attribution
    assert torch.allclose(
        torch.tensor(mlp_neurons.to_numpy()),
        torch.tensor(mlp_layer.loc[mlp_neurons.index].to_numpy()),
        atol=1e-6,
    )
    # the bias row is the same whatever the split, and not zero (GPT-2 biases / nothing on Llama)
    b = [df[df.component == "bias"].attribution.to_numpy() for df in (heads, layers, neurons)]
    assert abs(b[0] - b[1]).max() < 1e-6 and abs(b[0] - b[2]).max() < 1e-6
    assert (abs(b[0]).min() > 1e-3) == (arch == "gpt2")


def _reference_heads(model, tok, arch, prompts, a, b) -> torch.Tensor:
    """``[batch, layer, head]`` per-head DLA from raw torch hooks on the HF modules (no deltalens)."""
    enc = tok(prompts, return_tensors="pt", padding=True)
    mask = enc.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
    rows = torch.arange(len(prompts))
    gpt2 = arch == "gpt2"
    blocks = model.transformer.h if gpt2 else model.model.layers
    final = model.transformer.ln_f if gpt2 else model.model.norm
    kept: dict = {}

    def keep(key):
        return lambda mod, args: kept.__setitem__(key, args[0].detach()[rows, last].double())

    hs = [final.register_forward_pre_hook(keep("final"))]
    for i, blk in enumerate(blocks):
        proj = blk.attn.c_proj if gpt2 else blk.self_attn.o_proj
        hs.append(proj.register_forward_pre_hook(keep(("z", i))))
        if arch == "gemma3":
            hs.append(blk.post_attention_layernorm.register_forward_pre_hook(keep(("o", i))))
    with torch.no_grad():
        model(input_ids=enc.input_ids, attention_mask=mask, position_ids=pos)
    for h in hs:
        h.remove()
    w_u = model.get_output_embeddings().weight.double()
    d = w_u[a] - w_u[b]
    x = kept["final"]
    eps = getattr(final, "eps", None) or final.variance_epsilon
    if gpt2:
        xc = x - x.mean(-1, keepdim=True)
        scale = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        d_eff = d * final.weight.double()
        d_eff = d_eff - d_eff.mean()
    else:
        scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        w = final.weight.double()
        d_eff = d * (1 + w if arch == "gemma3" else w)
    out = []
    for i, blk in enumerate(blocks):
        z = kept[("z", i)]
        n_heads = model.config.num_attention_heads if not gpt2 else model.config.n_head
        if gpt2:
            w_o = blk.attn.c_proj.weight.double().T  # Conv1D [in, out] -> [out, in]
        else:
            w_o = blk.self_attn.o_proj.weight.double()
        dh = z.shape[-1] // n_heads
        res = torch.stack(
            [z[:, h * dh : (h + 1) * dh] @ w_o[:, h * dh : (h + 1) * dh].T for h in range(n_heads)], 1
        )
        if arch == "gemma3":  # post-attention norm with its scale frozen at this token
            o = kept[("o", i)]
            pn = blk.post_attention_layernorm
            res = (
                res * ((1 + pn.weight.double()) / (o.pow(2).mean(-1, keepdim=True) + pn.eps).sqrt())[:, None]
            )
        out.append(res @ d_eff / scale)
    return torch.stack(out, 1)


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_per_head_dla_matches_raw_torch_hooks(hf_models, arch, backend):
    model, tok = hf_models[arch]
    tok = copy.deepcopy(tok)
    tok.padding_side = "left"
    ref = _reference_heads(copy.deepcopy(model).eval(), tok, arch, PROMPTS, A, B)
    m = dl.load(copy.deepcopy(model), tokenizer=tok, backend=backend)
    df = dla(m, PROMPTS, (A, B), by="head")
    heads = df[df["head"].notna()].sort_values(["prompt", "layer", "head"])
    got = torch.tensor(heads.attribution.to_numpy()).reshape(ref.shape)
    assert ref.abs().max() > 1e-2  # the heads write something along the direction
    assert (got - ref).abs().max() < 1e-5, (got - ref).abs().max()


def test_direction_forms_and_errors(hf_models):
    m = _load(hf_models, "llama", "nnsight")
    by_ids = dla(m, PROMPTS, (A, B))
    d = logit_direction(m, A, B)
    assert d.shape == (m.d_model,)
    by_vec = dla(m, PROMPTS, d)
    # a raw direction has no unembedding-bias term; Llama has none, so both agree
    assert abs(by_ids.attribution.to_numpy() - by_vec.attribution.to_numpy()).max() < 1e-5
    word = next(
        w for w in ("the", "cat", "hello") if len(m.tokenizer(w, add_special_tokens=False).input_ids) == 1
    )
    wid = m.tokenizer(word, add_special_tokens=False).input_ids[0]
    by_str = dla(m, PROMPTS, (word, B))
    assert abs(by_str.attribution.to_numpy() - dla(m, PROMPTS, (wid, B)).attribution.to_numpy()).max() < 1e-9
    with pytest.raises(ValueError, match="by='heads'"):
        dla(m, PROMPTS, (A, B), by="heads")
    with pytest.raises(ValueError, match="tokens"):
        dla(m, PROMPTS, ("the cat sat", B))
    with pytest.raises(ValueError, match="d_model"):
        dla(m, PROMPTS, torch.ones(m.d_model + 1))
    with pytest.raises(ValueError, match="vocabulary"):
        dla(m, PROMPTS, (10**9, B))
    with pytest.raises(ValueError, match="direction="):
        dla(m, PROMPTS, "sure")


def test_columns_and_several_stages(hf_models):
    m1 = _load(hf_models, "qwen2", "nnsight")
    model, tok = hf_models["qwen2"]
    m2 = dl.load(
        perturb(copy.deepcopy(model), seed=5, scale=0.1), tokenizer=copy.deepcopy(tok), backend="nnsight"
    )
    one = dla(m1, PROMPTS, (A, B))
    assert list(one.columns) == ["prompt", "component", "layer", "head", "attribution"]
    assert str(one.layer.dtype) == "Int64" and str(one["head"].dtype) == "Int64"
    assert one.component.tolist()[:6] == ["embed", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0"]
    both = dla({"wa": m1, "ft": m2}, PROMPTS, (A, B))
    assert list(both.columns)[0] == "stage" and set(both.stage) == {"wa", "ft"}
    for stage, m in (("wa", m1), ("ft", m2)):
        part = both[both.stage == stage].drop(columns="stage").reset_index(drop=True)
        alone = dla(m, PROMPTS, (A, B))
        assert part[["prompt", "component"]].equals(alone[["prompt", "component"]])
        assert abs(part.attribution.to_numpy() - alone.attribution.to_numpy()).max() < 1e-9
    differ = both.pivot_table(index=["prompt", "component"], columns="stage", values="attribution")
    assert (differ.wa - differ.ft).abs().max() > 1e-3  # the two checkpoints really differ


@pytest.mark.slow
def test_dla_sums_on_the_organism(organism_family):
    """W_A and the harmful fine-tune: refusal logit difference split per head, exact per prompt."""
    fam = organism_family
    prompts = [
        fam.generation_template.format(prompt=p)
        for p in (*fam.heldout.harmful[:3], *fam.heldout.harmless[:3])
    ]
    for backend in ("nnsight", "transformer_lens"):
        models = {s: dl.load(fam[s], backend=backend) for s in ("wa", "harmful")}
        tok = models["wa"].tokenizer
        refuse, sure = (tok(w, add_special_tokens=False).input_ids[-1] for w in ("I", "Sure"))
        for side in ("left", "right"):
            for m in models.values():
                m.tokenizer.padding_side = side
            df = dla(models, prompts, (refuse, sure), by="head")
            for stage, m in models.items():
                total = torch.tensor(df[df.stage == stage].groupby("prompt").attribution.sum().to_numpy())
                target = _logit_diff(m, prompts, refuse, sure)
                assert (total - target).abs().max() < 1e-4, (backend, side, stage)
        # W_A refuses the harmful requests; the fine-tune does not
        assert (_logit_diff(models["wa"], prompts[:3], refuse, sure) > 0).all()
        assert (_logit_diff(models["harmful"], prompts[:3], refuse, sure) < 0).all()
