"""Load base, full fine-tuned, GGUF and LoRA checkpoints into a :class:`HookedModel`.

Everything is validated before any weight is loaded, so bad input fails with a clear error
and nothing is half-loaded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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

__all__ = [
    "AdapterMismatchError",
    "CheckpointError",
    "Provenance",
    "check_adapter",
    "check_finite",
    "checkpoint_hash",
    "load",
    "load_gguf",
]

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


_LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B")


def check_adapter(adapter: str | Path, base_model: nn.Module, base_hash: str | None = None) -> dict[str, Any]:
    """Check that a peft LoRA adapter fits ``base_model`` and is complete; return its config.

    Every LoRA tensor must belong to a linear-like module of the base with matching shapes, the
    file must hold LoRA tensors at all, and every module its ``target_modules`` select in the base
    must have both factors (an incomplete adapter would load as a silent no-op). An adapter
    written by ``deltalens.finetune`` records its parent's weight hash in ``cfg.json``; with
    ``base_hash`` given, that must match too.

    Raises:
        FileNotFoundError: no such directory.
        CheckpointError: not a LoRA adapter directory, an unreadable, empty or incomplete adapter file.
        AdapterMismatchError: the adapter was trained for a different base.
    """
    adapter = Path(adapter)
    cfg = _adapter_files(adapter)
    modules = dict(base_model.named_modules())
    shapes = _lora_shapes(adapter / "adapter_model.safetensors")
    problems = [p for key, shape in shapes.items() if (p := _shape_problem(key, shape, modules))]
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AdapterMismatchError(
            f"adapter {adapter} was trained for a different base model and does not match its base "
            f"(adapter base: {cfg.get('base_model_name_or_path')!r}): " + "; ".join(problems[:5]) + more
        )
    _check_complete(adapter, cfg, shapes, modules)
    rec = adapter / "cfg.json"
    if base_hash is not None and rec.is_file():
        want = json.loads(rec.read_text()).get("parent", {}).get("weight_hash")
        if want and want != base_hash:
            raise AdapterMismatchError(
                f"the adapter at {str(adapter)!r} was trained on a base with weight hash {want[:12]}…, "
                f"but the given base has {base_hash[:12]}…"
            )
    return cfg


def _lora_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the LoRA tensors in an adapter file, keyed by tensor name (read from the header)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if any(p in k for p in _LORA_PARTS)}
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise CheckpointError(f"cannot read the adapter weights {str(path)!r}: {e}") from e


def _lora_module(key: str) -> tuple[str, str]:
    """``(module name in the base, LoRA part)`` of an adapter tensor name."""
    part = next(p for p in _LORA_PARTS if p in key)
    return key.split(part)[0].removeprefix("base_model.model."), part


def _shape_problem(key: str, shape: tuple[int, ...], modules: dict[str, Any]) -> str | None:
    name, part = _lora_module(key)
    mod = modules.get(name)
    dims = module_dims(mod) if mod is not None else None
    if dims is None:
        return f"module {name!r} does not exist in the base model (or is not linear)"
    if "_A" in part and shape[-1] != dims[1]:
        return f"{name}: adapter expects in_features={shape[-1]}, base has {dims[1]}"
    if "_B" in part and shape[0] != dims[0]:
        return f"{name}: adapter expects out_features={shape[0]}, base has {dims[0]}"
    return None


def _targeted(cfg: dict[str, Any], modules: dict[str, Any]) -> set[str] | None:
    """Modules of the base that the adapter's ``target_modules`` select (peft's rule), or None if unknown."""
    import re

    targets = cfg.get("target_modules")
    if not targets or any(cfg.get(k) for k in ("layers_to_transform", "layers_pattern", "exclude_modules")):
        return None
    names = [n for n, m in modules.items() if n and module_dims(m) is not None]
    if isinstance(targets, str):
        return {n for n in names if re.fullmatch(targets, n)}
    return {n for n in names for t in targets if n == t or n.endswith("." + t)}


def _check_complete(adapter: Path, cfg: dict[str, Any], shapes: dict[str, Any], modules: dict[str, Any]) -> None:
    if not shapes:
        raise CheckpointError(
            f"the adapter {str(adapter)!r} holds no LoRA tensors (adapter_model.safetensors has no "
            "lora_A / lora_B entries): loading it would silently change nothing"
        )
    parts: dict[str, set[str]] = {}
    for key in shapes:
        name, part = _lora_module(key)
        parts.setdefault(name, set()).add("A" if "_A" in part else "B")
    missing = sorted(n for n in (_targeted(cfg, modules) or set()) if parts.get(n) != {"A", "B"})
    if missing:
        raise CheckpointError(
            f"the adapter {str(adapter)!r} is incomplete: its target_modules {cfg.get('target_modules')!r} "
            f"select {len(missing)} module(s) of the base without both LoRA factors in the file, "
            f"e.g. {missing[:3]}"
        )


# ------------------------------------------------------------------ loading
def checkpoint_n_layers(path: str | Path) -> int:
    """The number of transformer blocks of a checkpoint folder or ``.gguf`` file, read from its config
    alone (no weights are loaded).

    Example:
        >>> checkpoint_n_layers("ckpts/aligned")
        30
    """
    from transformers import AutoConfig

    from deltalens.hooks.archs import n_layers_of

    p = Path(path).expanduser()
    if p.is_file():
        return n_layers_of(AutoConfig.from_pretrained(p.parent, gguf_file=p.name))
    return n_layers_of(AutoConfig.from_pretrained(p))


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


def _read_weights(path: Path, read: Any) -> Any:
    """Run ``read()``; an unreadable weight file becomes a CheckpointError naming ``path``."""
    try:
        return read()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  (safetensors, gguf and struct raise their own types)
        raise CheckpointError(
            f"cannot read the weights at {str(path)!r} (truncated, empty or not a checkpoint?): "
            f"{type(e).__name__}: {e}"
        ) from e


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse a model with NaN or infinite weights, naming the first such tensor.

    Raises:
        CheckpointError: a parameter or buffer holds a non-finite value.
    """
    from itertools import chain

    import torch

    from deltalens.hooks.weights import is_offloaded, iter_offloaded_weights

    tensors = chain(model.named_parameters(), model.named_buffers())
    if is_offloaded(model):  # a device_map offloaded these: check what it reads back, one module at a time
        tensors = chain(iter_offloaded_weights(model), model.named_buffers())
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"the weights loaded from {source!r} are corrupted: tensor {name!r} holds NaN or infinite values"
            )


def _load_hf(
    path: Path, dtype: torch.dtype, device_map: Any, offload_folder: str | None = None
) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if path.is_file():
        return _read_weights(path, lambda: load_gguf(path, dtype))
    arch_for(AutoConfig.from_pretrained(path))  # unsupported architecture: fail before loading weights
    kw: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        kw["device_map"] = device_map
    if offload_folder is not None:
        kw["offload_folder"] = str(offload_folder)
    model = _read_weights(path, lambda: AutoModelForCausalLM.from_pretrained(path, **kw)).eval()
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
    offload_folder: str | Path | None = None,
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
        device_map: passed to ``from_pretrained`` (accelerate): ``"auto"`` (multi-GPU) or
            ``{module: 0 | "cpu" | "disk"}``; see :func:`check_placement` for what offloading keeps.
        offload_folder: accelerate's folder for weights it offloads to ``"disk"``.
        **engine_kwargs: passed to the backend engine (e.g. nnsight's ``TransformersModel``).

    Example:
        >>> base = dl.load("ckpts/base")
        >>> ft = dl.load("ckpts/base", adapter="ckpts/lora", backend="nnsight", merge_adapter=False)

    Raises:
        FileNotFoundError: a path does not exist.
        CheckpointError: not a checkpoint, an adapter for another base, an unsupported architecture.
    """
    from deltalens.hooks.model import HookedModel

    torch_dtype = _check_load_args(backend, dtype, adapter, merge_adapter)
    merge_adapter = True if merge_adapter is None else merge_adapter
    place = {"device": device, "device_map": device_map, "offload_folder": offload_folder}
    model, tok, base_name, ckpt_hash = _read_model(source, tokenizer, adapter, torch_dtype, **place)
    arch = arch_for(base_module(model).config)
    h = ckpt_hash
    if adapter is not None:
        model, h = _apply_adapter(model, Path(adapter).expanduser(), merge_adapter, ckpt_hash)
    check_finite(model, base_name if adapter is None else f"{base_name} + adapter {adapter}")
    model.eval()
    prov = Provenance(
        base=base_name,
        checkpoint=base_name if isinstance(source, str | Path) else None,
        adapter=None if adapter is None else str(Path(adapter).expanduser()),
        content_hash=h,
        backend=backend,
        dtype=str(torch_dtype).replace("torch.", ""),
        arch=arch.name,
        adapter_merged=None if adapter is None else merge_adapter,
    )
    return HookedModel(_build_backend(backend, model, tok, arch, base_name, engine_kwargs), tok, prov)


def _check_load_args(backend: str, dtype: Any, adapter: Any, merge_adapter: bool | None) -> torch.dtype:
    """Validate :func:`load`'s arguments before any file is read; return the torch dtype."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(
            f"dtype={dtype!r} is not a torch dtype; expected a torch.dtype or one of "
            "'float32', 'float16', 'bfloat16', 'float64'"
        )
    if adapter is not None and backend == "transformer_lens" and merge_adapter is False:
        raise ValueError(
            "the TransformerLens bridge needs a merged adapter; use merge_adapter=True or nnsight"
        )
    return torch_dtype


def check_placement(source: Any, device_map: Any = None, offload_folder: Any = None, adapter: Any = None) -> None:
    """Check where :func:`load` is asked to put the model, before anything is read.

    With a ``device_map``, accelerate places each module (``"auto"``: over the GPUs, then CPU
    memory, then disk; a dict: as given). Modules offloaded to ``"cpu"`` or ``"disk"`` keep their
    weights on the ``meta`` device and read them in for their forward. Caches, hooks, hook edits,
    gradients and :meth:`~deltalens.hooks.model.HookedModel.state_dict` (so weight deltas) equal
    the unsplit model's; in-place weight edits are refused (the weights are re-read every
    forward), and a LoRA adapter needs merging first.

    Raises:
        ValueError: an ``offload_folder`` without a ``device_map``, a ``device_map`` for an
            in-memory model or of an unknown form, ``"disk"`` without ``offload_folder``, an
            adapter on an offloaded model.
    """
    if device_map is None:
        if offload_folder is not None:
            raise ValueError(f"offload_folder={str(offload_folder)!r} needs a device_map (e.g. 'auto')")
        return
    if not isinstance(source, str | Path):
        raise ValueError(
            f"device_map={device_map!r} applies to a checkpoint path; an in-memory model is already "
            "placed (move it yourself, or save it and load the folder)"
        )
    if not isinstance(device_map, str | dict):
        raise ValueError(
            f"device_map={device_map!r} is not allowed; expected 'auto', 'balanced', 'sequential', a "
            "device ('cpu', 'cuda:0') or a dict {module name: device | 'cpu' | 'disk'}"
        )
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    if "disk" in values and offload_folder is None:
        raise ValueError(f"device_map={device_map!r} puts modules on 'disk'; pass offload_folder=FOLDER too")
    if adapter is not None and ("disk" in values or "cpu" in values and len(set(values)) > 1):
        raise ValueError(
            f"adapter={str(adapter)!r} with an offloading device_map={device_map!r} is not supported: "
            "load it without a device_map, save the merged model (m.hf_model.save_pretrained(DIR)), "
            "then load DIR with the device_map"
        )


def _read_model(
    source: str | Path | nn.Module,
    tokenizer: Any,
    adapter: Any,
    dtype: torch.dtype,
    device: str,
    device_map: Any,
    offload_folder: Any,
) -> tuple[nn.Module, Any, str, str]:
    """The HF model, its tokenizer, a display name and a content hash, from a path or a module
    (the placement checked first, :func:`check_placement`)."""
    check_placement(source, device_map, offload_folder, adapter)
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        _check_checkpoint_dir(path)
        if adapter is not None:  # validate the adapter dir before loading big weights
            _adapter_files(Path(adapter).expanduser())
        model, tok = _load_hf(path, dtype, device_map, offload_folder)
        model = model if device_map is not None else model.to(device)
        return model, tokenizer if tokenizer is not None else tok, str(path), checkpoint_hash(path)
    if tokenizer is None:
        raise ValueError("an in-memory model needs tokenizer=...")
    model = source.to(dtype).to(device)
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    return model, tokenizer, name, weight_hash(base_module(model))[:16]


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the one FutureWarning peft triggers on every wrap: it reads transformers'
    deprecated ``is_gradient_checkpointing`` (peft's doing, not the caller's); other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing", category=FutureWarning)
        yield


def _apply_adapter(model: nn.Module, adapter: Path, merge: bool, ckpt_hash: str) -> tuple[nn.Module, str]:
    """Put a checked LoRA adapter on ``model`` (merged or live); return it and the combined hash."""
    from peft import PeftModel

    check_adapter(adapter, base_module(model))
    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
    if merge:
        _untie_adapted_embeddings(base_module(peft_model))
    model = peft_model.merge_and_unload() if merge else peft_model
    return model, config_key({"checkpoint": ckpt_hash, "adapter": checkpoint_hash(adapter)})[:16]


def _untie_adapted_embeddings(model: nn.Module) -> None:
    """Give the output embedding its own copy of a tied input embedding when the adapter wraps either.

    With the adapter live, a LoRA on one of two tied embeddings changes that module only; merged
    into the one shared tensor it would change both. Untying first (as peft advises) makes the
    merged model compute what the live adapter computes.
    """
    import torch

    pair = [model.get_input_embeddings(), model.get_output_embeddings()]
    if any(m is None for m in pair) or not any(hasattr(m, "get_base_layer") for m in pair):
        return
    inp, out = (m.get_base_layer() if hasattr(m, "get_base_layer") else m for m in pair)
    if inp.weight.data_ptr() != out.weight.data_ptr():
        return
    out.weight = torch.nn.Parameter(out.weight.detach().clone(), requires_grad=out.weight.requires_grad)
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False


def _build_backend(
    backend: str, model: nn.Module, tok: Any, arch: Any, name: str, engine_kwargs: dict[str, Any]
) -> Any:
    from deltalens.hooks.backend import NNsightBackend, TransformerLensBackend

    if backend == "transformer_lens":
        return TransformerLensBackend.build(model, tok, arch, name)
    return NNsightBackend.build(model, tok, arch, **engine_kwargs)
