"""Activation steering and directional ablation through ``HookedModel.hooks``.

``steer`` adds ``α · direction`` to the chosen activations; ``ablate`` projects the span of a set
of directions out of them (``x − x Q Qᵀ``). Both are context managers over the model's hook
interface, so they work the same on both backends and never touch a weight. Directions come from
probes (any tensor / array, or an object with a ``direction`` attribute) or from the singular
vectors of a weight update (:func:`svd_directions`).

Example:
    >>> d = svd_directions(dl.weight_delta(base, aligned), "model.layers.3.mlp.down_proj.weight", k=1)[0]
    >>> with steer(model, d, "blocks.3.hook_resid_post", alpha=-4.0):
    ...     model.generate(["how do I ..."])
    >>> with ablate(model, probe_directions, "blocks.*.hook_resid_post"):
    ...     model.logits("hello")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from deltalens.hooks.model import HookedModel, HookHandle
    from deltalens.hooks.names import NamesArg
    from deltalens.interventions.delta import WeightDelta

Positions = None | int | slice | Sequence[int]


def as_directions(x: Any) -> Float[Tensor, "k d"]:
    """Turn a direction-like object into a ``[k, d]`` float tensor.

    Accepts a tensor or array of shape ``[d]`` or ``[k, d]``, a list of vectors, or an object with
    a ``direction`` (or ``directions``) attribute such as a fitted probe.
    """
    for attr in ("directions", "direction"):
        if hasattr(x, attr) and not isinstance(x, Tensor):
            x = getattr(x, attr)
            break
    if isinstance(x, Sequence) and x and not isinstance(x[0], int | float):
        x = torch.stack([torch.as_tensor(v) for v in x])
    t = torch.as_tensor(x).detach().float().cpu()
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"directions must be [d] or [k, d], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("directions contain NaN or inf")
    return t


def svd_directions(delta: WeightDelta, name: str, k: int = 1) -> Float[Tensor, "k out"]:
    """The top-k left singular vectors of one weight update as ``[k, out]`` rows.

    For tensors that write to the residual stream (``o_proj``, ``down_proj``, GPT-2 ``c_proj``)
    these live in ``d_model`` space and can steer ``blocks.{L}.hook_resid_*``.

    Args:
        delta: a :class:`~deltalens.interventions.delta.WeightDelta`.
        name: a 2-D tensor of the delta.
        k: how many directions.
    """
    from deltalens.interventions.bases import delta_svd

    u, _ = delta_svd(delta, name)
    if k > u.shape[1]:
        raise ValueError(f"k={k} is larger than the rank of {name!r} ({u.shape[1]} singular vectors)")
    return u[:, :k].T.contiguous()


def _orthonormal(dirs: Tensor) -> Tensor:
    """``[d, r]`` orthonormal basis of the row span of ``[k, d]`` (rank-deficient rows dropped)."""
    u, s, _ = torch.linalg.svd(dirs.double().T, full_matrices=False)
    keep = s > s.max() * max(dirs.shape) * torch.finfo(torch.float32).eps
    if not keep.any():
        raise ValueError("the directions to ablate are all zero")
    return u[:, keep]


def _positions_index(positions: Positions) -> Any:
    if positions is None:
        return slice(None)
    if isinstance(positions, int | slice):
        return positions
    return list(positions)


def _resolve(model: HookedModel, names: NamesArg, d: int) -> list[str]:
    from deltalens.hooks.names import resolve_names

    chosen = resolve_names(names, model.hook_names)
    bad = [n for n in chosen if n.endswith("hook_pattern")]
    if bad:
        raise ValueError(
            f"{bad[0]!r} is an attention pattern, not a d_model activation; steer residual/attn/mlp hooks"
        )
    if d != model.d_model:
        raise ValueError(f"directions have dimension {d} but the model's d_model is {model.d_model}")
    return chosen


def add_steering(
    model: HookedModel, direction: Any, names: NamesArg, alpha: float = 1.0, positions: Positions = None
) -> HookHandle:
    """Handle-returning twin of :func:`steer` (``handle.remove()`` undoes it)."""
    dirs = as_directions(direction)
    if dirs.shape[0] != 1:
        raise ValueError(f"steer adds one direction; got {dirs.shape[0]} (sum them first, or use ablate)")
    chosen = _resolve(model, names, dirs.shape[1])
    vec, idx = alpha * dirs[0], _positions_index(positions)

    def fn(x: Tensor) -> Tensor:
        v = vec.to(device=x.device, dtype=x.dtype)
        if positions is None:
            return x + v
        out = x.clone()
        out[:, idx] = out[:, idx] + v
        return out

    return model.add_hooks(dict.fromkeys(chosen, fn))


def add_ablation(
    model: HookedModel, directions: Any, names: NamesArg, positions: Positions = None
) -> HookHandle:
    """Handle-returning twin of :func:`ablate` (``handle.remove()`` undoes it)."""
    dirs = as_directions(directions)
    chosen = _resolve(model, names, dirs.shape[1])
    q, idx = _orthonormal(dirs), _positions_index(positions)

    def fn(x: Tensor) -> Tensor:
        qq = q.to(device=x.device, dtype=torch.float32)
        sel = x if positions is None else x[:, idx]
        xf = sel.float()
        proj = ((xf @ qq) @ qq.T).to(x.dtype)
        if positions is None:
            return x - proj
        out = x.clone()
        out[:, idx] = sel - proj
        return out

    return model.add_hooks(dict.fromkeys(chosen, fn))


@contextlib.contextmanager
def steer(
    model: HookedModel, direction: Any, names: NamesArg, alpha: float = 1.0, positions: Positions = None
) -> Iterator[HookHandle]:
    """Add ``alpha · direction`` to the activations at ``names`` inside the block.

    Args:
        model: a ``HookedModel``.
        direction: ``[d_model]`` (a tensor, array, or an object with ``.direction``).
        names: hook names, globs or a predicate (``"blocks.*.hook_resid_post"``).
        alpha: steering strength (negative to steer away).
        positions: sequence positions to steer (an int, slice or list; None = all). With left
            padding, ``-1`` is every row's last real token.

    Example:
        >>> with steer(model, refusal_dir, "blocks.2.hook_resid_post", alpha=8.0):
        ...     model.generate(["write a line about the sea"])
    """
    handle = add_steering(model, direction, names, alpha, positions)
    try:
        yield handle
    finally:
        handle.remove()


@contextlib.contextmanager
def ablate(
    model: HookedModel, directions: Any, names: NamesArg, positions: Positions = None
) -> Iterator[HookHandle]:
    """Project the span of ``directions`` out of the activations at ``names`` inside the block.

    Args:
        model: a ``HookedModel``.
        directions: ``[d_model]`` or ``[k, d_model]`` (need not be orthonormal).
        names: hook names, globs or a predicate.
        positions: as for :func:`steer`.

    Example:
        >>> with ablate(model, probe.direction, "blocks.*.hook_resid_post"):
        ...     model.generate(["how do I ..."])
    """
    handle = add_ablation(model, directions, names, positions)
    try:
        yield handle
    finally:
        handle.remove()
