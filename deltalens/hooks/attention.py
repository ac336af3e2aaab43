"""An eager attention function with hook points, registered with transformers' attention registry.

Models in transformers call their attention through a named function
(``config._attn_implementation``); deltalens registers ``"deltalens_eager"``, the models' own eager
attention with four hook points in it — ``attn.hook_rot_q`` / ``hook_rot_k`` (queries and keys after
rotary embeddings, ``[batch, pos, head, d_head]``, keys with the key-value head count),
``attn.hook_attn_scores`` (``[batch, head, q, k]``, after scaling and the mask) and
``attn.hook_pattern`` (``[batch, head, q, k]``). The engine that needs them switches a forward to
this function and installs per-module hook functions for its duration; without them it computes
exactly the eager attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

NAME = "deltalens_eager"
KINDS: dict[str, str] = {
    "attn.hook_rot_q": "rot_q",
    "attn.hook_rot_k": "rot_k",
    "attn.hook_attn_scores": "attn_scores",
    "attn.hook_pattern": "pattern",
}
"""Hook suffixes computed inside the attention function, and their kind."""

_HOOKS: dict[int, dict[str, Callable[[Tensor], Tensor]]] = {}  # id(attention module) -> kind -> fn


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, groups, t, d).reshape(b, kv * groups, t, d)


def hooked_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Eager attention (``[batch, head, pos, d_head]`` in, ``([batch, pos, head, d_head], pattern)`` out)."""
    fns = _HOOKS.get(id(module), {})

    def run(kind: str, x: Tensor) -> Tensor:
        return fns[kind](x) if kind in fns else x

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    query = run("rot_q", query.transpose(1, 2)).transpose(1, 2)
    key = run("rot_k", key.transpose(1, 2)).transpose(1, 2)
    groups = query.shape[1] // key.shape[1]
    keys, values = _repeat_kv(key, groups), _repeat_kv(value, groups)
    scores = torch.matmul(query, keys.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask
    scores = run("attn_scores", scores)
    pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    pattern = run("pattern", pattern)
    out = torch.matmul(pattern, values).transpose(1, 2).contiguous()
    return out, pattern


def register() -> str:
    """Register :func:`hooked_attention` as ``"deltalens_eager"`` (idempotent); return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, hooked_attention)
    AttentionMaskInterface.register(NAME, eager_mask)  # the same additive masks the eager path gets
    return NAME


@contextlib.contextmanager
def attention_hooks(fns: dict[nn.Module, dict[str, Callable[[Tensor], Tensor]]]) -> Iterator[None]:
    """Install ``{attention module: {kind: fn}}`` for the ``with`` block; removed in ``finally``."""
    keys = [id(m) for m in fns]
    _HOOKS.update({id(m): f for m, f in fns.items()})
    try:
        yield
    finally:
        for k in keys:
            _HOOKS.pop(k, None)
