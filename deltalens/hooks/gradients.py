"""Gradients of a scalar metric of the logits with respect to activations at named hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from deltalens.hooks.names import execution_order

if TYPE_CHECKING:
    from deltalens.hooks.backend import Backend
    from deltalens.hooks.batch import Batch, HookFn

Metric = Callable[[Tensor], Tensor]
"""``metric(logits [batch, pos, vocab]) -> scalar tensor``."""


def activation_gradients(
    backend: Backend, edits: dict[str, list[HookFn]], batch: Batch, metric: Metric, names: list[str]
) -> dict[str, Tensor]:
    """``{name: d metric / d activation}`` for one forward through ``backend`` with ``edits`` in force.

    Each gradient has its activation's shape (``[batch, pos, d_model]``; patterns
    ``[batch, head, q, k]``), detached, on the CPU. A hook the metric does not depend on gets zeros.

    Raises:
        ValueError: ``metric`` did not return a scalar tensor that depends on the logits.
    """
    acts: dict[str, Tensor] = {}

    def keep(name: str, x: Tensor) -> Tensor:
        acts[name] = x
        return x

    order = execution_order(names, backend.n_layers)
    with torch.enable_grad():
        logits, _ = backend.forward(batch, order, edits, keep)
        value = metric(logits)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(
                f"metric must return a scalar tensor (e.g. logits[:, -1, a].sum()); got "
                f"{type(value).__name__}{tuple(value.shape) if isinstance(value, Tensor) else ''}"
            )
        if not value.requires_grad:
            raise ValueError("metric's value does not depend on the logits (it has no gradient)")
        grads = torch.autograd.grad(value.reshape(()), [acts[n] for n in names], allow_unused=True)
    return {
        n: (g if g is not None else torch.zeros_like(acts[n])).detach().cpu() for n, g in zip(names, grads)
    }
