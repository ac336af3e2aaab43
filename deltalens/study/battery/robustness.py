"""The battery over several family seeds: one full run per seed, and how often each verdict holds.

``deltalens run --seeds 0,1,2`` runs the battery once per seed into ``OUT/seed<N>/`` (each a complete
results folder, resumable like any other) and writes ``OUT/robustness.json`` (the seeds, every
seed's verdict rows, the robustness table and the run times) and ``OUT/robustness.parquet``.

The organism preset varies ``organism_seed`` (a separately trained family per seed); the other
presets vary ``seed`` (the SmolLM2 family's seed, and the random subspaces').

Example:
    >>> from deltalens.study.battery.robustness import run_seeds
    >>> res = run_seeds(BatteryConfig(preset="organism"), [0, 1, 2], "results/")   # doctest: +SKIP
    >>> res["robustness"][["claim", "numbers"]]                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deltalens.atomic import write_bytes
from deltalens.study.battery.config import BatteryConfig, ConfigError


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything else raises one ValueError naming ``--seeds``."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(
            f"--seeds: {text!r} is not allowed; expected distinct non-negative integers, e.g. 0,1,2"
        )
    return seeds


def seed_config(cfg: BatteryConfig, seed: int) -> BatteryConfig:
    """``cfg`` for one family seed (``organism_seed`` for the organism preset, else ``seed``)."""
    if cfg.preset == "organism":
        if cfg.family.organism_dir:
            raise ConfigError(
                f"family.organism_dir: {cfg.family.organism_dir!r} names one family, but several seeds need "
                "one family each; leave it unset (each seed is built in its own cache folder)"
            )
        return dataclasses.replace(cfg, organism_seed=seed)
    return dataclasses.replace(cfg, seed=seed)


def run_seeds(
    cfg: BatteryConfig,
    seeds: Sequence[int],
    out: str | Path,
    progress: bool = True,
    battery: Callable[[BatteryConfig, Path], Any] | None = None,
) -> dict[str, Any]:
    """Run the battery once per seed into ``out/seed<N>/`` and summarise the verdicts across seeds.

    Args:
        cfg: the battery config (its seed field is replaced per seed, see :func:`seed_config`).
        seeds: the family seeds.
        out: the folder that receives ``seed<N>/``, ``robustness.json`` and ``robustness.parquet``.
        progress: progress output of each run.
        battery: ``battery(cfg, folder) -> Battery`` (default: a serial :class:`Battery`).

    Returns:
        ``{"per_seed": seed -> result of Battery.run, "robustness": DataFrame, "seconds": seed -> s}``.

    Raises:
        ConfigError: ``family.organism_dir`` is set (one family cannot serve several seeds).
    """
    from deltalens.study.battery.runner import Battery, _parquet
    from deltalens.study.battery.verdict import robustness

    out = Path(out)
    configs = {s: seed_config(cfg, s) for s in seeds}  # every config checked before any work
    make = battery or (lambda c, d: Battery(c, d, progress=progress))
    results, seconds = {}, {}
    for s, c in configs.items():
        t = time.perf_counter()
        results[s] = make(c, out / f"seed{s}").run()
        seconds[s] = round(time.perf_counter() - t, 1)
    verdicts = {s: r["tables"]["verdicts"] for s, r in results.items()}
    table = robustness(verdicts)
    summary = {
        "preset": cfg.preset,
        "seeds": list(seeds),
        "seconds": seconds,
        "per_seed": {str(s): v.to_dict(orient="records") for s, v in verdicts.items()},
        "robustness": table.to_dict(orient="records"),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "robustness.parquet", _parquet(table))
    write_bytes(out / "robustness.json", json.dumps(summary, indent=1, default=str).encode())
    return {"per_seed": results, "robustness": table, "seconds": seconds}
