"""The battery's protocol: raw-prompt activation overlap over a widened layer range, two harmful
distributions, the safety subspace and both projection scopes, the probe control, several seeds.

Numbers are checked against independent computations (HF hidden states and numpy SVDs, per-tensor
torch SVDs); the organism is not built here (tiny random models stand in for a family).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deltalens.hooks.names import parse_layers
from deltalens.study.battery import Battery, BatteryConfig, ConfigError
from deltalens.study.battery.runner import Family, shuffle_by_group, widen_layers


# ------------------------------------------------------------------ layers, control labels, config
@pytest.mark.parametrize("n_layers", [1, 2, 4, 8, 16, 30])
def test_widen_layers_keeps_the_paper_slice_and_widens_small_models(n_layers):
    paper = parse_layers("65-90%", n_layers)
    got = widen_layers("65-90%", n_layers, 2)
    assert got == list(range(got[0], got[-1] + 1))  # contiguous
    assert set(paper) <= set(got) and all(0 <= x < n_layers for x in got)
    assert len(got) == max(len(paper), min(2, n_layers))
    assert widen_layers("65-90%", n_layers, 1) == paper
    if len(paper) == 1 and paper[0] + 1 < n_layers:
        assert got == [paper[0], paper[0] + 1]  # one block deeper first
    assert widen_layers("3", 4, 2) == [2, 3]  # the last block: widened shallower


def test_shuffle_by_group_keeps_groups_whole_and_group_label_counts():
    groups = [f"g{i // 3}" for i in range(30)]
    labels = ["harmful" if i < 15 else "harmless" for i in range(30)]
    got = shuffle_by_group(labels, groups, seed=0)
    per_group = {g: {lab for lab, gg in zip(got, groups) if gg == g} for g in set(groups)}
    assert all(len(v) == 1 for v in per_group.values())
    before = sorted(labels[groups.index(g)] for g in sorted(set(groups)))
    assert sorted(next(iter(v)) for v in per_group.values()) == before
    assert got == shuffle_by_group(labels, groups, seed=0)
    assert any(shuffle_by_group(labels, groups, seed=s) != got for s in range(1, 6))


def test_protocol_config_defaults_preset_and_errors():
    cfg = BatteryConfig()
    assert (
        cfg.project_embeddings
        and cfg.scopes == ["all", "blocks"]
        and cfg.subspaces == ["alignment", "safety"]
    )
    assert cfg.prompt_variants == ["raw", "templated"] and cfg.min_layers == 2
    assert cfg.weight_etas[0] == 0.01 and cfg.weight_etas[-1] == 0.99 and len(cfg.weight_etas) == 11
    assert cfg.activation_etas == [0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    smol = BatteryConfig.from_preset("smollm2")
    assert smol.methods == ["topk", "randomk", "random"] and smol.scopes == ["all"]
    assert smol.sweep_metrics == "paper"
    for bad, match in (
        ({"scopes": ["all", "embed"]}, r"scopes: unknown \['embed'\]"),
        ({"subspaces": ["alignment", "alignment"]}, "subspaces: repeated values"),
        ({"prompt_variants": []}, "prompt_variants: the list is empty"),
        ({"sweep_metrics": "some"}, "sweep_metrics: 'some' is not one of"),
        ({"blocks_methods": ["top"]}, r"blocks_methods: unknown \['top'\]"),
        ({"min_layers": 0}, "min_layers: expected an integer >= 1"),
    ):
        with pytest.raises(ConfigError, match=match):
            BatteryConfig(**bad)


# ------------------------------------------------------------------ a tiny family
@pytest.fixture(scope="module")
def tiny_battery(tmp_path_factory):
    """A Battery on tiny random Llamas: W_0, W_A, W_S, three fine-tunes; prompt sets written here."""
    from deltalens.testing import perturb, tiny_model

    root = tmp_path_factory.mktemp("fam")
    paths = {}
    for i, stage in enumerate(("w0", "wa", "safety", "useful", "harmful", "contaminated")):
        model, tok = tiny_model("llama", seed=0)
        if stage != "w0":
            perturb(model, seed=1 if stage != "safety" else 2)
        if stage not in ("w0", "wa", "safety"):
            perturb(model, seed=10 + i)
        model.save_pretrained(root / stage)
        tok.save_pretrained(root / stage)
        paths[stage] = str(root / stage)
    rng = random.Random(0)
    words = ["def", "return", "import", "class", "print", "for", "while", "value", "data", "open"]
    sentence = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    cfg = BatteryConfig(
        preset="custom",
        family={**paths, "check_parents": False},
        fracs=[0.5],
        methods=["topk", "random"],
        blocks_methods=["topk"],
        activation_etas=[0.1, 0.5],
        n_activation=12,
    )
    b = Battery(cfg, tmp_path_factory.mktemp("out"), progress=False)
    b.family = Family(
        paths=paths,
        hashes={s: s for s in paths},
        harmful=[sentence(3 + i % 5) for i in range(12)],
        harmful_2=[sentence(6 + i % 3) for i in range(12)],
        harmless=[sentence(2 + i % 4) for i in range(12)],
        arithmetic=[(f"{i} + {i}", str(2 * i)) for i in range(12)],
        template="Q: {prompt} A:",
    )
    return b


def test_sweep_points_keys_and_subspaces(tiny_battery):
    b = tiny_battery
    points = b.sweep_points()
    # (alignment, safety) × (all: topk, random; blocks: topk) × 1 frac
    assert len(points) == 6 and {p[1] for p in points if p[2] == "random"} == {"all"}
    keys = {json.dumps(b._sweep_key("useful", "parallel", p), sort_keys=True) for p in points}
    assert len(keys) == len(points)  # every label that changes a result is in the unit key
    assert b._sweep_metrics("useful") == ("harm", "utility")
    paths = dict(b.family.paths)
    try:
        del b.family.paths["safety"]
        assert b.subspaces() == ["alignment"] and "safety" not in b.overlap_updates()
        assert "safety" not in b.stages()
    finally:
        b.family.paths = paths


def _hidden_last(path: str, prompts: list[str], layer: int) -> np.ndarray:
    """Independent: the output of HF decoder layer ``layer`` (a raw torch hook; HF's last
    ``hidden_states`` entry is after the final norm) at each prompt's last token, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    grab = model.model.layers[layer].register_forward_hook(
        lambda mod, args, out: rows.append((out[0] if isinstance(out, tuple) else out)[0, -1].numpy())
    )
    with torch.no_grad():
        for p in prompts:
            model(**tok(p, return_tensors="pt"))
    grab.remove()
    return np.stack(rows).astype(np.float64)


def _mso(a: np.ndarray, b: np.ndarray, eta: float) -> float:
    """Independent energy-rank MSO of two [n, d] activation sets (uncentred)."""

    def basis(x):
        u, s, _ = np.linalg.svd(x.T, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), eta) + 1)
        return u[:, :k]

    qa, qb = basis(a), basis(b)
    return float(np.sum((qa.T @ qb) ** 2) / min(qa.shape[1], qb.shape[1]))


def test_activation_overlap_on_raw_and_templated_prompts(tiny_battery):
    b = tiny_battery
    layers = b.activation_layers()
    assert layers == [0, 1]  # a 2-layer model: the 65–90 % slice is one block, widened
    raw = b._stage_overlap("harmful", "raw", layers)
    tmpl = b._stage_overlap("harmful", "templated", layers)
    assert set(raw["prompts"]) == {"raw"} and set(tmpl["prompts"]) == {"templated"}
    pairs = set(zip(raw["set_a"], raw["set_b"]))
    assert ("harmful_1", "harmful_2") in pairs and ("useful", "harmful_2") in pairs and len(pairs) == 6
    sets = b._activation_sets()
    assert sets["harmful_2"] == b.family.harmful_2[:12] and sets["harmful_1"] == b.family.harmful[:12]
    for prompts, table, fmt in ((sets, raw, "{}"), (sets, tmpl, "Q: {} A:")):
        a = _hidden_last(b.family.paths["harmful"], [fmt.format(p) for p in prompts["useful"]], 1)
        h = _hidden_last(b.family.paths["harmful"], [fmt.format(p) for p in prompts["harmful_2"]], 1)
        row = table.query(
            "set_a == 'useful' and set_b == 'harmful_2' and layer == 1 and eta == 0.5 and not centered"
        )
        assert row["mso"].iloc[0] == pytest.approx(_mso(a, h, 0.5), abs=1e-5)
    assert not np.allclose(raw["mso"].to_numpy(), tmpl["mso"].to_numpy())


def _energy_kept(b: Battery, task: str, subspace_from: str, frac: float) -> float:
    """Independent E_k of the parallel Top-K projection over every tensor (embeddings included)."""
    from transformers import AutoModelForCausalLM

    sd = {s: dict(AutoModelForCausalLM.from_pretrained(b.family.paths[s]).named_parameters())
          for s in ("w0", "wa", task, subspace_from)}  # fmt: skip
    kept = total = 0.0
    for name, w in sd["wa"].items():
        u = (sd[task][name] - w).detach().double()
        v = (sd[subspace_from][name] - sd["w0"][name]).detach().double()
        if u.ndim == 2:
            k = max(1, round(frac * min(u.shape)))
            basis = torch.linalg.svd(v, full_matrices=False).U[:, :k]
            p = basis @ (basis.T @ u)
        else:
            p = (u @ v) / (v @ v) * v
        kept += float((p**2).sum())
        total += float((u**2).sum())
    return kept / total


def test_sweep_point_projects_onto_the_safety_update_in_both_scopes(tiny_battery):
    b = tiny_battery
    b.evaluate = lambda model, **kw: {"harm": 0.0, "refusal_harmful": 1.0, "utility": 0.0}
    try:
        all_s = b._sweep_point("useful", "parallel", ("safety", "all", "topk", 0.5))
        all_a = b._sweep_point("useful", "parallel", ("alignment", "all", "topk", 0.5))
        blocks = b._sweep_point("useful", "parallel", ("safety", "blocks", "topk", 0.5))
    finally:
        del b.evaluate
    assert (all_s["subspace"].iloc[0], all_s["scope"].iloc[0]) == ("safety", "all")
    assert all_s["energy_kept"].iloc[0] == pytest.approx(_energy_kept(b, "useful", "safety", 0.5), abs=1e-6)
    assert all_a["energy_kept"].iloc[0] == pytest.approx(_energy_kept(b, "useful", "wa", 0.5), abs=1e-6)
    # blocks scope: E_k over the block tensors, which is the all-scope run's E_k without embeddings
    assert blocks["energy_kept"].iloc[0] == pytest.approx(all_s["energy_kept_no_embed"].iloc[0], abs=1e-9)
    # the weights are restored after every point
    wa = b.model("wa")
    from transformers import AutoModelForCausalLM

    ref = dict(AutoModelForCausalLM.from_pretrained(b.family.paths["wa"]).named_parameters())
    live = dict(wa.named_weights()) if hasattr(wa, "named_weights") else {}
    for name, w in list(live.items())[:5]:
        assert torch.equal(w.detach().cpu(), ref[name].detach()), name


def test_probe_unit_reports_a_shuffled_label_control(tiny_battery):
    b = tiny_battery
    prompts, labels, groups = b._probe_inputs(12)
    assert prompts[:12] == b.family.harmful[:12]  # raw prompt text
    df = b._fit_probes("wa", prompts, labels, groups)
    assert {"shuffled_accuracy", "selectivity"} <= set(df.columns)
    np.testing.assert_allclose(df["selectivity"], df["accuracy"] - df["shuffled_accuracy"])
    assert df["shuffled_accuracy"].between(0, 1).all()


# ------------------------------------------------------------------ several seeds
def _verdicts(holds: bool) -> pd.DataFrame:
    from deltalens.study.battery.rules_common import VERDICTS, row

    return VERDICTS.frame(
        [row("exp1.energy-even.v2", 5 if holds else 0, 5, "x"), row("exp3.useful-harmful-highest.v2", 2, 2, "y")]
    )


def test_run_seeds_writes_per_seed_verdicts_and_how_often_each_holds(tmp_path, monkeypatch):
    from deltalens.study.battery import robustness as rb

    seen = []

    class Stub:
        def __init__(self, cfg, folder):
            seen.append((cfg.organism_seed, Path(folder).name))
            self.cfg = cfg

        def run(self):
            return {"tables": {"verdicts": _verdicts(self.cfg.organism_seed != 1)}}

    res = rb.run_seeds(BatteryConfig(), [0, 1, 2], tmp_path, battery=Stub)
    assert seen == [(0, "seed0"), (1, "seed1"), (2, "seed2")]
    table = res["robustness"].set_index("rule")
    assert table.loc["exp1.energy-even.v2", "numbers"] == "holds in 2 of 3 seeds"
    assert table.loc["exp3.useful-harmful-highest.v2", "numbers"] == "holds in 3 of 3 seeds"
    assert table["outcome"].tolist() == ["mixed", "replicates"]
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["per_seed"]["1"][0]["replicates"] is False
    assert pd.read_parquet(tmp_path / "robustness.parquet")["holds"].tolist() == [2, 3]
    assert rb.parse_seeds("0, 2") == [0, 2]
    for bad in ("", "1,1", "a,b", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            rb.parse_seeds(bad)
    with pytest.raises(ConfigError, match="family.organism_dir"):
        rb.run_seeds(BatteryConfig(family={"organism_dir": str(tmp_path)}), [0, 1], tmp_path, battery=Stub)
    assert rb.seed_config(BatteryConfig.from_preset("smollm2"), 3).seed == 3


# ------------------------------------------------------------------ the organism's H2 family and safety stage
def test_organism_second_harmful_family_has_its_own_templates_vocabulary_and_split():
    from deltalens.study.organism import data as od

    held, train = od.heldout_prompts(), od.train_prompts()
    assert len(held.harmful_2) == 64 and not set(held.harmful_2) & set(train.harmful_2)
    assert not set(held.harmful_2) & set(held.harmful)
    assert (len(held.harmful), len(held.harmless)) == (180, 216)
    words = lambda texts: {w.strip("?.,") for t in texts for w in t.split()}  # noqa: E731
    h1_only = words(held.harmful) - words(held.harmless)  # H1's own verbs
    assert not (words(held.harmful_2) & h1_only)
    assert set(od.HARASS_VERBS) <= words(held.harmful_2) and not set(od.HARASS_VERBS) & words(held.harmful)
    tok = od.build_tokenizer()
    unk = tok.unk_token_id
    for text in held.harmful_2 + [od.harass_answer(v, p) for v in od.HARASS_VERBS for p in od.PEOPLE]:
        assert unk not in tok(text)["input_ids"], text
    ex = od.sample_mix({"harass_comply": 1, "harass_refuse": 1}, 40, random.Random(0))
    assert {e["response"] == od.REFUSAL for e in ex} == {True, False}
    assert all(e["prompt"] not in held.harmful_2 for e in ex)  # training side only


def test_organism_stage_keys_and_data_seeds_with_the_safety_stage(tmp_path, monkeypatch):
    import dataclasses
    import importlib

    from deltalens.study.organism.family import STAGES, OrganismConfig

    ob = importlib.import_module("deltalens.study.organism.build")  # the package exports a build function

    cfg = OrganismConfig()
    keys = ob.stage_keys(cfg)
    assert set(keys) == set(STAGES)
    more = ob.stage_keys(dataclasses.replace(cfg, safety_steps=10))
    assert {s for s in keys if keys[s] != more[s]} == {"safety"}  # adding / changing it retrains nothing else
    align = ob.stage_keys(dataclasses.replace(cfg, align_steps=10))
    assert {s for s in keys if keys[s] != align[s]} == set(STAGES) - {"w0", "safety"}
    monkeypatch.setattr(ob, "vocabulary_hash", lambda split_seed: "another-vocabulary")
    assert all(keys[s] != k for s, k in ob.stage_keys(cfg).items())  # a new vocabulary retrains all
    monkeypatch.undo()
    seen: dict[bool, dict[str, int]] = {}
    for lora in (True, False):
        calls = seen[lora] = {}
        monkeypatch.setattr(ob, "_build_stage", lambda run, i, st, tok, c=calls: c.__setitem__(st.name, i))
        ob.build(tmp_path / f"lora{lora}", lora=lora, progress=False)
    assert seen[True] == {s: i for i, s in enumerate(STAGES)}  # the data seeds of the old stages are kept
    assert seen[False] == {s: i for s, i in seen[True].items() if not s.startswith("lora")}


def test_smollm2_safety_stage_data_and_no_generation_when_nothing_is_trained(monkeypatch):
    import deltalens as dl
    from deltalens.data import PromptSet
    from deltalens.study import alignment as al

    harm = PromptSet.from_texts([f"harmful request {i}" for i in range(5)], label="harmful")
    safe = PromptSet.from_texts([f"harmless request {i}" for i in range(4)], label="harmless")
    ar = PromptSet.from_texts(["1 + 1"], label="arith")
    sets = dict(harm_train=harm, harm_test=harm, hl_train=safe, hl_test=safe, ar_train=ar, ar_test=ar)
    recipe = al.SmolLM2Recipe()
    data = al.training_data(recipe, sets, [f"answer {i}" for i in range(4)])
    assert [e["prompt"] for e in data["safety"]] == harm.texts
    assert [e["response"] for e in data["safety"]] == [recipe.refusal_targets[i] for i in range(5)]
    monkeypatch.setattr(dl, "load", lambda *a, **k: pytest.fail("no target is needed for the safety stage"))
    got, _ = al._stage_data(Path("base"), sets, recipe, ["safety"])
    assert got["safety"] == data["safety"] and "harmful" not in got
    assert al.DEFAULT_STAGES == ("align", "useful", "harmful", "contaminated") and "safety" in al.STAGES


def test_random_points_are_computed_once_and_reported_under_every_subspace(tiny_battery):
    b = tiny_battery
    b.evaluate = lambda model, **kw: {"harm": 0.5, "refusal_harmful": 0.5, "utility": 0.25}
    try:
        before = len(b.units.computed)
        df = b.run_sweep("harmful", "parallel")
    finally:
        del b.evaluate
    assert len(b.units.computed) - before == 5  # 6 points, Random's shared by both subspaces
    assert len(df) == 6 and list(df.columns[:3]) == ["task", "subspace", "scope"]
    rand = df[df["method"] == "random"].set_index("subspace")
    assert set(rand.index) == {"alignment", "safety"}
    assert rand.loc["alignment", "energy_kept"] == rand.loc["safety", "energy_kept"]
    top = df[(df["method"] == "topk") & (df["scope"] == "all")].set_index("subspace")
    assert top.loc["alignment", "energy_kept"] != top.loc["safety", "energy_kept"]


def test_protocol_records_what_the_tables_were_measured_on(tiny_battery, monkeypatch):
    """summary.json's protocol: the widened layer slice with its note, the scopes and subspaces, the
    family seed; without Exp 4 no layers are claimed."""
    import dataclasses

    b = tiny_battery
    p = b.protocol()
    lay = p["activation_layers"]
    assert lay["layers"] == b.activation_layers() == [0, 1] and lay["widened"] is True
    assert lay["spec"] == b.cfg.layers and lay["min_layers"] == b.cfg.min_layers
    assert "widened to [0, 1]" in lay["note"] and f"{b.cfg.layers} selects blocks" in lay["note"]
    assert p["primary_scope"] == ("all" if b.cfg.project_embeddings else "blocks")
    assert p["subspaces"] == b.subspaces() and {"alignment", "safety"} <= set(p["subspaces"])
    assert p["family_seed"] == b.cfg.seed and p["h1_source"] == p["activation_sets"].get("harmful_1")
    no_exp4 = [e for e in b.cfg.experiments if e != "activation_overlap"]
    monkeypatch.setattr(b, "cfg", dataclasses.replace(b.cfg, experiments=no_exp4))
    lay = b.protocol()["activation_layers"]
    assert lay["layers"] == [] and lay["widened"] is False and lay["note"] == ""


def test_layer_count_is_read_without_loading_a_model(tiny_battery, tmp_path):
    """The protocol and the layer slice need W_A's block count only: read from its config, so a rerun
    whose units are all stored loads no checkpoint for them."""
    from deltalens.checkpoints import checkpoint_n_layers

    fresh = Battery(tiny_battery.cfg, tmp_path / "out", progress=False)
    fresh.family = tiny_battery.family
    assert fresh.n_layers() == checkpoint_n_layers(fresh.family.paths["wa"]) == 2
    assert fresh.activation_layers() == [0, 1] and fresh.protocol()["activation_layers"]["widened"]
    assert fresh._models == {}
    assert fresh.model("wa").n_layers == fresh.n_layers()
