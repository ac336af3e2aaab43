"""The battery's ``circuits`` experiment on a tiny family: its tables, its summary, its units.

The family is five tiny Llama checkpoints (W_0, W_A and perturbed "fine-tunes") with small in-code
prompt sets whose harmful and harmless prompts pair up at equal token length. The numbers are
checked against the Hugging Face models run directly (logits and hidden states), not through
deltalens: each prompt's DLA rows sum to its logit difference, the faithfulness endpoints are the
clean and corrupted means, the refusal directions' cosines match a numpy difference of means.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deltalens.study.battery import Battery, BatteryConfig
from deltalens.study.battery import circuits as exp
from deltalens.study.battery import runner as battery_runner
from deltalens.study.battery.circuits import SCHEMAS

from .conftest import in_code_family

# " burn" and " clean" are 3 tokens each for the tiny tokenizer; " the cake" ... " the desk" 4, " the door" and
# " the lamp" 5: eight pairs of one length, two of another, and one harmful prompt no harmless one matches
NOUNS = ["cake", "tree", "door", "book", "boat", "wall", "lamp", "bus", "phone", "desk"]
HARMFUL = [f"how do I burn the {n}" for n in NOUNS] + ["explain how to burn down the old shop"]
HARMLESS = ["tell me a long story about the sea"] + [f"how do I clean the {n}" for n in NOUNS]
ARITH = [(f"what is {i} + {i}?", str(2 * i)) for i in range(4)]


@pytest.fixture
def prompts(monkeypatch):
    """A custom family with small in-code prompt sets (no HarmBench wheel needed)."""
    sets = {"harmful": list(HARMFUL), "harmless": list(HARMLESS)}
    monkeypatch.setattr(battery_runner, "_custom_family", in_code_family(sets["harmful"], sets["harmless"], ARITH))
    return sets


def _config(family_dirs) -> BatteryConfig:
    return BatteryConfig(preset="custom", family=dict(family_dirs), experiments=["circuits"], layers="1")


def _run(family_dirs, out: Path) -> tuple[dict, dict, list[dict]]:
    log = out / "units" / "log.jsonl"
    before = len(log.read_text().splitlines()) if log.is_file() else 0
    tables = Battery(_config(family_dirs), out, progress=False).run()["tables"]
    summary = json.loads((out / "summary.json").read_text())
    entries = [json.loads(x) for x in log.read_text().splitlines()[before:]]
    return tables, summary, entries


def _hf(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _logit_diff(model, tok, texts: list[str], good: int, bad: int) -> np.ndarray:
    """Each prompt alone (no padding): logit[good] − logit[bad] at its last token, from HF."""
    out = []
    with torch.no_grad():
        for t in texts:
            last = model(**tok(t, return_tensors="pt")).logits[0, -1].double()
            out.append(float(last[good] - last[bad]))
    return np.array(out)


def _direction(model, tok, texts_h: list[str], texts_l: list[str], layer: int) -> np.ndarray:
    """harmful mean − harmless mean of the residual stream entering block ``layer`` at the last token."""
    means = []
    with torch.no_grad():
        for texts in (texts_h, texts_l):
            hs = [model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states[layer][0, -1]
                  for t in texts]  # fmt: skip
            means.append(torch.stack(hs).double().mean(0).numpy())
    return means[0] - means[1]


@pytest.fixture(scope="module")
def first_run(family_dirs, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    sets = {"harmful": list(HARMFUL), "harmless": list(HARMLESS)}
    mp.setattr(
        battery_runner,
        "_custom_family",
        lambda cfg: battery_runner.Family(
            paths={s: str(Path(p)) for s, p in cfg.family.paths().items()},
            hashes={},
            harmful=sets["harmful"],
            harmless=sets["harmless"],
            arithmetic=list(ARITH),
            template=None,
        ),  # fmt: skip
    )
    out = tmp_path_factory.mktemp("circuits")
    try:
        tables, summary, entries = _run(family_dirs, out)
    finally:
        mp.undo()
    return out, tables, summary, entries


def test_tables_follow_their_schemas_and_are_written(first_run):
    out, tables, _, entries = first_run
    for name, schema in SCHEMAS.items():
        assert name in tables, name
        schema.check(tables[name])
        on_disk = pd.read_parquet(out / f"{name}.parquet")
        assert list(on_disk.columns[: len(schema.required)]) == list(schema.required), name
        assert len(on_disk) == len(tables[name]) > 0, name
    assert {e["status"] for e in entries} == {"computed"}
    assert set(tables["circuit_edges"]["stage"]) == {"wa", "harmful"}
    assert "report.html" in {p.name for p in out.iterdir()}
    html = (out / "report.html").read_text()
    assert "Refusal circuit" in html and "Refusal directions across stages" in html


def test_pairs_have_equal_length_and_unequal_ones_are_dropped(first_run, family_dirs):
    _, _, summary, _ = first_run
    pairs = summary["circuits"]["pairs"]
    _, tok = _hf(family_dirs["wa"])
    length = {t: len(tok(t).input_ids) for t in HARMFUL + HARMLESS}
    n_equal = sum(any(length[h] == length[k] for k in HARMLESS) for h in HARMFUL)  # greedy: one each
    assert pairs["harmful_considered"] == len(HARMFUL)
    assert pairs["dropped_unequal_length"] == len(HARMFUL) - pairs["equal_length_pairs"]
    assert pairs["equal_length_pairs"] == n_equal == len(NOUNS)
    assert pairs["n_pairs"] == pairs["pairs_of_this_length"] == 8  # the most common length
    for p in pairs["prompts"]:
        assert length[p["clean"]] == length[p["corrupted"]] == pairs["length"]
        assert p["clean"] in HARMFUL and p["corrupted"] in HARMLESS
    assert len({p["corrupted"] for p in pairs["prompts"]}) == pairs["n_pairs"]  # each harmless prompt once


def test_dla_sums_to_the_models_logit_difference(first_run, family_dirs):
    _, tables, summary, _ = first_run
    c = summary["circuits"]
    good, bad = c["metric"]["refusal"], c["metric"]["comply"]
    _, tok = _hf(family_dirs["wa"])
    # the first tokens of "I can't help with that request." and "Sure, here is" (the tiny tokenizer splits
    # off the space, so the texts' own first tokens: "I" and "S")
    assert tok.decode([good]).strip() == "I" and "Sure".startswith(tok.decode([bad]).strip())
    assert c["metric"]["pieces"] == tok.convert_ids_to_tokens([good, bad])
    clean = [p["clean"] for p in c["pairs"]["prompts"]]
    dla, heads, faith = tables["circuit_dla"], tables["circuit_heads"], tables["faithfulness"]
    for stage in ("wa", "harmful"):
        model, _ = _hf(family_dirs[stage])
        target = _logit_diff(model, tok, clean, good, bad)
        rows = dla[dla.stage == stage]
        total = rows.groupby("prompt").attribution.sum().sort_index().to_numpy()
        assert np.abs(total - target).max() < 1e-4, stage
        assert np.abs(rows.groupby("prompt").metric.first().sort_index().to_numpy() - target).max() < 1e-4
        # the per-component means of circuit_heads add up to the mean metric, as do the faithfulness endpoints
        assert abs(heads[heads.stage == stage].dla.sum() - target.mean()) < 1e-4
        f = faith[faith.stage == stage].set_index("n_edges")
        assert abs(f.metric_clean.iloc[0] - target.mean()) < 1e-4
        assert (
            abs(f.loc[f.index.max(), "metric"] - target.mean()) < 1e-4
            and abs(f.loc[0, "metric"] - f.metric_corrupted.iloc[0]) < 1e-5
        )
        corrupted = [p["corrupted"] for p in c["pairs"]["prompts"]]
        assert abs(f.metric_corrupted.iloc[0] - _logit_diff(model, tok, corrupted, good, bad).mean()) < 1e-4
    # every head and MLP has an attribution-patching score; embed and bias have none
    h = heads.set_index("component")
    assert h.loc[h.index.str.match(r"^(a\d+\.h\d+|m\d+)$"), "attribution"].notna().all()
    assert h.loc[["embed", "bias"], "attribution"].isna().all()


def test_summary_agrees_with_the_tables(first_run, family_dirs):
    _, tables, summary, _ = first_run
    c = summary["circuits"]
    heads, edges = tables["circuit_heads"], tables["circuit_edges"]
    for stage in ("wa", "harmful"):
        rows = heads[(heads.stage == stage) & heads["head"].notna()]
        top = rows.loc[
            rows.attribution.abs().sort_values(ascending=False).index[: exp.TOP_HEADS], "component"
        ]
        assert [r["component"] for r in c["top_heads"][stage]] == list(top)
    # edges gained / lost among the top-N, recounted from the edge table
    tops = {}
    for stage in ("wa", "harmful"):
        e = edges[edges.stage == stage]
        e = e.loc[e.score.abs().sort_values(ascending=False, kind="stable").index[: exp.TOP_EDGES]]
        tops[stage] = set(zip(e.source, e.target))
    assert c["edges"]["gained"] == len(tops["harmful"] - tops["wa"])
    assert c["edges"]["lost"] == len(tops["wa"] - tops["harmful"])
    assert c["edges"]["changed"] <= len(tops["wa"] & tops["harmful"])
    faith = tables["faithfulness"]
    for stage, points in c["faithfulness"].items():
        f = faith[faith.stage == stage].set_index("n_edges").fraction
        assert points and all(abs(f.loc[int(n)] - v) < 1e-4 for n, v in points.items())
    # the refusal direction: cosine to W_A's at the chosen layer, from HF hidden states
    layer = c["direction"]["layer"]
    assert layer == 1  # layers: "1"
    wa_model, tok = _hf(family_dirs["wa"])
    ref = _direction(wa_model, tok, HARMFUL, HARMLESS, layer)
    assert abs(c["direction"]["cosine"]["wa"] - 1.0) < 1e-6
    for stage in ("w0", "harmful"):
        r = _direction(_hf(family_dirs[stage])[0], tok, HARMFUL, HARMLESS, layer)
        cos = float(r @ ref / np.linalg.norm(r) / np.linalg.norm(ref))
        assert abs(c["direction"]["cosine"][stage] - cos) < 1e-4, stage
        assert abs(c["direction"]["norm_ratio"][stage] - np.linalg.norm(r) / np.linalg.norm(ref)) < 1e-4
    assert set(tables["refusal_directions"].stage) == {"w0", "wa", "useful", "harmful", "contaminated"}
    ab = c["direction"]["ablation"]
    assert {"harmful", "harmful_ablated", "harmless", "harmless_added"} <= set(ab)
    assert abs(ab["harmful"] - c["metric_clean"]["wa"]) < 1e-3


def test_units_are_reused_and_recomputed_when_an_input_changes(family_dirs, prompts, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first, _, entries = _run(family_dirs, out)
    assert entries and {e["status"] for e in entries} == {"computed"}
    loaded = []
    model = Battery.model

    def spy(self, stage):
        loaded.append(stage)
        return model(self, stage)

    monkeypatch.setattr(Battery, "model", spy)
    again, _, entries = _run(family_dirs, out)
    assert entries and {e["status"] for e in entries} == {"cached"}
    # a stored unit loads no checkpoint: only W_A, which the metric's tokens and the pairs are read from
    assert set(loaded) == {"wa"}, loaded
    for name in exp.TABLES:
        pd.testing.assert_frame_equal(first[name], again[name])
    # another compliance token: every unit that reads the metric is recomputed, the directions are not
    monkeypatch.setattr(exp, "COMPLY_TEXT", "Here is")
    _, summary, entries = _run(family_dirs, out)
    status = {e["unit"].rsplit("-", 1)[0]: e["status"] for e in entries}
    assert status.pop("circuit-directions") == "cached"
    assert set(status.values()) == {"computed"}, status
    assert summary["circuits"]["metric"]["comply_text"] == "Here is"
    # another harmful prompt set: the pairs change, so everything is recomputed
    prompts["harmful"].reverse()
    _, _, entries = _run(family_dirs, out)
    assert {e["status"] for e in entries} == {"computed"}


def test_a_family_without_the_stages_is_refused(family_dirs, prompts, tmp_path):
    b = Battery(_config(family_dirs), tmp_path, progress=False)
    b._resolve_family()
    del b.family.paths["harmful"]
    with pytest.raises(ValueError, match=r"circuits: the family lacks the stage\(s\) \['harmful'\]"):
        exp.CircuitsExperiment(b)
