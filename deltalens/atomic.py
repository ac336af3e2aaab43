"""Atomic writes: every file and folder deltalens writes appears whole or not at all.

One rule for every writer (battery units, checkpoints, activation shards, ``report.html``,
``config.yaml``, probe outputs): write to a temporary name in the *same* folder, flush and
``fsync``, then ``os.replace`` over the target. A crash at any point leaves either the old file
or the new one, never a torn one; temporary names start with ``.`` and end in ``.tmp``.

Example:
    >>> from deltalens.atomic import write_json, atomic_directory
    >>> write_json("out/summary.json", {"ok": True})                # doctest: +SKIP
    >>> with atomic_directory("out/ckpt") as tmp:                    # doctest: +SKIP
    ...     model.save_pretrained(tmp)        # "out/ckpt" appears only if this block succeeds
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LockTimeout",
    "atomic_directory",
    "atomic_write",
    "file_lock",
    "staged_outputs",
    "write_bytes",
    "write_json",
    "write_text",
]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    Use this form for writers that want a file name (``safetensors.save_file``,
    ``DataFrame.to_parquet``). On any exception the temporary file is removed and ``path`` is
    left as it was.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, w)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (a trailing newline; ``default=str`` for paths and the like) atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; on success rename it to ``target``.

    On any exception the temporary directory is removed and ``target`` is left as it was, so no
    half-written checkpoint is ever visible. With ``overwrite`` an existing ``target`` is replaced
    by two renames (the old one is moved aside first and restored if the second rename fails).

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())


def _swap_in(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


class LockTimeout(TimeoutError):
    """Another process held a lock for longer than the caller was willing to wait."""


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike, timeout: float | None = None, what: str = "this folder", poll: float = 0.5
) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

    A second process waits (printing once who holds the lock: its pid and host, read from the
    lock file) until the first releases it, or until ``timeout`` seconds pass. The lock is an
    ``fcntl.flock`` on an open file, so the operating system releases it when its holder dies
    (kill -9 included): a stale lock file never blocks anyone.

    Raises:
        LockTimeout: the lock was not free within ``timeout`` seconds (the message names the holder).
    """
    import fcntl
    import socket
    import sys
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start, told = time.monotonic(), False
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise LockTimeout(
                        f"{what} is locked by {holder} (lock file {path}); waited {timeout:g} s"
                    ) from None
                if not told:
                    print(f"[deltalens] waiting for {holder} to release {what} ({path})", file=sys.stderr)
                    told = True
                time.sleep(poll)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield path
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_outputs(
    out: str | os.PathLike, replaces: Iterable[str] = (), last: tuple[str, ...] = ("summary.json",)
) -> Iterator[Path]:
    """Yield an empty staging folder inside ``out``; when the block succeeds, move its files into ``out``.

    Write a run's result files into the staging folder. If the block raises, nothing in ``out``
    changes: the previous complete results stay exactly as they were. On success every staged
    file replaces its namesake in ``out`` by an atomic rename (the names in ``last`` last), and each
    name in ``replaces`` that this run did not stage is removed, so no table of an earlier run
    stays next to this run's summary. Staging folders left by a killed run are removed first, so
    call it while holding the folder's lock.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(".run-*.tmp"):
        shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".run-", suffix=".tmp"))
    try:
        yield stage
        names = sorted((p.name for p in stage.iterdir() if p.is_file()), key=lambda n: n in last)
        for name in names:
            os.replace(stage / name, out / name)
        for name in set(replaces) - set(names):
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
