"""deltalens.threads: the thread count and wait policy deltalens runs with, and the --threads option."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from deltalens import threads


def _fresh(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (torch not yet imported) without thread variables; its JSON."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = (
    "import json, os, sys; from deltalens import threads; n = threads.configure({arg}); "
    "loaded = 'torch' in sys.modules; import torch; "
    "print(json.dumps(dict(n=n, loaded=loaded, torch=torch.get_num_threads(), "
    "wait=os.environ.get('OMP_WAIT_POLICY'))))"
)


def test_resolve_explicit_env_and_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.resolve() == threads.DEFAULT == 1
    assert threads.resolve(3) == 3
    assert threads.resolve("2") == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # nested OpenMP list: the outer level counts
    assert threads.resolve() == 4
    assert threads.resolve(1) == 1  # an explicit count wins over the environment


def test_auto_follows_the_load(monkeypatch):
    monkeypatch.setattr(threads, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    assert threads.resolve("auto") == 8  # quiet: one thread per core
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 0.0, 0.0))
    assert threads.resolve("AUTO") == 1  # busy (load 0.75 per core): one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "auto")
    assert threads.resolve() == 1


@pytest.mark.parametrize("bad", [0, -2, "x", 1.5, True, "0"])
def test_bad_thread_counts_are_one_clear_error(bad):
    with pytest.raises(ValueError, match=r"threads=.*positive integer or 'auto'"):
        threads.resolve(bad)


def test_bad_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='many'"):
        threads.resolve()


def test_settings_before_torch_reads_the_environment_as_resolve_does(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # torch not loaded: settings() reads the env
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # nested OpenMP list: the outer level counts
    assert threads.settings()["threads"] == threads.resolve() == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.settings()["threads"] is None


def test_configure_before_torch_sets_passive_waiting_and_one_thread():
    got = _fresh(PROBE.format(arg=""))
    assert got == {"n": 1, "loaded": False, "torch": 1, "wait": "PASSIVE"}
    assert _fresh(PROBE.format(arg=""), OMP_NUM_THREADS="2")["torch"] == 2
    # a wait policy the user chose is kept
    assert _fresh(PROBE.format(arg=""), OMP_WAIT_POLICY="ACTIVE")["wait"] == "ACTIVE"


def test_import_deltalens_threads_does_not_import_torch():
    got = _fresh("import json, sys; import deltalens.threads; print(json.dumps('torch' in sys.modules))")
    assert got is False


def test_use_restores_a_loaded_torch(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    old = torch.get_num_threads()
    target = 1 if old != 1 else 2
    with threads.use(target) as n:
        assert n == target and torch.get_num_threads() == target
        assert threads.settings()["threads"] == target
        assert os.environ["OMP_NUM_THREADS"] == str(target)
    assert torch.get_num_threads() == old
    assert "OMP_NUM_THREADS" not in os.environ
    with threads.limited(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == old


def test_cli_rejects_a_bad_threads_option_before_any_work(capsys, tmp_path):
    from deltalens.cli import main

    out = tmp_path / "results"
    assert main(["run", "--threads", "lots", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--threads='lots'" in err and "positive integer or 'auto'" in err
    assert not out.exists()


def test_cpu_count_is_the_affinity_else_the_machine(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert threads.cpu_count() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
        assert threads.cpu_count() == 1

    def no_affinity(pid):
        raise OSError("not here")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert threads.cpu_count() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads.cpu_count() == 1
