"""A node's computation from its own input: a layer's queries / keys / values, an MLP's output.

Edge-level attribution and edge patching give every attention head and every MLP its *own* copy
of the residual stream. This module recomputes what a node does with such a copy through the
model's own modules (the first norm and the q / k / v projections of a block, the second norm and
the MLP), with autograd, on both backends (under the TransformerLens bridge the wrapped Hugging Face
modules are called, so no hook point fires; under nnsight the module's envoy is called, which stands the
trace down for the call, so a recomputation inside a hook function neither feeds nor consumes any of
the trace's own module visits). The hook views are those of :mod:`deltalens.hooks.archs`:
``hook_q`` ``[..., head, d_head]``, ``hook_k`` / ``hook_v`` ``[..., kv_head, d_head]``, ``hook_mlp_out``
``[..., d_model]``.

Supported: pre-norm blocks whose heads and MLP write into the residual stream unchanged (GPT-2,
Llama, Mistral, Qwen2, Qwen3). Gemma 3 normalises each sublayer's output before adding it, so a
head's ``hook_result`` is not its write into the residual stream; it is refused.

Example:
    >>> nodes = NodeModules(model)
    >>> q, k, v = nodes.qkv(0, resid)         # resid: [batch, pos, d_model] (or more leading dims)
    >>> out = nodes.mlp(0, resid_mid)         # [batch, pos, d_model]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxtyping import Float
from torch import Tensor, nn

from deltalens.hooks.weights import base_module

if TYPE_CHECKING:
    from deltalens.hooks.model import HookedModel

EDGE_ARCHS: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
"""Architectures (``config.model_type``) whose nodes :class:`NodeModules` can recompute."""


def check_edge_arch(model: HookedModel) -> None:
    """Raise if ``model``'s architecture has no per-node recomputation.

    Raises:
        ValueError: the message names the architecture and the supported ones.
    """
    arch = model._backend.arch.name
    if arch not in EDGE_ARCHS:
        raise ValueError(
            f"edge attribution does not support architecture {arch!r} (its sublayer outputs are normalised "
            f"before they reach the residual stream, or it is untested); supported: {', '.join(EDGE_ARCHS)}"
        )


def _raw_module(hf_model: nn.Module, path: str) -> nn.Module:
    """The Hugging Face module at ``path`` itself (inside any TransformerLens bridge wrapper)."""
    mod = base_module(hf_model)
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
        mod = getattr(mod, "_original_component", mod)
    return mod


class NodeModules:
    """Recompute a block's queries / keys / values or MLP output from any residual tensor.

    Args:
        model: a loaded :class:`~deltalens.hooks.model.HookedModel` of a supported architecture.

    Raises:
        ValueError: the architecture is not in :data:`EDGE_ARCHS`.
    """

    def __init__(self, model: HookedModel) -> None:
        check_edge_arch(model)
        self._backend = model._backend
        self.arch = model._backend.arch
        self.n_heads, self.n_kv_heads, self.d_head = model._backend.head_shape
        self._hf = model.hf_model

    def _call(self, path: str, x: Tensor) -> Tensor:
        """Run the module at ``path`` on ``x`` outside any running trace's bookkeeping."""
        if self._backend.name == "nnsight":
            return self._backend._envoy(path)(x)
        return _raw_module(self._hf, path)(x)

    def _site_call(self, hook: str, x: Tensor) -> Tensor:
        return self._call(self.arch.site(hook).path, x)

    def qkv(
        self, layer: int, resid: Float[Tensor, "... d_model"]
    ) -> tuple[
        Float[Tensor, "... head d_head"],
        Float[Tensor, "... kv_head d_head"],
        Float[Tensor, "... kv_head d_head"],
    ]:
        """``(hook_q, hook_k, hook_v)`` of block ``layer`` if its ``hook_resid_pre`` were ``resid``.

        ``resid`` ``[..., d_model]`` -> ``q [..., head, d_head]``, ``k, v [..., kv_head, d_head]``. Any
        number of leading dimensions; the first norm and the projections are the model's own.
        """
        normed = self._site_call(f"blocks.{layer}.ln1.hook_normalized", resid)
        outs: dict[str, Tensor] = {}
        views = []
        for c in "qkv":
            site = self.arch.site(f"blocks.{layer}.attn.hook_{c}")
            if site.path not in outs:
                outs[site.path] = self._call(site.path, normed)
            views.append(self._backend.view(site.view, outs[site.path]))
        return views[0], views[1], views[2]

    def mlp(self, layer: int, resid_mid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``hook_mlp_out`` ``[..., d_model]`` of block ``layer`` if its ``hook_resid_mid`` were ``resid_mid``
        ``[..., d_model]`` (any leading dimensions; the second norm and the MLP are the model's own)."""
        normed = self._site_call(f"blocks.{layer}.ln2.hook_normalized", resid_mid)
        return self._site_call(f"blocks.{layer}.hook_mlp_out", normed)

    def __repr__(self) -> str:
        return (
            f"NodeModules(arch={self.arch.name}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"d_head={self.d_head})"
        )

