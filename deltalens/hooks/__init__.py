"""The shared hook interface: one name vocabulary over TransformerLens and nnsight.

This package is the only owner of model facts: hook names and their sites per architecture
(``names``, ``archs``), the two engines (``backend``), the model object (``model``), its
activation cache (``cache``), weight-name facts (``weights``) and provenance (``provenance``).
Submodules load on first use, so importing ``deltalens.hooks`` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY: dict[str, str] = {
    "ActivationCache": "deltalens.hooks.cache",
    "Batch": "deltalens.hooks.batch",
    "HookHandle": "deltalens.hooks.model",
    "HookedModel": "deltalens.hooks.model",
    "Provenance": "deltalens.hooks.provenance",
    "all_hook_names": "deltalens.hooks.names",
    "parse_layers": "deltalens.hooks.names",
    "resolve_names": "deltalens.hooks.names",
}

if TYPE_CHECKING:
    from deltalens.hooks.batch import Batch
    from deltalens.hooks.cache import ActivationCache
    from deltalens.hooks.model import HookedModel, HookHandle
    from deltalens.hooks.names import all_hook_names, parse_layers, resolve_names
    from deltalens.hooks.provenance import Provenance


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltalens.hooks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ActivationCache",
    "Batch",
    "HookHandle",
    "HookedModel",
    "Provenance",
    "all_hook_names",
    "parse_layers",
    "resolve_names",
]
