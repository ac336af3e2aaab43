"""Read the two sides of a weight delta: models, state dicts, safetensors checkpoints, peft adapters.

Everything comes out as unprocessed Hugging Face tensors keyed like the base checkpoint, never
TransformerLens-processed weights. A peft LoRA adapter comes out as factors ``(B·scaling, A)``
in the weight's ``[out, in]`` orientation, so it can stay low-rank.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deltalens.hooks.model import HookedModel
from deltalens.hooks.weights import canonical_name, is_conv1d_name, live_weights, transposed_weights

# peft names a linear LoRA's factors ``<mod>.lora_A.weight`` but an embedding LoRA's bare
# ``<mod>.lora_embedding_A`` (they are parameters, not modules); either may carry an adapter name.
_LORA_KEY = re.compile(r"^(?P<mod>.+)\.(?P<kind>lora_A|lora_B)(\.[^.]+)?\.weight$")
_LORA_EMBEDDING_KEY = re.compile(r"^(?P<mod>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)(\.[^.]+)?$")


DeltaSource = HookedModel | torch.nn.Module | Mapping[str, Tensor] | str | Path
"""One endpoint of a weight delta: a ``HookedModel``, a Hugging Face model, a state dict, or the
path of a safetensors checkpoint (directory or file) or of a peft LoRA adapter directory."""


@dataclass(kw_only=True)
class Side:
    """One side of a delta: dense fp32 tensors and/or LoRA factors on top of an unknown base."""

    label: str
    dense: dict[str, Tensor] | None = None
    lora: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # name -> (B·s [out,r], A [r,in])
    lora_full: dict[str, Tensor] = field(default_factory=dict)  # whole tensors from modules_to_save
    lora_add: dict[str, Tensor] = field(default_factory=dict)  # additive dense terms (LoRA biases)
    transposed: set[str] = field(default_factory=set)

    @property
    def is_adapter(self) -> bool:
        return self.dense is None


def _dedupe(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep floating tensors; drop later aliases of a shared storage (tied embeddings)."""
    out: dict[str, Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, expected a tensor")
        if not v.is_floating_point():
            continue
        key = (v.untyped_storage().data_ptr() + v.storage_offset() * v.element_size(), tuple(v.shape))
        if v.numel() > 0 and key in seen:
            continue
        seen[key] = k
        out[k] = v.detach()
    return out


def _read_safetensors_dir(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    )
    if not files:
        found = sorted(x.name for x in path.iterdir())[:8]
        raise FileNotFoundError(
            f"{path} holds no *.safetensors weights (found {found}); weight_delta reads safetensors "
            "checkpoints and peft adapters only; for other formats load the model with dl.load and pass it"
        )
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for pat, val in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pat}", module):
            return val
    return default


def _adapter_config(path: Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``, if it describes a plain LoRA adapter whose weights exist."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(
            f"{path}: peft type {cfg.get('peft_type')!r} is not LoRA; merge it and pass the merged model"
        )
    if cfg.get("use_dora"):
        raise ValueError(
            f"{path}: a DoRA adapter is not a low-rank ΔW; merge it (dl.load(..., adapter=...)) and pass the model"
        )
    if not (path / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has adapter_config.json but no adapter_model.safetensors")
    return cfg


def _adapter_tensors(path: Path, raw: dict[str, Tensor], side: Side) -> dict[str, dict[str, Tensor]]:
    """Sort an adapter's tensors: LoRA factors and biases per module (returned), whole tensors of
    ``modules_to_save`` into ``side.lora_full``."""
    groups: dict[str, dict[str, Tensor]] = {}
    for key, t in raw.items():
        key = key.removeprefix("base_model.model.")
        m = _LORA_KEY.match(key) or _LORA_EMBEDDING_KEY.match(key)
        if m:
            groups.setdefault(m["mod"], {})[m["kind"]] = t.float()
        elif ".lora_B." in key and key.endswith(".bias"):
            mod = key.split(".lora_B.")[0]
            groups.setdefault(mod, {})["bias"] = t.float()
        elif ".lora_" in key:
            raise ValueError(f"{path}: unsupported adapter tensor {key!r}")
        else:  # modules_to_save, or a targeted embedding's own weight (peft's save_embedding_layers):
            # a whole tensor that replaces the base's on load
            name = key.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
            side.lora_full[canonical_name(name)] = t.float()
    return groups


def _add_lora(side: Side, path: Path, mod: str, parts: dict[str, Tensor], cfg: dict[str, Any]) -> None:
    """Put one module's factors ``(B·scaling, A)`` (and its scaled LoRA bias) on ``side``."""
    emb = "lora_embedding_A" in parts
    a = parts.get("lora_embedding_A" if emb else "lora_A")
    b = parts.get("lora_embedding_B" if emb else "lora_B")
    if a is None or b is None:
        raise ValueError(f"{path}: module {mod!r} has only one of its LoRA factors")
    r = a.shape[0]
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, mod, cfg.get("lora_alpha", r))
    scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)
    name = mod + ".weight"
    if emb:  # embedding weight [vocab, d] = (B A)^T s with A [r, vocab], B [d, r]
        side.lora[name] = (a.T.contiguous() * scale, b.T.contiguous())
    else:  # [out, in] orientation; fan_in_fan_out (Conv1D) stores the weight transposed
        side.lora[name] = (b * scale, a)
        if bool(cfg.get("fan_in_fan_out", False)) or is_conv1d_name(name):
            side.transposed.add(name)
    if "bias" in parts:
        side.lora_add[mod + ".bias"] = parts["bias"] * scale


def _read_adapter(path: Path) -> Side:
    """A peft LoRA adapter directory as a :class:`Side` of factors on top of an unknown base."""
    from safetensors.torch import load_file

    cfg = _adapter_config(path)
    raw = load_file(str(path / "adapter_model.safetensors"))
    side = Side(label=str(path))
    for mod, parts in _adapter_tensors(path, raw, side).items():
        _add_lora(side, path, mod, parts, cfg)
    return side


def read_side(x: DeltaSource, label: str) -> Side:
    """Turn one argument of :func:`~deltalens.interventions.delta.weight_delta` into a :class:`Side`."""
    if isinstance(x, str | Path):
        path = Path(x).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"no checkpoint at {str(path)!r} ({label}): expected a safetensors checkpoint directory, "
                "a .safetensors file or a peft adapter directory"
            )
        if path.is_dir() and (path / "adapter_config.json").is_file():
            return _read_adapter(path)
        state = _read_safetensors_dir(path)
        dense = {k: v.float() for k, v in _dedupe(state).items()}
        return Side(label=str(path), dense=dense, transposed={k for k in dense if is_conv1d_name(k)})
    if isinstance(x, HookedModel):
        state = dict(x.state_dict())
        prov = x.provenance
        desc = prov.checkpoint or prov.base
        if prov.adapter:
            desc += f" + adapter {prov.adapter}"
        conv1d = x.transposed_weights
    elif isinstance(x, torch.nn.Module):
        state = {k: v.detach() for k, v in live_weights(x, merged=True).items()}
        desc = getattr(getattr(x, "config", None), "_name_or_path", "") or type(x).__name__
        conv1d = transposed_weights(x)
    elif isinstance(x, Mapping):
        state, desc, conv1d = {canonical_name(k): v for k, v in x.items()}, f"state dict ({len(x)} tensors)", None
    else:
        raise TypeError(
            f"{label}: expected a HookedModel, a Hugging Face model, a state dict or a checkpoint path; "
            f"got {type(x).__name__}"
        )
    dense = {k: v.detach().to("cpu", torch.float32) for k, v in _dedupe(state).items()}
    # trust module types over names where a module tree is available
    transposed = ({k for k in dense if k in conv1d} if conv1d else set()) or {
        k for k in dense if is_conv1d_name(k)
    }
    return Side(label=desc, dense=dense, transposed=transposed)
