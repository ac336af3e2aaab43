"""Provenance: where a loaded model came from; stored next to every result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Provenance:
    """Where a loaded model came from; stored next to every result."""

    base: str
    checkpoint: str | None
    adapter: str | None
    content_hash: str
    backend: str
    dtype: str
    arch: str
    adapter_merged: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the provenance."""
        return asdict(self)
