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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.schemas import EVALS, SWEEP
from deltalens.study.tables import EMBEDDINGS, MODEL, TASK, columns

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.viz.report import Report

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

(_STAGE,) = columns(EVALS, "stage")
(_ENERGY_KEPT,) = columns(SWEEP, "energy_kept")

STAGE_LABELS: dict[str, str] = {"w0": "W_0", "wa": "W_A"}
"""Reference-line labels for the ``stage`` column of an ``evals`` table (others: ``"{stage} FT"``)."""


def _kind_of(stem: str) -> str | None:
    for name in KNOWN_TABLES:
        if stem == name or stem.startswith((f"{name}_", f"{name}-")):
            return name
    return None


def sweep_references(evals: pd.DataFrame | None, sweep: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Reference lines for a sweep plot from an ``evals`` table (one row per ``stage``).

    W_0 and W_A always; a fine-tune's row only if the sweep has that ``task`` (or ``update``).
    """
    import pandas as pd

    if evals is None or _STAGE not in evals.columns:
        return {}
    tasks = set()
    for col in (TASK, "update"):
        if col in sweep.columns:
            tasks |= set(sweep[col].dropna().astype(str))
    refs: dict[str, dict[str, float]] = {}
    for row in evals.to_dict("records"):
        stage = str(row[_STAGE])
        if stage in STAGE_LABELS or stage in tasks:
            refs[STAGE_LABELS.get(stage, f"{stage} FT")] = {
                k: float(v)
                for k, v in row.items()
                if k != _STAGE and isinstance(v, int | float) and pd.notna(v)
            }
    return refs


def _plots(kind: str, df: pd.DataFrame, tables: dict[str | None, pd.DataFrame]) -> list[Callable[[], Any]]:
    """The views of a known table, called with the study's labels (``task``, ``embeddings``, ``model``)."""
    from deltalens import viz

    if kind == "sweep":
        refs = sweep_references(tables.get("evals"), df)
        plots = [partial(viz.steering_sweep, df, style=TASK, references=refs or None)]
        if _ENERGY_KEPT in df.columns:
            plots.append(partial(viz.energy_kept, df, hue=TASK))
        return plots
    single = {
        "weight_overlap": partial(viz.weight_overlap, df, row=EMBEDDINGS),
        "activation_overlap": partial(viz.activation_overlap, df),
        "probes": partial(viz.probe_accuracy, df, hue=MODEL),
        "patching": partial(viz.patching, df),
        "delta_norms": partial(viz.delta_norms, df),
    }
    return [single[kind]] if kind in single else []


def report_from_results(
    results_dir: str | Path, title: str | None = None, max_rows: int = 60, recursive: bool = False
) -> Report:
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
    from deltalens.viz.report import Report

    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {str(root)!r} does not exist or is not a folder")
    rep = Report(title or f"deltalens report: {root.resolve().name}", max_rows=max_rows)
    notes: list[str] = []
    _add_summary(rep, root, notes)
    _add_tables(rep, root, recursive)
    _add_config(rep, root, notes)
    _add_provenance(rep, root, notes)
    if not rep.sections:
        notes.append(f"{root} holds no summary.json, config.yaml or *.parquet table.")
    if notes:
        rep.add_section("Notes", *notes)
    return rep


def _add_summary(rep: Report, root: Path, notes: list[str]) -> None:
    """A "Summary" section from ``summary.json`` (a note when it cannot be read)."""
    summary = root / "summary.json"
    if not summary.is_file():
        return
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
        rep.add_section("Summary", data if isinstance(data, dict) else json.dumps(data, indent=1))
    except (OSError, ValueError) as e:
        notes.append(f"summary.json could not be read: {e}")


def _table_paths(root: Path, recursive: bool) -> list[Path]:
    """The ``*.parquet`` files under ``root``: known tables first, in page order, then by path."""
    paths = (root.rglob if recursive else root.glob)("*.parquet")
    order = {name: i for i, name in enumerate(KNOWN_TABLES)}
    return sorted(
        (p for p in paths if p.is_file()),
        key=lambda p: (order.get(_kind_of(p.stem) or "", len(order)), str(p.relative_to(root))),
    )


def _read_tables(root: Path, paths: list[Path]) -> tuple[dict[str, pd.DataFrame], dict[Path, str]]:
    """``(relative path -> table, unreadable path -> reason)``."""
    import pandas as pd

    tables: dict[str, pd.DataFrame] = {}
    errors: dict[Path, str] = {}
    for path in paths:
        try:
            tables[str(path.relative_to(root))] = pd.read_parquet(path)
        except Exception as e:  # any unreadable table is reported, not fatal
            errors[path] = f"{type(e).__name__}: {e}"
    return tables, errors


def _table_items(
    kind: str | None, rel: str, df: pd.DataFrame, by_kind: dict[str | None, pd.DataFrame]
) -> list[Any]:
    """A table's plots (or why each could not be drawn), then the table itself."""
    items: list[Any] = []
    for plot in _plots(kind, df, by_kind) if kind else []:
        try:
            items.append(plot())
        except (KeyError, ValueError, TypeError) as e:
            items.append(f"No {kind} plot for {rel}: {e}")
    items.append(df)
    return items


def _add_tables(rep: Report, root: Path, recursive: bool) -> None:
    """One section per table: known kinds drawn (see :data:`KNOWN_TABLES`), unreadable ones explained."""
    paths = _table_paths(root, recursive)
    tables, errors = _read_tables(root, paths)
    by_kind = {_kind_of(Path(rel).stem): df for rel, df in tables.items() if Path(rel).parent == Path(".")}
    for path in paths:
        rel = str(path.relative_to(root))
        if path in errors:
            rep.add_section(rel, f"Could not read {rel}: {errors[path]}")
            continue
        kind = _kind_of(path.stem)
        items = _table_items(kind, rel, tables[rel], by_kind)
        rep.add_section(f"{KNOWN_TABLES[kind]} ({rel})" if kind else f"Table {rel}", *items)


def _add_config(rep: Report, root: Path, notes: list[str]) -> None:
    """A "Configuration" section from ``config.yaml`` (a note when it cannot be read)."""
    import yaml

    config = root / "config.yaml"
    if not config.is_file():
        return
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
        rep.add_section("Configuration", cfg if isinstance(cfg, dict) else str(cfg))
    except (OSError, yaml.YAMLError) as e:
        notes.append(f"config.yaml could not be read: {e}")


def _add_provenance(rep: Report, root: Path, notes: list[str]) -> None:
    """The report's provenance from ``provenance.json`` (a note when it cannot be read)."""
    prov = root / "provenance.json"
    if not prov.is_file():
        return
    try:
        rep.add_provenance(json.loads(prov.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        notes.append(f"provenance.json could not be read: {e}")


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
