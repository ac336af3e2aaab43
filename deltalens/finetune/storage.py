"""Checkpoint storage helpers: atomic directories and JSON, content hashes, adapter checks, threads.

Example:
    >>> from deltalens.finetune.storage import atomic_directory
    >>> with atomic_directory("out/ckpt") as tmp:      # doctest: +SKIP
    ...     model.save_pretrained(tmp)                   # "out/ckpt" appears only if this succeeds
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CFG_NAME = "cfg.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_THREADS = 2


class AdapterMismatchError(ValueError):
    """A LoRA adapter does not fit the base model it was given."""


def content_hash(model: Any) -> str:
    """sha256 of a model's fp32 state dict (names, shapes and values), as hex."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def module_dims(module: Any) -> tuple[int, int] | None:
    """(out_features, in_features) of a linear-like module, or None."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.out_features, module.in_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight is (in, out)
        return module.nf, module.weight.shape[0]
    if hasattr(module, "num_embeddings"):
        return module.embedding_dim, module.num_embeddings
    return None


def check_adapter(base: Any, adapter_dir: str | os.PathLike, base_hash: str | None = None) -> dict[str, Any]:
    """Check that the LoRA adapter in ``adapter_dir`` fits ``base``; return its adapter config.

    Every LoRA weight must name a module of the base with matching input / output sizes, and
    an adapter written by ``finetune`` must record the same parent content hash as ``base``.

    Raises:
        FileNotFoundError: no adapter config or weights in ``adapter_dir``.
        AdapterMismatchError: the adapter was made for another base.
    """
    from safetensors import safe_open

    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{str(d)!r} has no {ADAPTER_CONFIG}; it is not a peft adapter directory")
    if not (d / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{str(d)!r} has no {ADAPTER_WEIGHTS}")
    acfg = json.loads((d / ADAPTER_CONFIG).read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(
            f"{str(d)!r} holds a {acfg.get('peft_type')} adapter; only LoRA is supported"
        )
    modules = dict(base.named_modules())
    problems: list[str] = []
    with safe_open(d / ADAPTER_WEIGHTS, framework="pt") as f:
        for key in f.keys():
            part = next(
                (p for p in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B") if p in key),
                None,
            )
            if part is None:
                continue
            name = key.split(part)[0].removeprefix("base_model.model.")
            shape = tuple(f.get_slice(key).get_shape())
            mod = modules.get(name)
            dims = module_dims(mod) if mod is not None else None
            if mod is None or dims is None:
                problems.append(f"{name}: no such linear module in the base")
            elif "_A" in part and shape[-1] != dims[1]:
                problems.append(f"{name}: adapter input size {shape[-1]} != base {dims[1]}")
            elif "_B" in part and shape[0] != dims[0]:
                problems.append(f"{name}: adapter output size {shape[0]} != base {dims[0]}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AdapterMismatchError(
            f"the adapter at {str(d)!r} does not match its base {type(base).__name__}: "
            + "; ".join(problems[:5])
            + more
        )
    rec = d / CFG_NAME
    if base_hash is not None and rec.is_file():
        want = json.loads(rec.read_text()).get("parent", {}).get("content_hash")
        if want and want != base_hash:
            raise AdapterMismatchError(
                f"the adapter at {str(d)!r} was trained on a base with content hash {want[:12]}…, "
                f"but the given base has {base_hash[:12]}…"
            )
    return acfg


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
