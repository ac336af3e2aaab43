"""Checkpoint file names and torch thread control for training.

Atomic writes live in :mod:`deltalens.atomic`, hashes in :mod:`deltalens.hashing`.

Example:
    >>> from deltalens.finetune.storage import torch_threads
    >>> with torch_threads(1):
    ...     pass
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

CFG_NAME = "cfg.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_THREADS = 2


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
