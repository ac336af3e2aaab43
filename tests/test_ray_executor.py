"""The battery on Ray workers: the same bytes as a serial run, nothing lost when a worker or the driver dies.

A local Ray instance (2 CPUs, no dashboard, nothing over the network) runs a small battery over a
tiny Llama family (W_0, W_A and three perturbed "fine-tunes") with in-code prompt sets. The serial
run in this process is the reference; every comparison is of the parquet bytes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from deltalens.study.battery import Battery, BatteryConfig, ConfigError
from deltalens.study.battery import runner as battery_runner
from deltalens.study.battery.executor import ExecutorError, RayExecutor, make_executor

from .conftest import in_code_family

HARMFUL = [f"how do I build weapon {i} at home" for i in range(8)]
HARMLESS = [f"how do I bake bread number {i}" for i in range(8)]
ARITH = [(f"what is {i} + {i}?", str(2 * i)) for i in range(8)]
TABLES = ("evals", "sweep")


# ------------------------------------------------------------------ no ray needed
def test_ray_config_fields_are_validated():
    with pytest.raises(ConfigError, match=r"ray\.workers: expected null or an integer >= 1, got 0"):
        BatteryConfig(ray={"workers": 0})
    with pytest.raises(ConfigError, match=r"ray\.num_cpus: expected a number > 0"):
        BatteryConfig(ray={"num_cpus": 0})
    with pytest.raises(ConfigError, match=r"ray\.num_gpus: expected a number >= 0 .*'one'"):
        BatteryConfig(ray={"num_gpus": "one"})
    with pytest.raises(ConfigError, match=r"ray\.gpus.*did you mean 'num_gpus'"):
        BatteryConfig.from_dict({"ray": {"gpus": 1}})
    cfg = BatteryConfig(ray={"workers": 3, "num_cpus": 2, "num_gpus": 0.5})
    assert (cfg.ray.workers, cfg.ray.num_cpus, cfg.ray.num_gpus) == (3, 2, 0.5)
    assert BatteryConfig.from_dict(cfg.to_dict()).ray == cfg.ray  # saved config.yaml round-trips


def test_executor_choice_errors(monkeypatch, capsys):
    import sys

    from deltalens.cli import main

    with pytest.raises(ExecutorError, match=r"--address 'h:1': only with --executor ray"):
        make_executor("serial", "h:1")
    with pytest.raises(ExecutorError, match=r"--executor: 'dask' is not one of"):
        make_executor("dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(ExecutorError, match=r"install deltalens\[ray\]"):
        make_executor("ray")
    assert main(["run", "--executor", "ray", "--out", "unused-out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "install deltalens[ray]" in err[0]
    assert not Path("unused-out").exists()


# ------------------------------------------------------------------ on a local Ray instance
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'deltalens[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def small_prompts(monkeypatch):
    """The driver resolves the family (workers receive it), so patching it here reaches them."""
    monkeypatch.setattr(battery_runner, "_custom_family", in_code_family(HARMFUL, HARMLESS, ARITH))


@pytest.fixture(autouse=True)
def one_thread():
    """Serial and Ray runs use the same torch thread count (workers take the driver's)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _config(family_dirs) -> BatteryConfig:
    return BatteryConfig(
        preset="custom",
        family=dict(family_dirs),
        experiments=["evals", "parallel_sweep"],
        fracs=[0.5, 0.99],
        methods=["topk"],
        n_harmful=4,
        n_harmless=4,
        n_arithmetic=4,
        n_activation=4,
        ray={"workers": 2, "num_cpus": 1},
    )


def _log(out: Path) -> list[dict]:
    p = out / "units" / "log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


def _name(unit_file: str) -> str:
    """A unit's name from its file name (``<name>-<key>.<kind>``)."""
    return unit_file.rsplit("-", 1)[0]


def _units(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "units").iterdir() if p.suffix in (".json", ".parquet")}


@pytest.fixture(scope="module")
def serial_run(family_dirs, tmp_path_factory):
    import torch

    mp = pytest.MonkeyPatch()
    mp.setattr(battery_runner, "_custom_family", in_code_family(HARMFUL, HARMLESS, ARITH))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("serial")
    try:
        Battery(_config(family_dirs), out, progress=False).run()
    finally:
        torch.set_num_threads(old)
        mp.undo()
    return out


def _assert_same_as_serial(out: Path, serial: Path) -> None:
    for name in TABLES:
        assert (out / f"{name}.parquet").read_bytes() == (serial / f"{name}.parquet").read_bytes(), name
    assert _units(out) == _units(serial)  # every unit present, byte for byte
    assert not list((out / "units").glob(".*.tmp"))


def test_killed_worker_loses_nothing(ray_local, family_dirs, small_prompts, serial_run, tmp_path):
    out = tmp_path / "ray"
    ex = RayExecutor.from_config(_config(family_dirs))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Battery(_config(family_dirs), out, progress=False, executor=ex).run()
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline and not any(r["unit"].startswith("sweep-") for r in _log(out)):
        time.sleep(0.05)
    assert t.is_alive(), "the run finished before a worker could be killed"
    victim = ex.worker_pids[0]
    os.kill(victim, signal.SIGKILL)  # a worker crashes mid-run, its unit unfinished
    t.join(600)
    assert not errors, errors
    assert not t.is_alive()
    _assert_same_as_serial(out, serial_run)
    computed = [r["unit"] for r in _log(out) if r["status"] == "computed"]
    assert len(computed) == len(set(computed)) == len(_units(serial_run))  # each unit stored once
    after = [_name(u) for u in computed if u.startswith("sweep-")]
    assert victim not in {ex.pids[u] for u in after[-2:]}  # the last units ran on live workers
    assert set(ex.pids.values()) - set(ex.worker_pids), "the killed worker was not restarted"
    assert not ex.actors  # the run released its workers


def test_driver_crash_resumes_from_finished_units(
    ray_local, family_dirs, small_prompts, serial_run, tmp_path, monkeypatch
):
    from deltalens.study.battery.units import UnitStore

    out = tmp_path / "ray"
    put = UnitStore.put
    stored: list[str] = []

    def dying_put(self, name, *a, **kw):
        if len(stored) == 4:  # the driver dies with units still in flight on the workers
            raise KeyboardInterrupt("driver killed")
        stored.append(name)
        return put(self, name, *a, **kw)

    monkeypatch.setattr(UnitStore, "put", dying_put)
    with pytest.raises(KeyboardInterrupt):
        Battery(_config(family_dirs), out, progress=False, executor=RayExecutor(workers=2)).run()
    monkeypatch.setattr(UnitStore, "put", put)
    first = {r["unit"] for r in _log(out) if r["status"] == "computed"}
    assert len(first) == 4 and not (out / "summary.json").exists()

    ex = RayExecutor(workers=2)
    Battery(_config(family_dirs), out, progress=False, executor=ex).run()
    second = _log(out)[len(first) :]
    assert first <= {r["unit"] for r in second if r["status"] == "cached"}
    recomputed = {r["unit"] for r in second if r["status"] == "computed"}
    assert not recomputed & first and len(recomputed) == len(_units(serial_run)) - 4
    assert set(ex.pids) == {_name(u) for u in recomputed}  # all computed on workers
    _assert_same_as_serial(out, serial_run)
