"""``deltalens report RESULTS_DIR``: one offline HTML report from a results folder.

A results folder may hold ``config.yaml``, ``summary.json``, ``provenance.json`` and any number
of ``*.parquet`` tables. Every table is rendered; the known ones are also drawn: ``sweep``
(steering curves with the ``evals`` table's stages as reference lines, and E_k bars),
``weight_overlap``, ``activation_overlap``, ``probes``, ``patching``, ``delta_norms`` and the
``circuits`` experiment's tables (circuit graph, head heatmaps, faithfulness, refusal directions);
``verdicts`` and ``evals`` come first. A table matches a known name when its file stem is that
name or starts with it followed by ``_`` or ``-`` (``sweep_useful.parquet``). The Summary shows
``summary.json``'s scalars as a key / value table and its lists of records (``verdicts``, ``evals``)
as tables. A folder with neither ``summary.json`` nor a ``*.parquet`` table (an empty folder, a
model checkpoint) is refused (:func:`check_results_folder`) and nothing is written.
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
    "circuit_edges": "Refusal circuit: EAP-IG edges, W_A vs the harmful fine-tune",
    "circuit_heads": "Refusal circuit: head attributions",
    "faithfulness": "Refusal circuit: faithfulness",
    "circuit_diff": "Refusal circuit: edges gained, lost and changed",
    "refusal_directions": "Refusal directions across stages",
    "circuit_dla": "Refusal circuit: direct logit attribution per prompt",
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
    if kind in single:
        return [single[kind]]
    from deltalens.study.circuit_views import report_views

    return report_views(kind, df)  # the circuits experiment's tables ([] for others)


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
        FileNotFoundError: ``results_dir`` does not exist.
        NotADirectoryError: ``results_dir`` is a file.
        NotAResultsFolder: ``results_dir`` is empty, a model checkpoint, or holds neither a
            ``summary.json`` nor a ``*.parquet`` table (see :func:`check_results_folder`).

    Example:
        >>> report_from_results("results/organism").save("results/organism/report.html")
    """
    from deltalens.viz.report import Report

    root = check_results_folder(results_dir, recursive=recursive)
    rep = Report(title or f"deltalens report: {root.resolve().name}", max_rows=max_rows)
    notes: list[str] = []
    _add_summary(rep, root, notes)
    _add_tables(rep, root, recursive)
    _add_config(rep, root, notes)
    _add_provenance(rep, root, notes)
    if notes:
        rep.add_section("Notes", *notes)
    return rep


class NotAResultsFolder(ValueError):
    """``deltalens report`` was given a folder that holds no results (empty, a checkpoint, other files)."""


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.gguf", "*.pt", "*.pth")
"""Globs of model weight files: a folder with these and a ``config.json`` is a checkpoint."""

_WHAT_TO_PASS = "pass the --out folder of `deltalens run` or `deltalens probe`"


def check_results_folder(results_dir: str | Path, recursive: bool = False) -> Path:
    """``results_dir`` as a path if it is a results folder (``summary.json`` or ``*.parquet`` tables).

    Raises:
        FileNotFoundError: it does not exist.
        NotADirectoryError: it is a file.
        NotAResultsFolder: it is empty, a model checkpoint (``config.json`` or ``adapter_config.json``
            with weight files), or holds neither ``summary.json`` nor a ``*.parquet`` table
            (in subfolders too with ``recursive``).
    """
    root = Path(results_dir)
    if not root.exists():
        raise FileNotFoundError(f"RESULTS_DIR: results folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(
            f"RESULTS_DIR: {str(root)!r} is a file, not a results folder; {_WHAT_TO_PASS}"
        )
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    weights = sorted({p.name for g in WEIGHT_FILES for p in root.glob(g)})
    configs = [n for n in ("config.json", "adapter_config.json") if n in names]
    if configs and weights:
        raise NotAResultsFolder(
            f"RESULTS_DIR: {str(root)!r} is a model checkpoint ({', '.join(configs + weights[:2])}), "
            f"not a results folder; {_WHAT_TO_PASS}"
        )
    if not names:
        raise NotAResultsFolder(f"RESULTS_DIR: {str(root)!r} is empty; {_WHAT_TO_PASS}")
    tables = next(iter((root.rglob if recursive else root.glob)("*.parquet")), None)
    if not (root / "summary.json").is_file() and tables is None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise NotAResultsFolder(
            f"RESULTS_DIR: {str(root)!r} is not a results folder: no summary.json and no *.parquet table "
            f"(it holds {shown}); {_WHAT_TO_PASS}"
        )
    return root


def _records(value: Any) -> bool:
    """A non-empty list of mappings (a table written into JSON, e.g. ``summary.json``'s verdicts)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def summary_items(data: Any) -> list[Any]:
    """The Summary section's items: scalars and mappings as one key / value table, and each list of
    records (``verdicts``, ``evals``, ...) as a table of its own under its title."""
    import pandas as pd

    if not isinstance(data, dict):
        return [json.dumps(data, indent=1)]
    tables = {k: v for k, v in data.items() if _records(v)}
    rest = {k: v for k, v in data.items() if k not in tables}
    items: list[Any] = [rest] if rest else []
    for key, rows in tables.items():
        items += [f"{KNOWN_TABLES.get(key, key)} ({key} in summary.json)", pd.DataFrame.from_records(rows)]
    return items


def _add_summary(rep: Report, root: Path, notes: list[str]) -> None:
    """A "Summary" section from ``summary.json`` (a note when it cannot be read)."""
    summary = root / "summary.json"
    if not summary.is_file():
        return
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"summary.json could not be read: {e}")
        return
    rep.add_section("Summary", *summary_items(data))


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
    parser.add_argument("--max-rows", type=int, default=60, help="rows shown per table (default: 60)")
    parser.add_argument("--recursive", action="store_true", help="also render *.parquet tables in subfolders")
    return parser


def _output_path(args: argparse.Namespace) -> Path:
    """Where the report goes: ``--output`` or ``RESULTS_DIR/report.html`` (checked before any work)."""
    output = getattr(args, "output", None)
    out = Path(output) if output else Path(args.results_dir) / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--output: {str(out)!r} must end in .html or .htm")
    if out.is_dir():
        raise IsADirectoryError(f"--output: {str(out)!r} is a folder; pass an .html file path")
    return out


def report_main(args: argparse.Namespace) -> int:
    """Run ``deltalens report``: build the report and write it; returns the exit status.

    A missing, empty or non-results folder (or a model checkpoint) prints one line and returns 2,
    writing nothing; with ``args.debug`` (``deltalens --debug report ...``) the error propagates.
    """
    try:
        out = _output_path(args)
        rep = report_from_results(
            args.results_dir,
            title=getattr(args, "title", None),
            max_rows=getattr(args, "max_rows", 60),
            recursive=getattr(args, "recursive", False),
        )
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"deltalens report: error: {e}", file=sys.stderr)
        return 2
    path = rep.save(out)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB, {len(rep.sections)} sections)")
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience entry point
    parser = add_report_arguments(argparse.ArgumentParser(prog="deltalens report", description=__doc__))
    return report_main(parser.parse_args(argv))
