"""Load base, full fine-tuned, GGUF and LoRA checkpoints into a :class:`HookedModel`.

Everything is validated before any weight is loaded, so bad input fails with a clear error
and nothing is half-loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from deltalens.hashing import config_key, file_hash, weight_hash
from deltalens.hooks.archs import arch_for
from deltalens.hooks.provenance import Provenance
from deltalens.hooks.weights import base_module, module_dims

if TYPE_CHECKING:
    import torch
    from torch import nn

    from deltalens.hooks.model import HookedModel

__all__ = ["AdapterMismatchError", "CheckpointError", "Provenance", "check_adapter", "checkpoint_hash", "load", "load_gguf"]

BackendName = Literal["transformer_lens", "nnsight"]
BACKENDS: tuple[str, ...] = ("transformer_lens", "nnsight")
_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.gguf")


class CheckpointError(ValueError):
    """A path, checkpoint or adapter that deltalens cannot load, with what was expected."""


# ------------------------------------------------------------------ hashing
def checkpoint_hash(path: str | Path) -> str:
    """sha256 (16 hex chars) over the bytes of a checkpoint or adapter's weight and config files.

    The ``content_hash`` of a loaded model's :class:`Provenance` (for a path; an in-memory model
    gets :func:`deltalens.hashing.weight_hash` of its weights, cut to 16 chars).
    """
    p = Path(path)
    if p.is_file():
        return file_hash(p)[:16]
    files = [f for g in _WEIGHT_GLOBS for f in p.glob(g)]
    files += [f for f in (p / "config.json", p / "adapter_config.json") if f.is_file()]
    return file_hash(files)[:16]


# ------------------------------------------------------------------ validation
def _check_checkpoint_dir(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}: expected a local Hugging Face model directory "
            "(config.json + model.safetensors), a .gguf file, or an in-memory model"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path} is a file but not a .gguf checkpoint; pass its directory instead")
        return
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is a peft adapter, not a base checkpoint: load it as dl.load(BASE, adapter={str(path)!r})"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is not a Hugging Face checkpoint: expected config.json and model weights "
            f"(*.safetensors or pytorch_model.bin); found {sorted(x.name for x in path.iterdir())[:8]}"
        )
    if not any(any(path.glob(g)) for g in _WEIGHT_GLOBS):
        raise CheckpointError(f"{path} has config.json but no weights (*.safetensors / *.bin)")


class AdapterMismatchError(CheckpointError):
    """A LoRA adapter that was made for another base model."""


def _adapter_files(adapter: Path) -> dict[str, Any]:
    if not adapter.exists():
        raise FileNotFoundError(f"no adapter directory at {str(adapter)!r}")
    if not (adapter / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter} is not a peft adapter: expected adapter_config.json")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise CheckpointError(f"{adapter} has no adapter_model.safetensors")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(
            f"{adapter} holds a {cfg.get('peft_type')} adapter; only LoRA is supported"
        )
    return cfg


def check_adapter(adapter: str | Path, base_model: nn.Module, base_hash: str | None = None) -> dict[str, Any]:
    """Check that a peft LoRA adapter fits ``base_model`` (modules exist, shapes match); return its config.

    An adapter written by ``deltalens.finetune`` records its parent's content hash in ``cfg.json``;
    with ``base_hash`` given, that must match too.

    Raises:
        FileNotFoundError: no such directory.
        CheckpointError: not a LoRA adapter directory.
        AdapterMismatchError: the adapter was trained for a different base.
    """
    from safetensors import safe_open

    adapter = Path(adapter)
    cfg = _adapter_files(adapter)
    modules = dict(base_model.named_modules())
    problems: list[str] = []
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
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
            if dims is None:
                problems.append(f"module {name!r} does not exist in the base model (or is not linear)")
            elif "_A" in part and shape[-1] != dims[1]:
                problems.append(f"{name}: adapter expects in_features={shape[-1]}, base has {dims[1]}")
            elif "_B" in part and shape[0] != dims[0]:
                problems.append(f"{name}: adapter expects out_features={shape[0]}, base has {dims[0]}")
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AdapterMismatchError(
            f"adapter {adapter} was trained for a different base model and does not match its base "
            f"(adapter base: {cfg.get('base_model_name_or_path')!r}): " + "; ".join(problems[:5]) + more
        )
    rec = adapter / "cfg.json"
    if base_hash is not None and rec.is_file():
        want = json.loads(rec.read_text()).get("parent", {}).get("weight_hash")
        if want and want != base_hash:
            raise AdapterMismatchError(
                f"the adapter at {str(adapter)!r} was trained on a base with content hash {want[:12]}…, "
                f"but the given base has {base_hash[:12]}…"
            )
    return cfg


# ------------------------------------------------------------------ loading
def load_gguf(path: str | Path, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """Dequantize a ``.gguf`` checkpoint into a plain HF model (+ its tokenizer).

    transformers dequantizes GGUF weights on load, but a GGUF-loaded model refuses
    ``save_pretrained`` and carries a ``quantization_config``: the weights are copied into a
    plain model of the same class and config, and ``config.architectures`` is set (TransformerLens
    needs it).

    Raises:
        CheckpointError: an architecture deltalens does not support.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    path = Path(path)
    dtype = dtype or torch.float32
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    arch_for(model.config)
    cd = model.config.to_dict()
    cd.pop("quantization_config", None)
    plain = type(model)(type(model.config)(**cd)).to(dtype).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.config.architectures = [type(plain).__name__]
    plain.generation_config = model.generation_config
    return plain, tok


def _load_hf(path: Path, dtype: torch.dtype, device_map: Any) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


    if path.is_file():
        return load_gguf(path, dtype)
    arch_for(AutoConfig.from_pretrained(path))  # unsupported architecture: fail before loading weights
    kw: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        kw["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} has no loadable tokenizer ({e}); pass tokenizer=...") from e
    return model, tok


def load(
    source: str | Path | nn.Module,
    tokenizer: Any = None,
    adapter: str | Path | None = None,
    backend: BackendName = "transformer_lens",
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    merge_adapter: bool | None = None,
    device_map: Any = None,
    **engine_kwargs: Any,
) -> HookedModel:
    """Load a checkpoint into a :class:`~deltalens.hooks.model.HookedModel`.

    Args:
        source: a local HF checkpoint directory, a ``.gguf`` file, or an in-memory
            ``PreTrainedModel`` (then pass ``tokenizer``).
        tokenizer: overrides the checkpoint's tokenizer; required for in-memory models.
        adapter: a peft LoRA adapter directory trained on ``source``.
        backend: ``"transformer_lens"`` (TransformerBridge) or ``"nnsight"`` (TransformersModel).
        dtype: ``"float32"``, ``"bfloat16"``, ``torch.float16`` ...
        device: ``"cpu"``, ``"cuda"`` ... (ignored when ``device_map`` is given).
        merge_adapter: merge the LoRA into the weights. Always true for TransformerLens;
            for nnsight ``False`` keeps the adapter live (default: merge).
        device_map: passed to ``from_pretrained`` (accelerate), e.g. ``"auto"`` for multi-GPU.
        **engine_kwargs: passed to the backend engine (e.g. nnsight's ``TransformersModel``).

    Example:
        >>> base = dl.load("ckpts/base")
        >>> ft = dl.load("ckpts/base", adapter="ckpts/lora", backend="nnsight", merge_adapter=False)

    Raises:
        FileNotFoundError: a path does not exist.
        CheckpointError: not a checkpoint, an adapter for another base, an unsupported architecture.
    """
    import torch

    from deltalens.hooks.backend import NNsightBackend, TransformerLensBackend
    from deltalens.hooks.model import HookedModel

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name, got {dtype!r}")
    if merge_adapter is None:
        merge_adapter = True
    if adapter is not None and backend == "transformer_lens" and not merge_adapter:
        raise ValueError(
            "the TransformerLens bridge needs a merged adapter; use merge_adapter=True or nnsight"
        )

    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        _check_checkpoint_dir(path)
        if adapter is not None:  # validate the adapter dir before loading big weights
            _adapter_files(Path(adapter).expanduser())
        model, tok = _load_hf(path, torch_dtype, device_map)
        base_name, ckpt_hash = str(path), checkpoint_hash(path)
    else:
        if tokenizer is None:
            raise ValueError("an in-memory model needs tokenizer=...")
        model, tok = source, tokenizer
        model = model.to(torch_dtype)
        base_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        ckpt_hash = weight_hash(base_module(model))[:16]
    tok = tokenizer if tokenizer is not None else tok
    arch = arch_for(base_module(model).config)
    if device_map is None:
        model = model.to(device)

    adapter_str, h = None, ckpt_hash
    if adapter is not None:
        from peft import PeftModel

        a = Path(adapter).expanduser()
        check_adapter(a, base_module(model))
        peft_model = PeftModel.from_pretrained(model, str(a)).eval()
        model = peft_model.merge_and_unload() if merge_adapter else peft_model
        adapter_str = str(a)
        h = config_key({"checkpoint": ckpt_hash, "adapter": checkpoint_hash(a)})[:16]
    model.eval()

    if backend == "transformer_lens":
        be = TransformerLensBackend.build(model, tok, arch, base_name)
    else:
        be = NNsightBackend.build(model, tok, arch, **engine_kwargs)
    prov = Provenance(
        base=base_name,
        checkpoint=base_name if isinstance(source, str | Path) else None,
        adapter=adapter_str,
        content_hash=h,
        backend=backend,
        dtype=str(torch_dtype).replace("torch.", ""),
        arch=arch.name,
        adapter_merged=None if adapter is None else merge_adapter,
    )
    return HookedModel(be, tok, prov)
