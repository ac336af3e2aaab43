"""Units of work keyed by a hash of their inputs, written atomically, never recomputed.

Also the parts of a unit key that are read from disk (:func:`tokenizer_hash`) and the version of
the computation every key carries. A run's result files are published together through
:func:`deltalens.atomic.staged_outputs`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deltalens.atomic import write_bytes
from deltalens.hashing import config_key, file_hash

COMPUTATION_VERSION = 2
"""Part of every unit key. Bump it when a code change changes a unit's numbers, so that no folder
serves results of the old computation (deltalens 0.1's keys, version 1, had no version at all)."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
"""The files besides the weights and ``config.json`` that can change what a checkpoint computes:
its tokenizer, chat template and generation defaults."""


def tokenizer_hash(path: str | os.PathLike) -> str:
    """sha256 (16 hex chars) over a checkpoint's tokenizer, chat-template and generation files.

    A ``.gguf`` file carries its tokenizer inside, so its content hash already covers it
    (``"in-checkpoint"``); a folder without any of :data:`TOKENIZER_FILES` gives ``"none"``.
    """
    p = Path(path)
    if p.is_file():
        return "in-checkpoint"
    files = [p / n for n in TOKENIZER_FILES if (p / n).is_file()]
    files += sorted((p / "additional_chat_templates").glob("*.jinja"))
    return file_hash(files)[:16] if files else "none"


class UnitStore:
    """A folder of finished units: ``<name>-<key>.parquet`` (tables) or ``.json`` (dicts).

    ``log.jsonl`` records every unit as ``computed`` or ``cached``, so a rerun after an
    interruption can be checked for recomputation.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "log.jsonl"
        self.computed: list[str] = []
        self.cached: list[str] = []

    def _log(self, unit: str, status: str, seconds: float) -> None:
        with open(self.log_path, "a") as f:
            f.write(
                json.dumps({"unit": unit, "status": status, "seconds": round(seconds, 3), "t": time.time()})
                + "\n"
            )
            f.flush()
            os.fsync(f.fileno())

    def path(self, name: str, inputs: Any, kind: str) -> Path:
        """Where the unit ``name`` with ``inputs`` is stored."""
        return self.root / f"{name}-{config_key(inputs)[:12]}.{kind}"

    def get(self, name: str, inputs: Any, compute: Callable[[], Any], kind: str = "json") -> Any:
        """Return the stored result of unit ``name`` with ``inputs``, computing it once.

        Args:
            kind: ``"json"`` (compute returns a JSON-able dict) or ``"parquet"`` (a DataFrame).
        """
        import pandas as pd

        p = self.path(name, inputs, kind)
        unit = p.name
        if p.is_file():
            self.cached.append(unit)
            self._log(unit, "cached", 0.0)
            return pd.read_parquet(p) if kind == "parquet" else json.loads(p.read_text())
        t = time.perf_counter()
        result = compute()
        return self.put(name, inputs, result, kind=kind, seconds=time.perf_counter() - t)

    def put(self, name: str, inputs: Any, result: Any, kind: str = "json", seconds: float = 0.0) -> Any:
        """Store the computed ``result`` of unit ``name`` atomically; return it in its stored form.

        Args:
            seconds: how long computing it took (recorded in the log).
        """
        import pandas as pd

        p = self.path(name, inputs, kind)
        if kind == "parquet":
            import io

            buf = io.BytesIO()
            result.reset_index(drop=True).to_parquet(buf, index=False)
            write_bytes(p, buf.getvalue())
            result = pd.read_parquet(p)  # the stored form, so cached and fresh runs match exactly
        else:
            write_bytes(p, json.dumps(result, indent=1, default=str).encode())
            result = json.loads(p.read_text())
        self.computed.append(p.name)
        self._log(p.name, "computed", seconds)
        return result
