"""``deltalens run``: the battery from a preset or a YAML / TOML config."""

from __future__ import annotations

import argparse
from pathlib import Path

from deltalens.study.battery.config import PRESETS, BatteryConfig, ConfigError
from deltalens.study.battery.executor import EXECUTORS

DEFAULT_OUT = "deltalens-results"
"""The results folder of ``deltalens run`` when no ``--out`` is given (relative to the working folder)."""

RUN_EPILOG = """\
Results: OUT/report.html (offline), summary.json, config.yaml, provenance.json and one *.parquet
per experiment; finished units are kept in OUT/units, so rerunning the same command resumes.

Cache: built model families (the organism: organism-seed{{N}}, SmolLM2: smollm2-family-seed{{N}})
and downloaded wheels live under $DELTALENS_CACHE (default ~/.cache/deltalens; here: {cache}).
Set DELTALENS_CACHE to move it.
"""


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``deltalens run`` arguments (config file, ``--preset``, ``--out``, ``--quiet``) to ``parser``."""
    from deltalens.study.battery.config import default_cache

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = RUN_EPILOG.format(cache=default_cache())
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML or TOML battery config (default: none, the --preset family)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        help="built-in family (default: organism, or the config's preset)",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"results folder; rerunning into it resumes (default: ./{DEFAULT_OUT})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--threads",
        default=None,
        help="torch CPU threads: a number or 'auto' (one per core on a quiet machine, one on a busy "
        "one); default: $OMP_NUM_THREADS, else 1. Idle threads never spin (OMP_WAIT_POLICY=PASSIVE)",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="run once per family seed, e.g. 0,1,2, into OUT/seed<N>/, and write OUT/robustness.json "
        "(how many seeds each verdict holds in)",
    )
    parser.add_argument(
        "--executor",
        default="serial",
        choices=list(EXECUTORS),
        help="where units run: this process (default) or Ray workers (pip install 'deltalens[ray]'); "
        "the config's ray: block sets workers, num_cpus and num_gpus per worker",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="with --executor ray: the cluster to join ('auto', 'HOST:6379'; default: a local one)",
    )
    return parser


def _config(args: argparse.Namespace) -> BatteryConfig:
    """The battery config from ``deltalens run`` arguments (a malformed file: one ``ConfigError`` line)."""
    import yaml

    if not args.config:
        return BatteryConfig.from_preset(args.preset or "organism")
    try:
        cfg = BatteryConfig.from_file(args.config)
    except yaml.YAMLError as e:
        raise ConfigError(f"{args.config}: not valid YAML: {' '.join(str(e).split())}") from e
    if args.preset:
        cfg.preset = args.preset
    return cfg


def run_main(args: argparse.Namespace) -> int:
    """Run the battery from ``deltalens run`` arguments; returns the exit code.

    Raises:
        ConfigError, FileNotFoundError, ValueError: a bad config or ``--out`` (before any work;
            ``deltalens`` prints them as one line and exits 2).
    """
    import time

    from deltalens.study.battery import Battery
    from deltalens.study.battery.executor import make_executor

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a file; pass a results folder (default: ./{DEFAULT_OUT})")
    cfg = _config(args)
    if args.seeds:
        return _run_seeds(args, cfg)
    executor = make_executor(args.executor, args.address, cfg)
    t = time.perf_counter()
    result = Battery(cfg, args.out, progress=not args.quiet, executor=executor).run()
    print_summary(result["tables"], args.out, time.perf_counter() - t)
    return 0


def _run_seeds(args: argparse.Namespace, cfg: BatteryConfig) -> int:
    """``deltalens run --seeds``: one battery per seed, then the robustness table."""
    import time

    from deltalens.study.battery import Battery
    from deltalens.study.battery.executor import make_executor
    from deltalens.study.battery.robustness import parse_seeds, run_seeds

    seeds = parse_seeds(args.seeds)
    t = time.perf_counter()

    def battery(c: BatteryConfig, folder: Path) -> Battery:
        executor = make_executor(args.executor, args.address, c)
        return Battery(c, folder, progress=not args.quiet, executor=executor)

    res = run_seeds(cfg, seeds, args.out, progress=not args.quiet, battery=battery)
    print("\n" + "=" * 78)
    print(f"deltalens battery over seeds {seeds} finished in {time.perf_counter() - t:.0f} s -> {args.out}/")
    print(res["robustness"].to_string(index=False))
    print("=" * 78)
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
        marks = {"replicates": "YES  ", "does not": "NO   ", "mixed": "MIXED"}
        mark = marks.get(getattr(r, "outcome", ""), "  -  ")
        rule = f" ({r.rule})" if hasattr(r, "rule") else ""
        print(f"  [{mark}] {r.claim}{rule}\n        {r.numbers}")
    print("=" * 78)
