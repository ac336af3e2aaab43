"""deltalens: what does fine-tuning do inside a language model?

Load a base model and its fine-tuned versions (full checkpoints or LoRA adapters) into hooked
models — TransformerLens ``TransformerBridge`` or nnsight ``TransformersModel`` — behind one
hook interface, then cache activations, probe, measure subspace overlap, steer in weight space,
and draw it all offline.

Example:
    >>> import deltalens as dl
    >>> base = dl.load("ckpts/aligned")
    >>> ft = dl.load("ckpts/aligned", adapter="ckpts/lora-harmful")
    >>> delta = dl.weight_delta(base, ft)

Heavy libraries (torch, transformers, TransformerLens, nnsight) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str]] = {
    "load": ("deltalens.checkpoints", "load"),
    "Provenance": ("deltalens.checkpoints", "Provenance"),
    "CheckpointError": ("deltalens.checkpoints", "CheckpointError"),
    "HookedModel": ("deltalens.hooks.model", "HookedModel"),
    "ActivationCache": ("deltalens.hooks.cache", "ActivationCache"),
    "weight_delta": ("deltalens.interventions.delta", "weight_delta"),
    "WeightDelta": ("deltalens.interventions.delta", "WeightDelta"),
}
_SUBMODULES = {
    "hooks",
    "checkpoints",
    "interventions",
    "probes",
    "finetune",
    "data",
    "evals",
    "viz",
    "battery",
    "models",
    "testing",
    "alignment",
}

if TYPE_CHECKING:
    from deltalens.checkpoints import CheckpointError, Provenance, load
    from deltalens.hooks.cache import ActivationCache
    from deltalens.hooks.model import HookedModel
    from deltalens.interventions.delta import WeightDelta, weight_delta


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        value = importlib.import_module(f"deltalens.{name}")
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltalens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY) + list(_SUBMODULES))


__all__ = [
    "ActivationCache",
    "CheckpointError",
    "HookedModel",
    "Provenance",
    "WeightDelta",
    "__version__",
    "load",
    "weight_delta",
]
