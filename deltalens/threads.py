"""How many CPU threads deltalens computes with, and how idle threads wait.

On a CPU, torch runs each operation on its OpenMP thread team (``torch.get_num_threads()``,
by default one thread per core). For a small model every operation is tiny, and each one ends at
a barrier where the team waits for its slowest thread. On a busy machine the operating system
deschedules one of the threads for a whole time slice, so every operation waits milliseconds for
microseconds of work; meanwhile GNU OpenMP's default wait policy makes the waiting threads spin,
burning the CPU time the other processes (and the missing thread) need. This is why a busy
machine slowed the battery's sweep by far more than the load explains.

deltalens therefore

* asks OpenMP to wait passively (``OMP_WAIT_POLICY=PASSIVE``: idle threads sleep instead of
  spinning) when it can, i.e. before torch is imported (the setting is read once, when torch
  loads its OpenMP runtime); an explicit ``OMP_WAIT_POLICY`` is left alone;
* uses one intra-op thread by default: the ``--threads`` option or ``OMP_NUM_THREADS`` choose
  another number (``--threads auto``: one per core on a quiet machine, one when it is busy).

This module does not import torch at import time.

Example:
    >>> from deltalens import threads
    >>> threads.configure("auto")      # before torch is imported: also sets the wait policy
    >>> threads.settings()["threads"]
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

ENV_THREADS = "OMP_NUM_THREADS"
"""The environment variable that sets the thread count when no ``--threads`` is given."""

ENV_MKL = "MKL_NUM_THREADS"
ENV_WAIT = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"
DEFAULT = 1
"""Threads when neither ``--threads`` nor ``OMP_NUM_THREADS`` says otherwise."""

BUSY_LOAD = 0.5
"""``auto``: a machine whose 1-minute load average per core is at least this is busy (one thread)."""

ThreadsArg = int | str | None


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_per_core() -> float | None:
    """The 1-minute load average divided by :func:`cpu_count` (None where the OS has none)."""
    try:
        return os.getloadavg()[0] / cpu_count()
    except (AttributeError, OSError):
        return None


def auto_threads() -> int:
    """One thread per core on a quiet machine, one thread on a busy one (see :data:`BUSY_LOAD`)."""
    load = load_per_core()
    return 1 if load is None or load >= BUSY_LOAD else cpu_count()


def _parse(value: ThreadsArg, what: str) -> int | None:
    """``value`` as a positive thread count, None for "not set", or the count ``auto`` picks."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_threads()
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"{what}={value!r} is not a thread count; expected a positive integer or 'auto'")
    return n


def _env_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a count (the outer level of a nested list such as ``4,2``), or None."""
    value = os.environ.get(ENV_THREADS)
    return None if value is None else _parse(value.split(",")[0].strip(), ENV_THREADS)


def resolve(threads: ThreadsArg = None, what: str = "threads") -> int:
    """The thread count to use: ``threads`` (int or ``"auto"``), else ``OMP_NUM_THREADS``, else 1.

    Raises:
        ValueError: ``threads`` (called ``what`` in the message) or ``OMP_NUM_THREADS`` is neither
            a positive integer nor ``auto``.
    """
    n = _parse(threads, what)
    if n is None:
        n = _env_threads()
    return DEFAULT if n is None else n


def configure(threads: ThreadsArg = None, what: str = "threads") -> int:
    """Set deltalens's thread use for this process; returns the thread count.

    Before torch is imported this also sets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and (unless
    the environment already chooses one) ``OMP_WAIT_POLICY=PASSIVE``, so that no thread ever
    spins; afterwards it sets torch's intra-op thread count (the wait policy is fixed once torch
    has loaded OpenMP, and with one thread there is nothing to wait for). ``OMP_NUM_THREADS``
    then records the count, so that :func:`resolve` (and :func:`limited`) later agree with it.

    Raises:
        ValueError: a bad ``threads`` or ``OMP_NUM_THREADS`` (see :func:`resolve`).
    """
    n = resolve(threads, what)
    if "torch" not in sys.modules:
        os.environ.setdefault(ENV_WAIT, PASSIVE)
    else:
        import torch

        torch.set_num_threads(n)
    os.environ.update({ENV_THREADS: str(n), ENV_MKL: str(n)})
    return n


@contextlib.contextmanager
def use(threads: ThreadsArg = None, what: str = "threads") -> Iterator[int]:
    """:func:`configure` for the block; where torch was already loaded, restore its thread count
    and the environment afterwards (a command run inside a longer-lived process)."""
    loaded = "torch" in sys.modules
    env = {k: os.environ.get(k) for k in (ENV_THREADS, ENV_MKL)}
    old = sys.modules["torch"].get_num_threads() if loaded else None
    n = configure(threads, what)
    try:
        yield n
    finally:
        if old is not None:
            sys.modules["torch"].set_num_threads(old)
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def limited(threads: ThreadsArg = None) -> Iterator[int]:
    """Run the block with :func:`resolve`'s thread count (torch intra-op); restore it afterwards."""
    import torch

    n = resolve(threads)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


def settings() -> dict[str, object]:
    """What is in force: ``threads`` (torch's if loaded, else what the environment asks), wait policy, cores, load."""
    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else _env_threads()
    load = load_per_core()
    return {
        "threads": n,
        "wait_policy": os.environ.get(ENV_WAIT, "default (spins)"),
        "cores": cpu_count(),
        "load_per_core": None if load is None else round(load, 2),
    }
