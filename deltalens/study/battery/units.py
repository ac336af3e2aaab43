"""Units of work keyed by a hash of their inputs, written atomically, never recomputed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deltalens.atomic import write_bytes
from deltalens.hashing import config_key


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
        if kind == "parquet":
            import io

            buf = io.BytesIO()
            result.reset_index(drop=True).to_parquet(buf, index=False)
            write_bytes(p, buf.getvalue())
            result = pd.read_parquet(p)  # the stored form, so cached and fresh runs match exactly
        else:
            write_bytes(p, json.dumps(result, indent=1, default=str).encode())
            result = json.loads(p.read_text())
        self.computed.append(unit)
        self._log(unit, "computed", time.perf_counter() - t)
        return result
