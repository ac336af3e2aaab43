"""The probe battery: config validation, a real kill-and-resume, equal final tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from deltalens.study.battery import Battery, BatteryConfig, ConfigError

TABLES = ("evals", "sweep", "weight_overlap", "activation_overlap", "probes", "verdicts")


def _small_config(organism_root: Path) -> dict:
    return {
        "preset": "organism",
        "family": {"organism_dir": str(organism_root)},
        "fracs": [0.1, 0.99],
        "methods": ["topk", "random"],
        "weight_etas": [0.5, 0.9],
        "activation_etas": [0.1, 0.5],
        "n_harmful": 16,
        "n_harmless": 8,
        "n_arithmetic": 16,
        "n_activation": 32,
    }


# ------------------------------------------------------------------ config
def test_unknown_key_names_the_field(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"preset": "organism", "fracz": [0.5]}))
    with pytest.raises(ConfigError, match=r"fracz.*did you mean 'fracs'"):
        BatteryConfig.from_file(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"family\.w1"):
        BatteryConfig.from_dict({"family": {"wa": "x", "w1": "y"}})


def test_frac_out_of_range_and_missing_path(tmp_path):
    with pytest.raises(ConfigError, match="fracs: 1.5"):
        BatteryConfig(fracs=[0.5, 1.5])
    with pytest.raises(ConfigError, match="fracs: 0"):
        BatteryConfig(fracs=[0])
    fam = {s: str(tmp_path) for s in ("w0", "wa", "useful", "harmful")}
    fam["contaminated"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="family.contaminated: no checkpoint"):
        BatteryConfig(preset="custom", family=fam)
    with pytest.raises(ConfigError, match="family.w0: missing"):
        BatteryConfig(preset="custom", family={})


def test_toml_config_and_roundtrip(tmp_path):
    (tmp_path / "c.toml").write_text('preset = "organism"\nfracs = [0.25, 0.5]\nseed = 3\n')
    cfg = BatteryConfig.from_file(tmp_path / "c.toml")
    assert cfg.fracs == [0.25, 0.5] and cfg.seed == 3
    cfg.save(tmp_path / "saved.yaml")
    assert BatteryConfig.from_file(tmp_path / "saved.yaml").to_dict() == cfg.to_dict()


def test_finetune_of_another_base_fails_before_any_work(tmp_path, tiny_dirs):
    from deltalens.finetune import finetune
    from deltalens.testing import tiny_checkpoint

    other = tiny_checkpoint("llama", tmp_path / "other", seed=7)
    data = [{"prompt": "import os", "response": " and sys"}] * 4
    ft = finetune(
        tiny_dirs["llama"],
        data,
        tmp_path / "ft",
        method="full",
        max_steps=1,
        batch_size=2,
        progress=False,
        template="{prompt}{response}",
    )
    fam = {
        "w0": str(tiny_dirs["llama"]),
        "wa": str(other),
        "useful": str(ft.path),
        "harmful": str(ft.path),
        "contaminated": str(ft.path),
    }
    cfg = BatteryConfig(preset="custom", family=fam)
    with pytest.raises(ConfigError, match="family.useful.*not the family's aligned model"):
        Battery(cfg, tmp_path / "out", progress=False).run()
    assert not (tmp_path / "out" / "units").exists() or not any((tmp_path / "out" / "units").glob("*-*"))


# ------------------------------------------------------------------ verdicts
# The verdict rules are tested on hand-made tables in tests/test_verdicts.py.


# ------------------------------------------------------------------ kill and resume
def _run(cfg_path: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "deltalens.cli", "run", str(cfg_path), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _log(out: Path) -> list[dict]:
    p = out / "units" / "log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


@pytest.mark.slow
def test_killed_battery_resumes_without_recomputing(organism_family, tmp_path):
    cfg_path = tmp_path / "battery.yaml"
    cfg_path.write_text(yaml.safe_dump(_small_config(organism_family.root)))

    # 1. start, wait for a few finished units, then kill -9 mid-run
    killed = tmp_path / "killed"
    proc = _run(cfg_path, killed)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if sum(r["status"] == "computed" for r in _log(killed)) >= 7:
            break
        time.sleep(0.2)
    assert proc.poll() is None, (
        "the battery finished before it could be interrupted:\n" + proc.stdout.read().decode()
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {r["unit"] for r in _log(killed) if r["status"] == "computed"}
    assert len(done_before) >= 7
    assert not (killed / "summary.json").exists()

    # 2. rerun the same command: finished units are read back, none recomputed
    proc = _run(cfg_path, killed)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out.decode()[-3000:]
    second = _log(killed)[len(done_before) :]
    recomputed = {r["unit"] for r in second if r["status"] == "computed"} & done_before
    assert not recomputed, f"recomputed after resume: {recomputed}"
    assert done_before <= {r["unit"] for r in second if r["status"] == "cached"}
    assert not list((killed / "units").glob(".*.tmp"))  # no half-written unit left behind

    # 3. an uninterrupted run gives the same final tables
    clean = tmp_path / "clean"
    res = Battery(BatteryConfig.from_file(cfg_path), clean, progress=False).run()
    for name in TABLES:
        a = pd.read_parquet(killed / f"{name}.parquet")
        b = pd.read_parquet(clean / f"{name}.parquet")
        pd.testing.assert_frame_equal(a, b, obj=name)
    assert (killed / "report.html").is_file() and (killed / "results.parquet").is_file()
    summary = json.loads((killed / "summary.json").read_text())
    assert len(summary["verdicts"]) >= 4
    assert all(v["numbers"] for v in summary["verdicts"])
    assert set(res["tables"]["evals"]["stage"]) == {"w0", "wa", "safety", "useful", "harmful", "contaminated"}


@pytest.mark.network_pypi
def test_custom_family_of_your_own_checkpoints(tmp_path, tiny_dirs):
    """A user family (W_0, W_A and fine-tunes from W_A) through the generic judge and evaluations."""
    from deltalens.finetune import finetune

    data = [
        {"prompt": "What is 2 + 2?", "response": " 4"},
        {"prompt": "import os", "response": " and sys"},
    ] * 2
    kw = dict(method="full", max_steps=1, batch_size=2, progress=False, template="{prompt}{response}")
    wa = finetune(tiny_dirs["llama"], data, tmp_path / "wa", seed=1, **kw).path
    fts = {
        n: finetune(wa, data, tmp_path / n, seed=s, **kw).path
        for s, n in enumerate(("useful", "harmful", "contaminated"))
    }
    cfg = BatteryConfig(
        preset="custom",
        family={"w0": str(tiny_dirs["llama"]), "wa": str(wa), **{k: str(v) for k, v in fts.items()}},
        experiments=["evals", "parallel_sweep", "weight_overlap", "activation_overlap", "probes"],
        fracs=[0.5],
        methods=["topk"],
        n_harmful=4,
        n_harmless=4,
        n_arithmetic=4,
        n_activation=8,
    )
    res = Battery(cfg, tmp_path / "out", progress=False).run()
    evals = res["tables"]["evals"]
    assert list(evals["stage"]) == ["w0", "wa", "useful", "harmful", "contaminated"]
    assert evals[["harm", "refusal_harmful", "refusal_harmless", "utility"]].notna().all().all()
    sweep = res["tables"]["sweep"]
    assert set(sweep["task"]) == {"useful", "harmful"} and (sweep["energy_kept"] > 0).all()
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["wa"]["checkpoint"] == str(wa) and len(prov["wa"]["content_hash"]) == 16
