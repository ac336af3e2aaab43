"""``deltalens report RESULTS_DIR``: one offline HTML report from a results folder.

A results folder may hold ``config.yaml``, ``summary.json``, ``provenance.json`` and any number
of ``*.parquet`` tables. Every table is rendered; the known ones are also drawn: ``sweep``
(steering curves with the ``evals`` table's stages as reference lines, and E_k bars),
``weight_overlap``, ``activation_overlap``, ``probes``, ``patching`` and ``delta_norms``;
``verdicts`` and ``evals`` come first. A table matches a known name when its file stem is that
name or starts with it followed by ``_`` or ``-`` (``sweep_useful.parquet``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

KNOWN_TABLES: dict[str, str] = {
    "verdicts": "Verdicts",
    "evals": "Evaluations",
    "sweep": "Subspace steering sweep",
    "weight_overlap": "Weight-update overlap",
    "activation_overlap": "Activation overlap",
    "probes": "Linear probes",
    "patching": "Activation patching",
    "delta_norms": "Weight-update norms",
}
"""File stems :func:`report_from_results` knows, in page order, with their section titles."""

STAGE_LABELS: dict[str, str] = {"w0": "W_0", "wa": "W_A"}
"""Reference-line labels for the ``stage`` column of an ``evals`` table (others: ``"{stage} FT"``)."""


def _kind_of(stem: str) -> str | None:
    for name in KNOWN_TABLES:
        if stem == name or stem.startswith((f"{name}_", f"{name}-")):
            return name
    return None


def sweep_references(evals: Any, sweep: Any) -> dict[str, dict[str, float]]:
    """Reference lines for a sweep plot from an ``evals`` table (one row per ``stage``).

    W_0 and W_A always; a fine-tune's row only if the sweep has that ``task`` (or ``update``).
    """
    import pandas as pd

    if evals is None or "stage" not in evals.columns:
        return {}
    tasks = set()
    for col in ("task", "update"):
        if col in sweep.columns:
            tasks |= set(sweep[col].dropna().astype(str))
    refs: dict[str, dict[str, float]] = {}
    for row in evals.to_dict("records"):
        stage = str(row["stage"])
        if stage in STAGE_LABELS or stage in tasks:
            refs[STAGE_LABELS.get(stage, f"{stage} FT")] = {
                k: float(v)
                for k, v in row.items()
                if k != "stage" and isinstance(v, int | float) and pd.notna(v)
            }
    return refs


def _plots(kind: str, df: Any, tables: dict[str, Any]) -> list[Callable[[], Any]]:
    from deltalens import viz

    if kind == "sweep":
        refs = sweep_references(tables.get("evals"), df)
        plots = [lambda: viz.steering_sweep(df, references=refs or None)]
        if "energy_kept" in df.columns:
            plots.append(lambda: viz.energy_kept(df))
        return plots
    single = {
        "weight_overlap": viz.weight_overlap,
        "activation_overlap": viz.activation_overlap,
        "probes": viz.probe_accuracy,
        "patching": viz.patching,
        "delta_norms": viz.delta_norms,
    }
    return [lambda: single[kind](df)] if kind in single else []


def report_from_results(
    results_dir: str | Path, title: str | None = None, max_rows: int = 60, recursive: bool = False
):
    """Build a :class:`~deltalens.viz.Report` from a results folder (tolerant of what is missing).

    Args:
        results_dir: the folder (``config.yaml``, ``summary.json``, ``*.parquet``,
            optional ``provenance.json``).
        title: page title (default: ``"deltalens report: {folder name}"``).
        max_rows: rows shown per table (head and tail).
        recursive: also render ``*.parquet`` in subfolders (off by default: a battery keeps its
            per-unit caches in ``units/``).

    Returns:
        The report; a table that cannot be read or drawn is still mentioned, with the reason.

    Raises:
        FileNotFoundError: ``results_dir`` is not a folder.

    Example:
        >>> report_from_results("results/organism").save("results/organism/report.html")
    """
    import pandas as pd
    import yaml

    from deltalens.viz.report import Report

    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {str(root)!r} does not exist or is not a folder")
    rep = Report(title or f"deltalens report: {root.resolve().name}", max_rows=max_rows)
    notes: list[str] = []

    summary = root / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            rep.add_section("Summary", data if isinstance(data, dict) else json.dumps(data, indent=1))
        except (OSError, ValueError) as e:
            notes.append(f"summary.json could not be read: {e}")

    paths = (root.rglob if recursive else root.glob)("*.parquet")
    order = {name: i for i, name in enumerate(KNOWN_TABLES)}
    paths = sorted(
        (p for p in paths if p.is_file()),
        key=lambda p: (order.get(_kind_of(p.stem) or "", len(order)), str(p.relative_to(root))),
    )
    tables: dict[str, Any] = {}
    errors: dict[Path, str] = {}
    for path in paths:
        try:
            tables[str(path.relative_to(root))] = pd.read_parquet(path)
        except Exception as e:  # any unreadable table is reported, not fatal
            errors[path] = f"{type(e).__name__}: {e}"
    by_kind = {_kind_of(Path(rel).stem): df for rel, df in tables.items() if Path(rel).parent == Path(".")}
    for path in paths:
        rel = str(path.relative_to(root))
        if path in errors:
            rep.add_section(rel, f"Could not read {rel}: {errors[path]}")
            continue
        df = tables[rel]
        kind = _kind_of(path.stem)
        items: list[Any] = []
        for plot in _plots(kind, df, by_kind) if kind else []:
            try:
                items.append(plot())
            except (KeyError, ValueError, TypeError) as e:
                items.append(f"No {kind} plot for {rel}: {e}")
        items.append(df)
        rep.add_section(f"{KNOWN_TABLES[kind]} ({rel})" if kind else f"Table {rel}", *items)

    config = root / "config.yaml"
    if config.is_file():
        try:
            cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
            rep.add_section("Configuration", cfg if isinstance(cfg, dict) else str(cfg))
        except (OSError, yaml.YAMLError) as e:
            notes.append(f"config.yaml could not be read: {e}")

    prov = root / "provenance.json"
    if prov.is_file():
        try:
            rep.add_provenance(json.loads(prov.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            notes.append(f"provenance.json could not be read: {e}")
    if not rep.sections:
        notes.append(f"{root} holds no summary.json, config.yaml or *.parquet table.")
    if notes:
        rep.add_section("Notes", *notes)
    return rep


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand's arguments to ``parser``; returns it.

    Example:
        >>> sub = main_parser.add_subparsers(dest="command")
        >>> p = add_report_arguments(sub.add_parser("report", help="build an offline HTML report"))
        >>> p.set_defaults(func=report_main)
    """
    parser.add_argument(
        "results_dir", metavar="RESULTS_DIR", help="folder with config.yaml, summary.json, *.parquet"
    )
    parser.add_argument(
        "-o", "--output", default=None, help="output HTML file (default: RESULTS_DIR/report.html)"
    )
    parser.add_argument("--title", default=None, help="page title")
    parser.add_argument("--max-rows", type=int, default=60, help="rows shown per table (default 60)")
    parser.add_argument("--recursive", action="store_true", help="also render *.parquet tables in subfolders")
    return parser


def report_main(args: argparse.Namespace) -> int:
    """Run ``deltalens report``: build the report and write it; returns the exit status."""
    try:
        rep = report_from_results(
            args.results_dir,
            title=getattr(args, "title", None),
            max_rows=getattr(args, "max_rows", 60),
            recursive=getattr(args, "recursive", False),
        )
    except FileNotFoundError as e:
        print(f"deltalens report: {e}", file=sys.stderr)
        return 2
    output = getattr(args, "output", None)
    out = Path(output) if output else Path(args.results_dir) / "report.html"
    path = rep.save(out)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB, {len(rep.sections)} sections)")
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience entry point
    parser = add_report_arguments(argparse.ArgumentParser(prog="deltalens report", description=__doc__))
    return report_main(parser.parse_args(argv))
