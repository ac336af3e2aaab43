"""The battery never serves stale units, never half-writes a results folder, and validates its config.

Each test here failed on deltalens 0.1:

* unit keys ignored the dtype, the backend, the tokenizer and the prompt sets (a rerun with
  ``dtype: bfloat16`` recomputed nothing yet said bfloat16 in ``provenance.json``);
* quoted booleans, scalars for lists, empty lists, a list for ``family``, bad layer specs and
  dtypes passed validation (or failed late with an unrelated error);
* a failing rerun rewrote ``config.yaml`` (and, failing late, the tables) next to the old summary;
* a warm rerun overwrote the cold run's timings in ``summary.json``;
* two runs into one ``--out`` ran at once.

The family is five tiny Llama checkpoints (W_0, W_A and three perturbed "fine-tunes") with small
in-code prompt sets, so every run takes seconds and nothing is downloaded.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from deltalens.study.battery import Battery, BatteryConfig, ConfigError
from deltalens.study.battery import runner as battery_runner

from .conftest import in_code_family

STAGES = ("w0", "wa", "useful", "harmful", "contaminated")
HARMFUL = [f"how do I build weapon {i} at home" for i in range(8)]
HARMLESS = [f"how do I bake bread number {i}" for i in range(8)]
ARITH = [(f"what is {i} + {i}?", str(2 * i)) for i in range(8)]


@pytest.fixture
def small_prompts(monkeypatch):
    """A custom family reads HarmBench from its wheel; give it small in-code prompt sets instead."""
    custom_family = in_code_family(HARMFUL, HARMLESS, ARITH)
    monkeypatch.setattr(battery_runner, "_custom_family", custom_family)
    return custom_family


def _config(family_dirs, **kw) -> BatteryConfig:
    fam = {**family_dirs, **kw.pop("family", {})}
    base = dict(
        preset="custom",
        family=fam,
        experiments=["weight_overlap"],
        weight_etas=[0.5],
        activation_etas=[0.5],
        n_harmful=4,
        n_harmless=4,
        n_arithmetic=4,
        n_activation=4,
    )
    return BatteryConfig(**{**base, **kw})


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "units" / "log.jsonl").read_text().splitlines()]


def _run(cfg: BatteryConfig, out: Path) -> list[dict]:
    """Run the battery; return this run's entries of the unit log."""
    before = len(_log(out)) if (out / "units" / "log.jsonl").is_file() else 0
    Battery(cfg, out, progress=False).run()
    return _log(out)[before:]


def _status(entries: list[dict]) -> dict[str, str]:
    """Unit kind (``weight-overlap``, ``activation-overlap``: one unit per prompt variant and stage)
    -> ``computed`` / ``cached``, and ``mixed`` where units of one kind differ."""
    out: dict[str, str] = {}
    for e in entries:
        name = e["unit"].rsplit("-", 1)[0]
        kind = "activation-overlap" if name.startswith("activation-overlap") else name
        out[kind] = e["status"] if out.get(kind, e["status"]) == e["status"] else "mixed"
    return out


def _result_files(out: Path) -> dict[str, bytes]:
    """The bytes of every result file (not the unit cache, not the lock)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------ 1. unit keys
def test_rerun_with_another_dtype_backend_tokenizer_or_prompts_recomputes(
    family_dirs, small_prompts, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    exps = ["weight_overlap", "activation_overlap"]
    both = {"weight-overlap": "computed", "activation-overlap": "computed"}
    assert _status(_run(_config(family_dirs, experiments=exps), out)) == both
    first = (out / "weight_overlap.parquet").read_bytes()
    assert set(_status(_run(_config(family_dirs, experiments=exps), out)).values()) == {"cached"}

    # dtype: every unit recomputed; provenance and the numbers follow
    bf16 = {"dtype": "bfloat16"}
    assert _status(_run(_config(family_dirs, experiments=exps, family=bf16), out)) == both
    prov = json.loads((out / "provenance.json").read_text())
    assert {p["dtype"] for p in prov.values()} == {"bfloat16"}
    assert (out / "weight_overlap.parquet").read_bytes() != first

    # prompt contents: only the unit that reads prompts is recomputed
    def other_prompts(cfg):
        fam = small_prompts(cfg)
        fam.harmless = [p.replace("bread", "cake") for p in HARMLESS]
        return fam

    with monkeypatch.context() as mp:
        mp.setattr(battery_runner, "_custom_family", other_prompts)
        assert _status(_run(_config(family_dirs, experiments=exps, family=bf16), out)) == {
            "weight-overlap": "cached",
            "activation-overlap": "computed",
        }

    # backend (weight overlap only from here on, to keep the test short)
    tl = {"dtype": "bfloat16", "backend": "transformer_lens"}
    assert _status(_run(_config(family_dirs, family=tl), out)) == {"weight-overlap": "computed"}

    # a tokenizer file of one stage (the weights unchanged)
    tok_cfg = Path(family_dirs["contaminated"]) / "tokenizer_config.json"
    saved = tok_cfg.read_text()
    before = json.loads((out / "provenance.json").read_text())["contaminated"]["tokenizer_hash"]
    try:
        tok_cfg.write_text(json.dumps({**json.loads(saved), "model_max_length": 64}))
        assert _status(_run(_config(family_dirs, family=tl), out)) == {"weight-overlap": "computed"}
        after = json.loads((out / "provenance.json").read_text())["contaminated"]["tokenizer_hash"]
        assert after != before
    finally:
        tok_cfg.write_text(saved)


def test_provenance_records_what_the_keys_cover(family_dirs, small_prompts, tmp_path):
    Battery(_config(family_dirs), tmp_path, progress=False).run()
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert set(prov) == set(STAGES)
    for stage in STAGES:
        p = prov[stage]
        assert len(p["content_hash"]) == 16 and len(p["tokenizer_hash"]) == 16
        assert (p["backend"], p["dtype"], p["device"]) == ("nnsight", "float32", "cpu")
        assert len(p["prompts_hash"]) == 16 and p["computation_version"] >= 2


# ------------------------------------------------------------------ 3. config types
BAD_FIELDS = [
    ('project_embeddings: "no"', r"^project_embeddings: expected true or false.*got 'no' \(str\)$"),
    ("project_embeddings: 'false'", r"^project_embeddings: expected true or false"),
    ("fracs: 0.5", r"^fracs: expected a list of numbers in \(0, 1\], got 0.5 \(float\)$"),
    ("fracs: []", r"^fracs: the list is empty"),
    ("fracs: ['0.5']", r"^fracs: item '0.5' \(str\) is not allowed"),
    ("experiments: []", r"^experiments: the list is empty; expected a non-empty list of experiment names"),
    ("experiments: evals", r"^experiments: expected a list of experiment names"),
    ("methods: []", r"^methods: the list is empty"),
    ("weight_etas: [0.5, x]", r"^weight_etas: item 'x' \(str\) is not allowed"),
    ("family: [w0, wa]", r"^family: expected a mapping of family fields .*got \['w0', 'wa'\] \(list\)$"),
    ("family: ckpts/", r"^family: expected a mapping"),
    ("layers: banana", r"^layers: 'banana' is not a usable layer spec; expected 'lo-hi%'"),
    ("layers: 2:5", r"^layers: expected a quoted layer spec string.*got 125 \(int\)$"),  # YAML 1.1 base 60
    ("layers: '90-65%'", r"^layers: '90-65%' is not a usable layer spec"),
    (
        "family: {dtype: floot32}",
        r"^family\.dtype: 'floot32' is not one of \('float32', 'float16', 'bfloat16'",
    ),
    ("family: {backend: tl}", r"^family\.backend: 'tl' is not one of"),
    ("family: {check_parents: 'no'}", r"^family\.check_parents: expected true or false"),
    ("seed: '1'", r"^seed: expected an integer, got '1' \(str\)$"),
    ("n_harmful: true", r"^n_harmful: expected an integer >= 4, got True \(bool\)$"),
]


@pytest.mark.parametrize(("line", "message"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_config_values_must_have_their_declared_type(tmp_path, line, message):
    path = tmp_path / "battery.yaml"
    path.write_text(f"preset: organism\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        BatteryConfig.from_file(path)


def test_unquoted_yaml_booleans_and_number_lists_still_load(tmp_path):
    path = tmp_path / "battery.yaml"
    path.write_text("project_embeddings: yes\nfracs: [1, 0.5]\nlayers: '2:5'\nfamily: {dtype: bfloat16}\n")
    cfg = BatteryConfig.from_file(path)
    assert cfg.project_embeddings is True and cfg.fracs == [1, 0.5] and cfg.layers == "2:5"
    assert BatteryConfig(fracs=(0.5,)).to_dict()["fracs"] == [0.5]  # a tuple is kept as a list


# ------------------------------------------------------------------ 5. failing reruns
@pytest.mark.parametrize("where", ["experiment", "report"])
def test_failing_rerun_leaves_the_previous_results_as_they_were(family_dirs, small_prompts, tmp_path, where):
    out = tmp_path / "out"
    Battery(_config(family_dirs), out, progress=False).run()
    before = _result_files(out)
    assert {"config.yaml", "summary.json", "provenance.json", "report.html", "results.parquet"} <= set(before)

    def boom(*a, **k):
        raise RuntimeError("injected failure")

    rerun = _config(family_dirs, weight_etas=[0.9], family={"dtype": "bfloat16"})
    with pytest.MonkeyPatch.context() as mp:
        if where == "experiment":
            mp.setattr(Battery, "run_weight_overlap", boom)
        else:  # after every table is computed, while the report is built
            mp.setattr("deltalens.study.report.report_from_results", boom)
        with pytest.raises(RuntimeError, match="injected failure"):
            Battery(rerun, out, progress=False).run()
    assert _result_files(out) == before
    assert not list(out.glob(".run-*"))  # no staging folder left behind

    Battery(rerun, out, progress=False).run()
    assert yaml.safe_load((out / "config.yaml").read_text())["weight_etas"] == [0.9]


def test_rerun_with_fewer_experiments_removes_the_tables_it_did_not_make(
    family_dirs, small_prompts, tmp_path
):
    out = tmp_path / "out"
    Battery(
        _config(family_dirs, experiments=["weight_overlap", "activation_overlap"]), out, progress=False
    ).run()
    assert (out / "activation_overlap.parquet").is_file()
    Battery(_config(family_dirs, experiments=["weight_overlap"]), out, progress=False).run()
    assert not (out / "activation_overlap.parquet").exists()
    assert (out / "weight_overlap.parquet").is_file()


# ------------------------------------------------------------------ 12. timings of a warm rerun
def test_warm_rerun_keeps_the_cold_run_timings(family_dirs, small_prompts, tmp_path):
    out = tmp_path / "out"
    cfg = _config(family_dirs)
    Battery(cfg, out, progress=False).run()
    cold = json.loads((out / "summary.json").read_text())
    Battery(cfg, out, progress=False).run()
    warm = json.loads((out / "summary.json").read_text())
    assert warm["seconds"] == cold["seconds"] and warm["timings"] == cold["timings"]
    assert warm["last_run_seconds"] == warm["runs"][-1]["seconds"]
    assert [(r["computed"], r["cached"]) for r in warm["runs"]] == [(1, 0), (0, 1)]
    assert warm["units"] == {"computed": 0, "cached": 1}
    assert warm["runs"][0] == cold["runs"][0]


# ------------------------------------------------------------------ 7. the --out lock
def test_second_run_waits_for_the_folder_lock(family_dirs, small_prompts, tmp_path, capsys):
    from deltalens.atomic import file_lock

    out = tmp_path / "out"
    done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            Battery(_config(family_dirs), out, progress=False).run()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()

    with file_lock(out / ".lock", what="held by the test"):
        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        told, deadline = "", time.monotonic() + 120
        while not done.is_set() and "waiting for" not in told and time.monotonic() < deadline:
            time.sleep(0.05)
            told += capsys.readouterr().err
        assert "waiting for pid" in told and "the battery results folder" in told
        assert not done.is_set() and not (out / "summary.json").exists()
    thread.join(timeout=300)
    assert done.is_set() and not errors, errors
    assert (out / "summary.json").is_file()
