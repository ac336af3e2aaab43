"""The shared hook interface: one name vocabulary over TransformerLens and nnsight."""

from deltalens.hooks.cache import ActivationCache
from deltalens.hooks.model import Batch, HookedModel, HookHandle
from deltalens.hooks.names import all_hook_names, parse_layers, resolve_names

__all__ = [
    "ActivationCache",
    "Batch",
    "HookHandle",
    "HookedModel",
    "all_hook_names",
    "parse_layers",
    "resolve_names",
]
