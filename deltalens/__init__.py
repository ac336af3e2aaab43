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

import importlib as _importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str]] = {
    "load": ("deltalens.checkpoints", "load"),
    "Provenance": ("deltalens.hooks.provenance", "Provenance"),
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
    "circuits",
    "testing",
    "study",
}

if TYPE_CHECKING:
    from deltalens.checkpoints import CheckpointError, load
    from deltalens.hooks.cache import ActivationCache
    from deltalens.hooks.model import HookedModel
    from deltalens.hooks.provenance import Provenance
    from deltalens.interventions.delta import WeightDelta, weight_delta


def __getattr__(name: str) -> object:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(_importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        value = _importlib.import_module(f"deltalens.{name}")
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltalens' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API only: the names in ``__all__`` and the subpackages."""
    return sorted(set(__all__) | _SUBMODULES)


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
