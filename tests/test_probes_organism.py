"""On the model organism: harmful vs harmless prompts are linearly separable, yet their
activation subspaces overlap far above chance (the paper's "overlapping representations")."""

from __future__ import annotations

import pytest

import deltalens as dl
from deltalens.probes import activation_overlap, collect, probe_layers
from deltalens.study.battery.runner import _object_groups

pytestmark = pytest.mark.slow


def test_probes_and_activation_overlap_on_organism(organism_family):
    fam = organism_family
    held = fam.heldout
    fmt = fam.generation_template
    harmful, harmless = (
        held.harmful[:80],
        [p for p, k in zip(held.harmless, held.harmless_kinds) if k == "howto"][:80],
    )
    prompts = [fmt.replace("{prompt}", p) for p in harmful + harmless]
    labels = ["harmful"] * len(harmful) + ["harmless"] * len(harmless)
    # benign and harmful how-to prompts share templates and objects: hold out whole objects
    groups = _object_groups(harmful + harmless, held.harmful_pairs + held.benign_pairs)
    assert len(set(groups)) >= 8

    wa = dl.load(fam["wa"], backend="nnsight")
    col = collect(wa, prompts, labels=labels, groups=groups, batch_size=40, progress=False)
    res = probe_layers(col)
    by_layer = res.summary().set_index("layer")["accuracy"]
    print("\nprobe accuracy by layer (W_A, held-out objects):", by_layer.round(3).to_dict())
    middle = wa.n_layers // 2
    assert by_layer.loc[middle] >= 0.9
    assert (res.summary()["majority_accuracy"] <= 0.6).all()
    for split in res.splits:  # no object on both sides
        train, test = split
        assert not {groups[i] for i in train} & {groups[i] for i in test}

    # the paper's protocol: raw prompt text. Templated, every last token is the template's ":" and
    # encodes the coming answer (refuse / comply), so that overlap at W_A varies from build to build
    # (0.005-0.41 seen), while on raw prompts it is 0.98-0.99 on seeds 0-2.
    sets = {"harmful": harmful, "harmless": harmless}
    df = activation_overlap(wa, sets, layers="65-90%", etas=(0.1, 0.5), centered=False, progress=False)
    mean = df[df.scope == "slice_mean"]
    print(mean[["set_a", "set_b", "eta", "mso", "baseline", "ratio"]].to_string(index=False))
    assert (mean["mso"] >= 5 * mean["baseline"]).all()
