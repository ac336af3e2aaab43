"""Circuits across checkpoints: attribution, edge graphs, refusal directions.

Everything here sees only :class:`~deltalens.hooks.model.HookedModel`, so it runs on both
backends, and every entry point that takes a model also takes a list or dict of models
(W_0, W_A, fine-tunes) and returns one table keyed by ``stage``.

* Direct logit attribution: :func:`dla` (per head, neuron or layer; sums exactly to the final
  value along the direction with the final norm's scale frozen), :func:`logit_direction`.
* Attribution patching (gradient × activation difference): :func:`attribution_patching`.
* Edge attribution (EAP, EAP-IG): :func:`edge_attribution` → :class:`Circuit`;
  :func:`faithfulness`, :func:`diff`.
* Across checkpoints: :func:`head_patching_across`.
* Refusal directions (Arditi et al. 2024): :func:`refusal_directions`, :func:`ablate_direction`,
  :func:`add_direction`, :func:`orthogonalize`, :func:`direction_stats`.

Component names used in every table and graph: ``"embed"``, ``"a{L}.h{H}"`` (head H of layer L),
``"m{L}"`` (the MLP of layer L), ``"logits"``; layer-level rows use ``"attn{L}"`` / ``"mlp{L}"``.

Example:
    >>> from deltalens import circuits
    >>> df = circuits.dla({"wa": wa, "harmful": ft}, prompts, direction=(" Sorry", " Sure"), by="head")
"""

from __future__ import annotations

import importlib as _importlib

_LAZY: dict[str, str] = {
    "as_models": "deltalens.circuits.stages",
    "dla": "deltalens.circuits.dla",
    "logit_direction": "deltalens.circuits.dla",
    "attribution_patching": "deltalens.circuits.attribution",
    "edge_attribution": "deltalens.circuits.edges",
    "faithfulness": "deltalens.circuits.edges",
    "Circuit": "deltalens.circuits.graph",
    "diff": "deltalens.circuits.graph",
    "head_patching_across": "deltalens.circuits.across",
    "refusal_directions": "deltalens.circuits.refusal",
    "ablate_direction": "deltalens.circuits.refusal",
    "add_direction": "deltalens.circuits.refusal",
    "orthogonalize": "deltalens.circuits.refusal",
    "direction_stats": "deltalens.circuits.refusal",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltalens.circuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = sorted(_LAZY)
