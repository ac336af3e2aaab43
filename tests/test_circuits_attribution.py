"""Attribution patching against autograd on the plain HF model; head patching across checkpoints
against raw torch hooks; on the model organism, attribution patching against real activation patching.
"""

from __future__ import annotations

import copy

import pytest
import torch

import deltalens as dl
from deltalens.circuits import attribution_patching, head_patching_across
from deltalens.circuits.attribution import logit_diff_metric
from deltalens.testing import perturb, tiny_model

CLEAN = [[11, 40, 52, 99, 7, 23], [301, 17, 64, 88]]  # token ids; rows of two lengths (left padding)
CORRUPT = [[11, 41, 52, 98, 7, 23], [301, 19, 64, 80]]
A, B = 5, 7


@pytest.fixture(scope="module")
def llama():
    model, tok = tiny_model("llama")
    perturb(model, seed=1, scale=0.2)
    tok.padding_side = "left"
    return model, tok


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (t - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _reference(model, tok) -> dict[str, torch.Tensor]:
    """Per-site ``(corrupted − clean) · grad`` with raw torch hooks on the HF modules and autograd.

    Returns ``{"z": [layer, pos, head], "resid": [layer, pos], "post": [layer, pos, d_mlp]}``, summed
    over the batch.
    """
    model = copy.deepcopy(model).train(False)
    n_heads = model.config.num_attention_heads

    def run(rows, grad):
        ids, mask = _left_pad(rows)
        kept = {}
        hs = []
        for i, blk in enumerate(model.model.layers):

            def keep(key):
                def h(mod, args, kwargs):
                    x = args[0] if args else kwargs["hidden_states"]
                    if grad:
                        x.retain_grad()
                    kept[key] = x

                return h

            hs.append(blk.register_forward_pre_hook(keep(("resid", i)), with_kwargs=True))
            hs.append(blk.self_attn.o_proj.register_forward_pre_hook(keep(("z", i)), with_kwargs=True))
            hs.append(blk.mlp.down_proj.register_forward_pre_hook(keep(("post", i)), with_kwargs=True))
        with torch.set_grad_enabled(grad):
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
            ).logits
            if grad:
                (logits[:, -1, A] - logits[:, -1, B]).mean().backward()
        for h in hs:
            h.remove()
        return kept

    clean, corr = run(CLEAN, True), run(CORRUPT, False)
    out = {}
    for kind in ("resid", "z", "post"):
        per_layer = []
        for i in range(model.config.num_hidden_layers):
            c = clean[(kind, i)]
            x = ((corr[(kind, i)] - c.detach()) * c.grad).sum(0)  # [pos, d]
            if kind == "z":
                x = x.reshape(x.shape[0], n_heads, -1).sum(-1)
            elif kind == "resid":
                x = x.sum(-1)
            per_layer.append(x.double())
        out[kind] = torch.stack(per_layer)
    return out


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_attribution_matches_autograd(llama, backend):
    model, tok = llama
    ref = _reference(model, tok)
    m = dl.load(copy.deepcopy(model), tokenizer=copy.deepcopy(tok), backend=backend)
    df = attribution_patching(m, CLEAN, CORRUPT, logit_diff_metric(A, B))
    assert list(df.columns) == ["name", "layer", "head", "neuron", "position", "attribution"]
    n_layers, n_pos = m.n_layers, m.tokenize(CLEAN).input_ids.shape[1]
    got = {
        "z": df[df.name.str.endswith("hook_z")].sort_values(["layer", "position", "head"]),
        "resid": df[df.name.str.endswith("hook_resid_pre")].sort_values(["layer", "position"]),
        "post": df[df.name.str.endswith("hook_post")].sort_values(["layer", "position", "neuron"]),
    }
    for kind, part in got.items():
        x = torch.tensor(part.attribution.to_numpy()).reshape(ref[kind].shape)
        assert ref[kind].abs().max() > 1e-3, kind
        assert (x - ref[kind]).abs().max() < 1e-4 * (1 + ref[kind].abs().max()), kind
    assert len(got["resid"]) == n_layers * n_pos
    summed = attribution_patching(m, CLEAN, CORRUPT, logit_diff_metric(A, B), names="heads", positions="sum")
    assert (summed.position == -1).all() and len(summed) == n_layers * m.n_heads
    per_head = got["z"].groupby(["layer", "head"]).attribution.sum().to_numpy()
    assert abs(summed.sort_values(["layer", "head"]).attribution.to_numpy() - per_head).max() < 1e-6
    # the attrs carry the two metric values, which differ (the inputs differ)
    assert df.attrs["metric_clean"] != df.attrs["metric_corrupted"]


def test_attribution_stages_and_errors(llama):
    model, tok = llama
    m1 = dl.load(copy.deepcopy(model), tokenizer=copy.deepcopy(tok), backend="nnsight")
    m2 = dl.load(
        perturb(copy.deepcopy(model), seed=3, scale=0.1), tokenizer=copy.deepcopy(tok), backend="nnsight"
    )
    metric = logit_diff_metric(A, B)
    both = attribution_patching({"wa": m1, "ft": m2}, CLEAN, CORRUPT, metric, names=("heads", "resid"))
    assert list(both.columns)[0] == "stage"
    for stage, m in (("wa", m1), ("ft", m2)):
        alone = attribution_patching(m, CLEAN, CORRUPT, metric, names=("heads", "resid"))
        part = both[both.stage == stage].drop(columns="stage").reset_index(drop=True)
        assert abs(part.attribution.to_numpy() - alone.attribution.to_numpy()).max() < 1e-9
    with pytest.raises(TypeError, match="scalar tensor"):
        attribution_patching(m1, CLEAN, CORRUPT, lambda lg: float(lg[:, -1, A].mean()), names="heads")
    with pytest.raises(ValueError, match="positions="):
        attribution_patching(m1, CLEAN, CORRUPT, metric, positions="all")
    with pytest.raises(ValueError, match="same batch size and length"):
        attribution_patching(m1, CLEAN, ["a"], metric)
    with pytest.raises(KeyError, match="unknown hook name"):
        attribution_patching(m1, CLEAN, CORRUPT, metric, names="head")


def test_head_patching_across_matches_raw_hooks(llama):
    model, tok = llama
    ft = perturb(copy.deepcopy(model), seed=4, scale=0.3)
    wa_m = dl.load(copy.deepcopy(model), tokenizer=copy.deepcopy(tok), backend="nnsight")
    ft_m = dl.load(copy.deepcopy(ft), tokenizer=copy.deepcopy(tok), backend="nnsight")
    metric = logit_diff_metric(A, B)
    df = head_patching_across({"wa": wa_m, "ft": ft_m}, "ft", "wa", CLEAN, metric, progress=False)
    assert list(df.columns) == ["layer", "head", "effect", "fraction"] and len(df) == 2 * 4
    span = df.attrs["metric_source"] - df.attrs["metric_target"]
    assert abs(span) > 1e-3
    assert abs(df.fraction - df.effect / span).max() < 1e-9

    # reference: the fine-tune's o_proj input for head 2 of layer 1, written into W_A's, raw torch hooks
    ids, mask = _left_pad(CLEAN)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    dh = model.config.hidden_size // model.config.num_attention_heads
    seen = {}
    h = ft.model.layers[1].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, a: seen.__setitem__("z", a[0])
    )
    with torch.no_grad():
        ft(**kw)
    h.remove()

    def swap(mod, args):
        z = args[0].clone()
        z[..., 2 * dh : 3 * dh] = seen["z"][..., 2 * dh : 3 * dh]
        return (z,)

    wa = copy.deepcopy(model)
    with torch.no_grad():
        base = float(metric(wa(**kw).logits))
        h = wa.model.layers[1].self_attn.o_proj.register_forward_pre_hook(swap)
        patched = float(metric(wa(**kw).logits))
        h.remove()
    row = df[(df.layer == 1) & (df["head"] == 2)]
    assert abs(patched - base) > 1e-4
    assert abs(float(row.effect.iloc[0]) - (patched - base)) < 1e-5
    with pytest.raises(ValueError, match="source='sft'"):
        head_patching_across({"wa": wa_m, "ft": ft_m}, "sft", "wa", CLEAN, metric)


def _minimal_pairs(fam, tok, length: int, n: int) -> tuple[list[str], list[str]]:
    """Held-out harmful requests and the same request with a benign verb, all ``length`` tokens."""
    from deltalens.study.organism.data import BENIGN_VERBS, HARMFUL_VERBS

    def n_tok(s: str) -> int:
        return len(tok(s, add_special_tokens=False).input_ids)

    bad = [v for v in HARMFUL_VERBS if n_tok(v) == 1]
    good = [v for v in BENIGN_VERBS if n_tok(v) == 1]
    clean, corrupt = [], []
    for p in fam.heldout.harmful:
        verb = next((v for v in bad if f" {v} " in f" {p} "), None)
        if verb is None:
            continue
        c = fam.generation_template.format(prompt=p)
        k = fam.generation_template.format(prompt=p.replace(verb, good[len(clean) % len(good)], 1))
        if n_tok(c) == length == n_tok(k):
            clean.append(c)
            corrupt.append(k)
    return clean[:n], corrupt[:n]


@pytest.mark.slow
def test_attribution_tracks_activation_patching_on_the_organism(organism_family):
    """On W_A, harmful requests (clean) vs the same requests with a benign verb (corrupted), metric
    logit(I) − logit(Sure): attribution patching vs real patching, per head and per residual position.

    Measured (seed-0 organism, 16 pairs of 11 / 12 / 14 tokens): Pearson 0.90 / 0.95 / 0.96 over the
    16 heads, 0.90 / 0.91 / 0.90 over the layer × position residual sites (n = 48 / 52 / 60); Spearman
    0.97 / 0.95 / 0.92 and 0.999. The build is reproducible (one training thread); the thresholds (0.7;
    0.8 for Spearman) leave room for other torch versions and CPUs. A sign error or a wrong position
    gives a correlation near 0 or negative.
    """
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    from deltalens.interventions import logit_diff, patching_sweep

    fam = organism_family
    wa = dl.load(fam["wa"], backend="nnsight")
    clean, corrupt = _minimal_pairs(fam, wa.tokenizer, length=11, n=16)
    assert len(clean) == 16
    refuse, sure = (wa.tokenizer(w, add_special_tokens=False).input_ids[-1] for w in ("I", "Sure"))
    metric = logit_diff_metric(refuse, sure)
    att = attribution_patching(wa, clean, corrupt, metric, names=("heads", "resid"))
    assert att.attrs["metric_clean"] > 0 > att.attrs["metric_corrupted"]  # W_A refuses only the harmful ones

    # real patching of one head's z (every position) from the corrupted run into the clean run
    c, k = wa.tokenize(clean, padding_side="left"), wa.tokenize(corrupt, padding_side="left")
    zs = wa.run_with_cache(k.input_ids, names="blocks.*.attn.hook_z", attention_mask=k.attention_mask)
    base = float(metric(wa.logits(c.input_ids, attention_mask=c.attention_mask)))
    heads = att[att.name.str.endswith("hook_z")].groupby(["layer", "head"]).attribution.sum()
    real = []
    for layer, head in heads.index:
        src = zs[f"blocks.{layer}.attn.hook_z"]

        def fn(z, head=head, src=src):
            z = z.clone()
            z[:, :, head] = src[:, :, head]
            return z

        with wa.hooks({f"blocks.{layer}.attn.hook_z": fn}):
            real.append(float(metric(wa.logits(c.input_ids, attention_mask=c.attention_mask))) - base)
    assert pearsonr(heads.to_numpy(), np.array(real))[0] > 0.7
    assert spearmanr(heads.to_numpy(), np.array(real))[0] > 0.8

    # residual positions: patching_sweep with the corrupted run as the source, the clean run as the target
    sweep = patching_sweep(wa, corrupt, clean, metric=logit_diff(refuse, sure), names="blocks.*.hook_resid_pre",
                           positions="all", progress=False)  # fmt: skip
    delta = (sweep.metric - sweep.attrs["metric_corrupted"]).to_numpy()
    resid = att[att.name.str.endswith("hook_resid_pre")].set_index(["layer", "position"]).attribution
    resid = resid.loc[list(zip(sweep.layer, sweep.position))].to_numpy()
    assert len(resid) == wa.n_layers * c.input_ids.shape[1]
    assert pearsonr(resid, delta)[0] > 0.7
    assert spearmanr(resid, delta)[0] > 0.8
