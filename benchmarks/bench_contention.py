"""How much a busy machine slows one battery sweep unit, before and after deltalens's thread settings.

One sweep unit is what the battery's ``parallel_sweep`` step computes 30 times: the organism's
harmful update projected onto the alignment update's top-25 % subspace, written into W_A, and
evaluated by greedy generation (``Battery._sweep_point("harmful", "parallel", "topk", 0.25)``).
It runs in a fresh worker process (so each thread setting applies from the start, as the
OpenMP wait policy must), alone and next to C CPU-bound competitor processes (pure-Python busy
loops) that this script starts before the worker and always stops afterwards (each also stops
itself shortly after ``--worker-timeout``). The worker loads the family and runs one unit untimed (it
computes and caches the SVDs), then times ``--units`` units; its median is the measurement.

Settings (``--settings``, each a fresh worker):

* ``old``     torch's defaults, as on 0.1: one thread per core, GNU OpenMP's default wait policy
              (idle threads spin before they sleep);
* ``new``     what ``deltalens`` now does: ``deltalens.threads.configure()`` before torch is
              imported (one thread unless ``OMP_NUM_THREADS`` / ``--threads`` say otherwise,
              ``OMP_WAIT_POLICY=PASSIVE``);
* ``passive`` one thread per core, ``OMP_WAIT_POLICY=PASSIVE``;
* ``one``     one thread, the default wait policy.

Timing is round-robin: every round measures every (competitors, setting) pair, in an order rotated
from round to round; a pair's slowdown in a round is its unit time over the same setting's quiet
(0 competitors) unit time in that round. The table gives medians over the rounds, the goal
``1.5 × (1 + C / cores)`` and the load average seen during each measurement. Other processes on
the machine are not controlled: the load average says how quiet "quiet" was. Usage::

    python benchmarks/bench_contention.py                          # old vs new, 0/2/4 competitors, 3 rounds
    python benchmarks/bench_contention.py --settings old,new,passive,one --rounds 2
    python benchmarks/bench_contention.py --out benchmarks/bench_contention.json

Results: benchmarks/bench_contention.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

SETTINGS = ("old", "new", "passive", "one")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
BUSY = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


# ------------------------------------------------------------------------------------ worker
def _apply_setting(setting: str) -> None:
    """Set the thread environment of ``setting`` (before torch is imported)."""
    cores = str(len(os.sched_getaffinity(0)))
    if setting == "new":
        from deltalens import threads

        threads.configure()
    elif setting == "passive":
        os.environ.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=cores)
    elif setting == "one":
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _unit(b):
    """The timed unit: the harmful update's parallel sweep point (alignment subspace, TopK, 25 %)."""
    import inspect

    if "point" not in inspect.signature(b._sweep_point).parameters:  # before subspaces and scopes
        return partial(b._sweep_point, "harmful", "parallel", "topk", 0.25)
    points = b.sweep_points()
    point = next((p for p in points if p[0] == "alignment" and p[2] == "topk" and p[3] == 0.25), points[0])
    return partial(b._sweep_point, "harmful", "parallel", point)


def worker(args: argparse.Namespace) -> None:
    """Time ``args.units`` sweep units under ``args.worker``'s thread setting; print one JSON line."""
    _apply_setting(args.worker)
    import torch

    from deltalens.study import organism
    from deltalens.study.battery.config import BatteryConfig
    from deltalens.study.battery.runner import Battery
    from deltalens.study.organism.family import OrganismFamily

    # the built family as it is on disk: no rebuild check, no wait for another process's lock
    organism.build = lambda root, **kw: OrganismFamily.from_manifest(root)

    cfg = BatteryConfig(preset="organism")
    cfg.family.organism_dir = args.org
    b = Battery(cfg, tempfile.mkdtemp(prefix="bench_contention"), progress=False)
    b._resolve_family()
    unit = _unit(b)
    t0 = time.perf_counter()
    unit()  # loads the stages, computes and caches the SVDs
    setup = time.perf_counter() - t0
    times, cpu = [], []
    print(f"SETUP {setup}", flush=True)
    for _ in range(args.units):
        t, c = time.perf_counter(), time.process_time()
        unit()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        print(f"UNIT {times[-1]}", flush=True)
    out = {
        "unit_s": statistics.median(times),
        "unit_cpu_s": statistics.median(cpu),
        "times": times,
        "first_unit_s": setup,
        "threads": torch.get_num_threads(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------ driver
def _competitors(n: int, max_s: float) -> list[subprocess.Popen]:
    code = BUSY.format(s=max_s)
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure(setting: str, competitors: int, args: argparse.Namespace) -> dict:
    """One worker run of ``setting`` next to ``competitors`` busy processes (always stopped).

    A worker that runs past ``--worker-timeout`` is stopped; its unit time is then a lower bound:
    the time since its untimed first unit ended (or the whole timeout, if that never ended).
    """
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, __file__, "--worker", setting, "--units", str(args.units), "--org", args.org]
    procs = _competitors(competitors, args.worker_timeout + 30)
    try:
        time.sleep(0.5 if competitors else 0)  # let the competitors get going
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        try:
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.worker_timeout)
            stdout, timed_out = run.stdout, False
        except subprocess.TimeoutExpired as e:
            stdout, timed_out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), True
        elapsed = time.monotonic() - t0
        load1 = os.getloadavg()[0]
    finally:
        _stop(procs)
    return {**_parse_worker(stdout, timed_out, elapsed, setting), "load_before": load0, "load_after": load1}


def _parse_worker(stdout: str, timed_out: bool, elapsed: float, setting: str) -> dict:
    lines = stdout.splitlines()
    line = next((x for x in lines if x.startswith("RESULT ")), None)
    if line is not None:
        return {**json.loads(line[7:]), "timed_out": False}
    if not timed_out:
        raise RuntimeError(f"worker {setting} failed (run it alone: --worker {setting}):\n{stdout[-3000:]}")
    setup = next((float(x[6:]) for x in lines if x.startswith("SETUP ")), None)
    units = [float(x[5:]) for x in lines if x.startswith("UNIT ")]
    bound = (elapsed - setup - sum(units)) if setup is not None else elapsed
    return {"unit_s": max([bound, *units]), "unit_cpu_s": float("nan"), "times": units,
            "first_unit_s": setup, "threads": None, "wait_policy": None, "timed_out": True}


def _order(pairs: list, r: int) -> list:
    k = r % len(pairs)
    return pairs[k:] + pairs[:k]


def run_rounds(args: argparse.Namespace) -> list[dict]:
    """Every (competitors, setting) pair once per round, rotated; one row per measurement."""
    pairs = [(c, s) for c in args.competitors for s in args.settings]
    rows = []
    for r in range(args.rounds):
        for c, s in _order(pairs, r):
            m = measure(s, c, args)
            rows.append({"round": r, "competitors": c, "setting": s, **m})
            print(
                f"round {r}  {s:8s} competitors {c}:  unit {'>' if m['timed_out'] else ''}{m['unit_s']:.3f}s "
                f"(CPU {m['unit_cpu_s']:.3f}s)  "
                f"threads {m['threads']}  load {m['load_before']:.1f}->{m['load_after']:.1f}",
                flush=True,
            )
    return rows


def summarize(rows: list[dict], cores: int) -> list[dict]:
    """Per (setting, competitors): median unit time, median slowdown vs the same round's quiet run."""
    quiet = {(r["round"], r["setting"]): r["unit_s"] for r in rows if r["competitors"] == 0}
    out = []
    for s in dict.fromkeys(r["setting"] for r in rows):
        for c in sorted({r["competitors"] for r in rows}):
            sel = [r for r in rows if r["setting"] == s and r["competitors"] == c]
            ratios = [r["unit_s"] / quiet[(r["round"], s)] for r in sel if (r["round"], s) in quiet]
            out.append(
                {
                    "setting": s,
                    "competitors": c,
                    "unit_s": statistics.median(r["unit_s"] for r in sel),
                    "slowdown": statistics.median(ratios) if ratios else None,
                    "goal": 1.5 * (1 + c / cores),
                    "load": statistics.median((r["load_before"] + r["load_after"]) / 2 for r in sel),
                    "threads": next((r["threads"] for r in sel if r["threads"]), None),
                    "timed_out": sum(r["timed_out"] for r in sel),
                    "rounds": len(sel),
                }
            )
    return out


def print_table(summary: list[dict]) -> None:
    print("\n| setting | threads | competitors | unit (s) | slowdown | goal | load avg |")
    print("|---|---|---|---|---|---|---|")
    for x in summary:
        slow = "—" if x["slowdown"] is None else f"{x['slowdown']:.2f}×"
        if x["timed_out"]:
            slow = f"≥ {slow} ({x['timed_out']} timed out)"
        print(
            f"| {x['setting']} | {x['threads']} | {x['competitors']} | {x['unit_s']:.3f} | {slow} | "
            f"≤ {x['goal']:.2f}× | {x['load']:.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="old,new", help=f"comma-separated, from {SETTINGS}")
    ap.add_argument("--competitors", default="0,2,4", help="competitor counts (0 is the quiet baseline)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--units", type=int, default=3, help="timed units per worker (median)")
    ap.add_argument("--org", default="/tmp/org2", help="the organism family (built if missing)")
    ap.add_argument("--worker-timeout", type=float, default=300.0,
                    help="stop a worker after this many seconds (its unit time is then a lower bound)")
    ap.add_argument("--out", default=None, help="write rows and summary as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    args.settings = [s.strip() for s in args.settings.split(",")]
    bad = [s for s in args.settings if s not in SETTINGS]
    if bad:
        ap.error(f"--settings: unknown {bad}; expected names from {SETTINGS}")
    args.competitors = sorted({int(c) for c in args.competitors.split(",")} | {0})
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average at start {os.getloadavg()}", flush=True)
    rows = run_rounds(args)
    summary = summarize(rows, cores)
    print_table(summary)
    if args.out:
        Path(args.out).write_text(json.dumps({"cores": cores, "summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
