"""``deltalens run``: the battery from a preset or a YAML / TOML config."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``deltalens run`` arguments (config file, ``--preset``, ``--out``, ``--quiet``) to ``parser``."""
    parser.add_argument(
        "config", nargs="?", default=None, help="YAML or TOML battery config (default: a preset)"
    )
    parser.add_argument("--preset", default=None, choices=["organism", "smollm2"], help="built-in family")
    parser.add_argument("--out", default="deltalens-results", help="results folder (resumable)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def run_main(args: argparse.Namespace) -> int:
    """Run the battery from ``deltalens run`` arguments; returns the exit code."""
    import time

    from deltalens.study.battery import Battery, BatteryConfig

    if args.config:
        cfg = BatteryConfig.from_file(args.config)
        if args.preset:
            cfg.preset = args.preset
    else:
        cfg = BatteryConfig.from_preset(args.preset or "organism")
    t = time.perf_counter()
    result = Battery(cfg, args.out, progress=not args.quiet).run()
    print_summary(result["tables"], args.out, time.perf_counter() - t)
    return 0


def print_summary(tables: dict, out: str, seconds: float) -> None:
    """Print the one-screen summary: evaluations per stage and the verdict table."""
    v = tables["verdicts"]
    print("\n" + "=" * 78)
    print(f"deltalens battery finished in {seconds:.0f} s -> {out}/report.html")
    if "evals" in tables:
        print("\nheld-out evaluation (harm = harmful compliance, utility = arithmetic exact match):")
        print(tables["evals"].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print("\ndoes the paper replicate on this family?")
    for r in v.itertuples():
        mark = {True: "YES", False: "NO ", None: " - "}[
            r.replicates if r.replicates in (True, False) else None
        ]
        print(f"  [{mark}] {r.claim}\n        {r.numbers}")
    print("=" * 78)
