"""The model organism: the Exp-1 energy diagnostic and cross-checkpoint patching (slow: builds the family)."""

from __future__ import annotations

import pytest

import deltalens as dl
from deltalens.interventions import energy_sweep, logit_diff, patching_sweep, project, top_k

pytestmark = pytest.mark.slow


def test_exp1_energy_shape(organism_family):
    fam = organism_family
    d_align = dl.weight_delta(fam["w0"], fam["wa"])
    tasks = {k: dl.weight_delta(fam["wa"], fam[k]) for k in ("useful", "harmful", "contaminated")}
    df = energy_sweep(
        tasks, d_align, fracs=(0.25,), methods=("topk", "random"), groups=("all", "no_embeddings")
    )
    blocks = df[df.group == "no_embeddings"].pivot_table(
        index="task", columns="method", values="energy_kept_parallel"
    )
    # the prototype's wording: without (un)embeddings, harmful − useful >= 0.08 and harmful >= 2 x random
    assert blocks.loc["harmful", "topk"] - blocks.loc["useful", "topk"] >= 0.08, blocks
    assert blocks.loc["harmful", "topk"] >= 2 * blocks.loc["harmful", "random"], blocks
    expected = df[(df.group == "no_embeddings") & (df.method == "random")].set_index("task")[
        "random_expected"
    ]
    assert (abs(blocks["random"] - expected) < 0.05).all()


def test_cross_checkpoint_patching_and_projection(organism_family):
    fam = organism_family
    wa, harmful = dl.load(fam["wa"], backend="nnsight"), dl.load(fam["harmful"], backend="nnsight")
    prompts = [fam.generation_template.format(prompt=p) for p in fam.heldout.harmful[:4]]
    tok = wa.tokenizer
    sure, refuse = (tok(w, add_special_tokens=False).input_ids[-1] for w in ("Sure", "I"))
    table = patching_sweep(
        wa,
        prompts,
        source_model=harmful,
        metric=logit_diff(sure, refuse),
        names="blocks.*.hook_resid_post",
        positions=[-1],
        progress=False,
    )
    assert table.attrs["metric_clean"] > 0 > table.attrs["metric_corrupted"]  # harmful complies, W_A refuses
    last = table[table.layer == wa.n_layers - 1]
    n_pos = wa.tokenize(prompts, padding_side="left").input_ids.shape[1]
    assert last.position.tolist() == [n_pos - 1]  # -1 resolved to the absolute last index
    assert float(last.effect.iloc[0]) > 0.5  # the final residual at the last token carries the behaviour
    d_align, d_harm = dl.weight_delta(fam["w0"], fam["wa"]), dl.weight_delta(wa, harmful)
    with project(wa, d_harm, top_k(d_align, frac=0.99), "parallel") as h:
        assert 0.5 < h.energy_kept <= 1
        out = wa.generate(fam.heldout.harmful[:2], template=fam.generation_template, max_new_tokens=4)
    assert len(out) == 2


def test_exp1_topk_moves_utility_and_harm_together(organism_family):
    """The paper's Exp-1 shape, from one subspace_sweep call per update on the organism."""
    from deltalens.interventions import ModuleFilter, subspace_sweep
    from deltalens.study.organism.data import PromptSets
    from deltalens.study.organism.evaluate import evaluate

    fam = organism_family
    held = fam.heldout
    sets = PromptSets(
        harmful=held.harmful[:40],
        harmless=held.harmless[:2],
        harmless_kinds=held.harmless_kinds[:2],
        arithmetic=held.arithmetic[:80],
    )

    def score(model):
        r = evaluate(model.hf_model, model.tokenizer, sets)
        return {"utility": r["arithmetic_em"], "harm": r["comply_harmful"]}

    wa = dl.load(fam["wa"], backend="nnsight")
    d_align = dl.weight_delta(fam["w0"], wa)
    blocks = ModuleFilter(embeddings=False, unembedding=False)  # embeddings keep their whole update
    curves = {}
    for task, metric in (("useful", "utility"), ("harmful", "harm")):
        df = subspace_sweep(
            wa,
            dl.weight_delta(wa, fam[task]),
            d_align,
            fracs=(0.01, 0.25, 0.99),
            methods=("topk",),
            modes=("parallel",),
            evaluate=score,
            modules=blocks,
            outside="task",
            progress=False,
        )
        top = df[df.method == "topk"].sort_values("frac")
        curves[task] = top[metric].tolist()
        full = df[(df.method == "none") & (df["mode"] == "full")][metric].item()
        ref = df[(df.method == "none") & (df["mode"] == "reference")][metric].item()
        assert full > ref, (task, df)
        assert top["energy_kept"].is_monotonic_increasing
    # both behaviours grow with the fraction of the alignment subspace kept
    assert curves["useful"][-1] > curves["useful"][0], curves
    assert curves["harmful"][-1] > curves["harmful"][0], curves
