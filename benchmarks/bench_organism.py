"""Wall and CPU time of a cold ``deltalens organism build`` (target: under 5 minutes on 2 cores).

Usage::

    python benchmarks/bench_organism.py            # builds into a fresh temporary folder
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from deltalens.study import organism

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        t, c = time.perf_counter(), time.process_time()
        fam = organism.build(d, seed=0, progress=False)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(fam.summary())
    print(
        f"\ncold build: {wall:.1f} s wall, {cpu:.1f} s CPU (this process), load average {load0:.1f} at start"
    )
    print(f"target < 300 s on 2 cores: {'met' if wall < 300 else 'missed'}; checks passed: {fam.passed}")
    print("stage seconds:", {k: round(v, 1) for k, v in fam.stage_seconds.items()})


if __name__ == "__main__":
    main()
