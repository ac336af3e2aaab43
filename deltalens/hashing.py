"""One hashing module; each function's name says what it hashes.

* :func:`file_hash` — the bytes of files (a checkpoint or adapter directory, a wheel, a shard);
* :func:`weight_hash` — the values of a model's weights (names, shapes, fp32 values);
* :func:`config_key` — a JSON-able configuration (canonical JSON, sorted keys): cache keys;
* :func:`text_hash` — a list of strings (prompt sets).

All return the full sha256 hex digest (64 characters); callers that need a short id for a file
name cut it explicitly (``config_key(x)[:12]``).

Example:
    >>> from deltalens.hashing import config_key
    >>> config_key({"b": 1, "a": 2}) == config_key({"a": 2, "b": 1})
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["config_key", "file_hash", "parts_hash", "text_hash", "weight_hash"]

_CHUNK = 1 << 22


def file_hash(paths: str | os.PathLike | Iterable[str | os.PathLike], names: bool = True) -> str:
    """sha256 over the bytes of one file or several (sorted by path; with ``names``, each file's name too).

    A single file hashed with ``names=False`` gives the plain ``sha256sum`` of the file.
    """
    files = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    h = hashlib.sha256()
    for p in sorted(files):
        if names:
            h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


def weight_hash(weights: Mapping[str, Any] | Any) -> str:
    """sha256 over a state dict (or a module's ``state_dict()``): names, shapes and fp32 values.

    Equal hashes mean equal weights whatever the storage dtype's round trip through fp32; this is
    the hash ``deltalens.finetune`` records as a checkpoint's parent in ``cfg.json``.
    """
    import torch

    state = weights if isinstance(weights, Mapping) else weights.state_dict()
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def config_key(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys; non-JSON values through ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def parts_hash(*parts: bytes | str | object) -> str:
    """sha256 over parts (bytes as they are, anything else as UTF-8 ``str``), each followed by NUL."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def text_hash(texts: Iterable[str]) -> str:
    """sha256 over a sequence of strings, order kept (NUL-separated)."""
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()
