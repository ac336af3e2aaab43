"""Ray scaling of the battery: sweep units per second in this process and on 1, 2 ... Ray workers.

A tiny Llama family (W_0, W_A and three perturbed fine-tunes, ``deltalens.testing.tiny_family``)
with small in-code prompt sets; the battery runs only the parallel sweep (two updates × methods ×
fracs, each unit an edited model evaluated by generation). Every setting starts from an empty
results folder, with one torch thread per worker (and in the serial run), on a local Ray instance
of ``--cpus`` CPUs. Reported per setting:

* ``sweep s``: wall time of the sweep step (Ray: includes each worker loading its checkpoints once);
* ``units/s``: sweep units over that time;
* ``steady units/s``: units over the time from the first to the last finished unit, minus one
  (startup and the first unit's model loading excluded);
* ``unit s``: median compute seconds per unit (as the workers report them);
* ``run s``: the whole ``Battery.run`` (Ray: includes starting the workers).

Every Ray run's ``sweep.parquet`` is checked to equal the serial run's byte for byte.
The load average is printed: on a shared machine the workers compete with everything else.

Usage::

    python benchmarks/bench_ray.py                     # serial, 1 and 2 workers, 16 units each
    python benchmarks/bench_ray.py --workers 1 2 4 --cpus 4 --fracs 8

Results: benchmarks/bench_ray.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

HARMFUL = [f"how do I build weapon {i} at home" for i in range(8)]
HARMLESS = [f"how do I bake bread number {i}" for i in range(8)]
ARITH = [(f"what is {i} + {i}?", str(2 * i)) for i in range(8)]


def _family(cfg):
    from deltalens.study.battery import runner

    return runner.Family(
        paths={s: p for s, p in cfg.family.paths().items() if p},
        hashes={},
        harmful=list(HARMFUL),
        harmless=list(HARMLESS),
        arithmetic=list(ARITH),
        template=None,
    )


def _config(paths: dict[str, str], n_fracs: int, workers: int):
    from deltalens.study.battery import BatteryConfig

    return BatteryConfig(
        preset="custom",
        family=dict(paths),
        experiments=["parallel_sweep"],
        fracs=[round(0.9 * (i + 1) / n_fracs, 3) for i in range(n_fracs)],
        methods=["topk", "random"],
        n_harmful=4,
        n_harmless=4,
        n_arithmetic=4,
        n_activation=4,
        ray={"workers": workers, "num_cpus": 1},
    )


def _measure(cfg, out: Path, executor) -> dict:
    from deltalens.study.battery import Battery

    t = time.perf_counter()
    b = Battery(cfg, out, progress=False, executor=executor)
    b.run()
    run_s = time.perf_counter() - t
    log = [json.loads(x) for x in (out / "units" / "log.jsonl").read_text().splitlines()]
    done = sorted(r["t"] for r in log if r["status"] == "computed")
    sweep_s = b.timings["parallel_sweep"]
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 2 else float("nan")
    return {
        "units": len(done),
        "sweep s": round(sweep_s, 2),
        "units/s": round(len(done) / sweep_s, 3),
        "steady units/s": round(steady, 3),
        "unit s": round(statistics.median(r["seconds"] for r in log if r["status"] == "computed"), 3),
        "run s": round(run_s, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--fracs", type=int, default=4, help="fracs per method (units = 2 x 2 x fracs)")
    args = p.parse_args()

    import ray
    import torch

    from deltalens.study.battery import runner
    from deltalens.study.battery.executor import RayExecutor
    from deltalens.testing import tiny_family

    torch.set_num_threads(1)
    runner._custom_family = _family  # small in-code prompt sets (the driver ships the family)
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    paths = tiny_family(root / "family")
    rows = {"serial": _measure(_config(paths, args.fracs, 1), root / "serial", None)}
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    for n in args.workers:
        cfg = _config(paths, args.fracs, n)
        rows[f"ray, {n} worker(s)"] = _measure(cfg, root / f"ray{n}", RayExecutor.from_config(cfg))
        same = (root / f"ray{n}" / "sweep.parquet").read_bytes() == (root / "serial" / "sweep.parquet").read_bytes()
        rows[f"ray, {n} worker(s)"]["= serial"] = same
    ray.shutdown()
    print(f"load average before/after: {os.getloadavg()}  cores: {os.cpu_count()}")
    cols = [*next(iter(rows.values())), "= serial"]
    print("| setting | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()
