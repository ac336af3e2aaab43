"""Checkpoint storage helpers: atomic directories and JSON, content hashes, adapter checks, threads.

Example:
    >>> from deltalens.finetune.storage import atomic_directory
    >>> with atomic_directory("out/ckpt") as tmp:      # doctest: +SKIP
    ...     model.save_pretrained(tmp)                   # "out/ckpt" appears only if this succeeds
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deltalens.checkpoints import check_adapter as _check_adapter
from deltalens.checkpoints import state_hash as content_hash  # noqa: F401  (re-exported)

CFG_NAME = "cfg.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_THREADS = 2


def check_adapter(base: Any, adapter_dir: str | os.PathLike, base_hash: str | None = None) -> dict[str, Any]:
    """Check that the LoRA adapter in ``adapter_dir`` fits ``base``; see :func:`deltalens.checkpoints.check_adapter`."""
    return _check_adapter(adapter_dir, base, base_hash)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; on success rename it to ``target``.

    On any exception the temporary directory is removed and ``target`` is left as it was, so no
    half-written checkpoint is ever visible. With ``overwrite`` an existing ``target`` is replaced
    by two renames.

    Example:
        >>> with atomic_directory("out/ckpt") as tmp:      # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + ``os.replace``)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def auto_threads(d_model: int, tokens: int = 1024, max_threads: int = MAX_THREADS) -> int:
    """1 or ``max_threads`` (at most 2), whichever runs a matmul of this size faster right now.

    On a busy machine two OpenMP threads can be several times slower than one (each parallel
    region waits for a descheduled thread), so the choice is measured, not assumed: a few
    interleaved timings of a ``[tokens, d_model] x [d_model, 2 d_model]`` matmul, about 0.1 s.
    Two threads are used only if they are at least 1.4 times as fast.
    """
    import statistics

    import torch

    top = max(1, min(max_threads, MAX_THREADS))
    if top == 1:
        return 1
    old = torch.get_num_threads()
    x = torch.randn(tokens, d_model)
    w = torch.randn(2 * d_model, d_model)
    times: dict[int, list[float]] = {1: [], top: []}
    reps = max(1, min(8, int(2e8 // (4 * tokens * d_model * d_model))))
    try:
        with torch.inference_mode():
            for _ in range(5):
                for n in times:
                    torch.set_num_threads(n)
                    torch.nn.functional.linear(x, w)
                    t = time.perf_counter()
                    for _ in range(reps):
                        torch.nn.functional.linear(x, w)
                    times[n].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return top if max(times[top]) < 0.7 * statistics.median(times[1]) else 1


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``min(n, 2)`` torch intra-op threads; restore the previous number afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n or MAX_THREADS, MAX_THREADS)))
    try:
        yield
    finally:
        torch.set_num_threads(old)
