"""Activations computed from a module's input: norm scales and normalised vectors, per-head results.

TransformerLens's norms expose ``hook_scale`` (``sqrt(mean(x²) + eps)``, ``[batch, pos, 1]``) and
``hook_normalized`` (``x / scale``; LayerNorm centres ``x`` first), before the norm's weight — the
folded norms of its default models. ``attn.hook_result`` is each head's write into the residual
stream through the output projection, ``[batch, pos, head, d_model]``; the heads' results plus the
projection's bias are its output. An edit of any of these replaces the module's output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KINDS: frozenset[str] = frozenset({"scale", "normalized", "result"})


def _eps(module: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        if hasattr(module, attr):
            return float(getattr(module, attr))
    raise AttributeError(f"{type(module).__name__} has no epsilon attribute")


def _centred(x: Tensor, kind: str) -> Tensor:
    """``x`` in fp32 at least, centred first for LayerNorm."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return xf - xf.mean(-1, keepdim=True) if kind == "layernorm" else xf


def norm_parts(module: nn.Module, x: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """``(scale [..., 1], normalized [..., d])`` of a norm's input ``x`` (computed in fp32 at least)."""
    xc = _centred(x, kind)
    scale = (xc.pow(2).mean(-1, keepdim=True) + _eps(module)).sqrt()
    return scale, xc / scale


def normalize(x: Tensor, scale: Tensor, kind: str) -> Tensor:
    """``x / scale`` (LayerNorm: centred first), for an edited scale."""
    return _centred(x, kind) / scale


def norm_output(module: nn.Module, normalized: Tensor, kind: str) -> Tensor:
    """The norm's output from (possibly edited) normalised vectors: its weight (and bias) applied."""
    w = module.weight.float() if normalized.dtype == torch.float32 else module.weight
    if kind == "rms_1p":
        return normalized * (1.0 + w)
    out = normalized * w
    bias = getattr(module, "bias", None)
    return out + bias if kind == "layernorm" and bias is not None else out


def _projection(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(W [d_model, heads * d_head], bias or None)`` of an output projection."""
    if hasattr(module, "base_layer"):
        raise ValueError(
            "attn.hook_result needs merged weights, but this output projection carries a live LoRA adapter: "
            "load the model with merge_adapter=True"
        )
    w = module.weight
    return (w.T if type(module).__name__ == "Conv1D" else w), getattr(module, "bias", None)


def head_results(module: nn.Module, z: Tensor) -> Tensor:
    """``[batch, pos, head, d_model]``: each head's part of ``z`` through the output projection ``module``.

    ``head_results(...).sum(-2) + bias`` is the projection's output.
    """
    w, _ = _projection(module)
    n, d = z.shape[-2], z.shape[-1]
    return torch.einsum("...hd,mhd->...hm", z, w.reshape(w.shape[0], n, d).to(z.dtype))


def sum_results(module: nn.Module):
    """A function rebuilding the projection's output from (possibly edited) head results."""
    _, bias = _projection(module)

    def rebuild(result: Tensor) -> Tensor:
        out = result.sum(-2)
        return out + bias.to(out.dtype) if bias is not None else out

    return rebuild
