"""Gradients of a scalar metric of the logits with respect to activations at named hooks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from deltalens.hooks.edits import lower

if TYPE_CHECKING:
    from deltalens.hooks.backend import Backend
    from deltalens.hooks.batch import Batch, HookFn

Metric = Callable[[Tensor], Tensor]
"""``metric(logits [batch, pos, vocab]) -> scalar tensor``."""


def _tap(acts: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """An edit that hands the forward a copy of ``x`` and keeps it: the kept tensor is on the forward's path.

    A captured tensor can be a side copy (a per-head view, a value computed from a module's input,
    or a norm output that an engine recomputes when no hook changed it), whose gradient is zero;
    the copy returned by an edit is what every later computation reads.
    """
    y = x.clone()
    if not y.requires_grad:  # e.g. after an edit that set a constant
        y.requires_grad_(True)
    acts[name] = y
    return y


def activation_gradients(
    backend: Backend,
    edits: dict[str, list[HookFn]],
    batch: Batch,
    metric: Metric,
    names: list[str],
    return_activations: bool = False,
    device: str | torch.device | None = "cpu",
) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, Tensor], float]:
    """``{name: d metric / d activation}`` for one forward through ``backend`` with ``edits`` in force.

    ``edits`` are the user's hook functions by hook name, not yet lowered (``HookedModel._hook_fns``).

    Each gradient has its activation's shape (``[batch, pos, d_model]``; patterns
    ``[batch, head, q, k]``), detached, on the CPU. A hook the metric does not depend on gets zeros.
    With ``return_activations=True``: ``(gradients, activations, metric value)`` from the same
    forward (activations detached, on the CPU). ``device=None`` leaves every tensor where the
    model computed it.

    Raises:
        ValueError: ``metric`` did not return a scalar tensor that depends on the logits.
    """
    acts: dict[str, Tensor] = {}
    taps = {n: [functools.partial(_tap, acts, n)] for n in names}
    # lowered together, so each tap sees what the user's edits made and resid_mid acts as in TransformerLens
    edits = lower({n: [*edits.get(n, []), *taps.get(n, [])] for n in {*edits, *taps}})
    with torch.enable_grad():
        logits, _ = backend.forward(batch, [], edits, lambda n, x: x)
        value = metric(logits)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(
                f"metric must return a scalar tensor (e.g. logits[:, -1, a].sum()); got "
                f"{type(value).__name__}{tuple(value.shape) if isinstance(value, Tensor) else ''}"
            )
        if not value.requires_grad:
            raise ValueError("metric's value does not depend on the logits (it has no gradient)")
        grads = torch.autograd.grad(value.reshape(()), [acts[n] for n in names], allow_unused=True)
    def put(x: Tensor) -> Tensor:
        return x.detach() if device is None else x.detach().to(device)

    out = {n: put(g if g is not None else torch.zeros_like(acts[n])) for n, g in zip(names, grads)}
    if not return_activations:
        return out
    return out, {n: put(acts[n]) for n in names}, float(value.detach())
