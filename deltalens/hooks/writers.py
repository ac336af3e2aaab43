"""The residual writers: every weight tensor whose output is added to the residual stream.

One :class:`Writer` per write: the token embedding (``"embed"``), GPT-2's position embedding
(``"pos_embed"``), each layer's attention output projection (``"a{L}"``: ``o_proj`` / GPT-2
``attn.c_proj``, with its bias if any) and each layer's MLP output projection (``"m{L}"``:
``down_proj`` / GPT-2 ``mlp.c_proj``, with its bias). The residual stream after block ``L`` is
exactly the sum of the writes of ``embed``, ``pos_embed`` and every ``a{l}`` / ``m{l}`` with
``l <= L`` (each writer's output is the activation at :attr:`Writer.hook`).

Storage layout differs: Hugging Face ``Linear`` stores ``[out, in]`` (``d_model`` on axis 0),
GPT-2 ``Conv1D`` stores ``[in, out]`` (``d_model`` on axis 1), embeddings store
``[vocab | n_positions, d_model]`` (axis 1). :attr:`Writer.d_model_axis` says which, and
:attr:`Writer.oriented` is always the ``[d_model, n_in]`` view (``n_in``: the MLP's neurons for
``m{L}``, ``n_heads · d_head`` for ``a{L}``, the vocabulary or positions for embeddings).

Gemma 3 normalises each sublayer's output *after* the output projection
(``post_attention_layernorm`` / ``post_feedforward_layernorm``) and only then adds it to the
residual. There the projection is not a direct residual writer: :attr:`Writer.post_norm` names
the norm in between (``None`` everywhere else). An edit of such a weight (e.g. projecting a
direction out of it) does not carry through the norm's per-channel gain and rescaling, so code
that needs a direct writer must check :attr:`Writer.direct`.

The table is derived from the architecture's hook sites (:mod:`deltalens.hooks.archs`): the
attention writer is the module at ``attn.hook_z`` (the output projection's input), the MLP
writer the module at ``mlp.hook_post``; a ``hook_attn_out`` / ``hook_mlp_out`` site outside that
sublayer is the post-norm.

Example:
    >>> ws = residual_writers(model)
    >>> [(w.name, w.layer, tuple(w.oriented.shape)) for w in ws][:3]
    [('embed', -1, (64, 512)), ('a0', 0, (64, 64)), ('m0', 0, (64, 128))]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deltalens.hooks.names import TOP_HOOKS

if TYPE_CHECKING:
    from jaxtyping import Float
    from torch import Tensor

    from deltalens.hooks.archs import ArchSpec


@dataclass(frozen=True, eq=False)
class Writer:
    """One tensor that writes into the residual stream (see the module docstring).

    Attributes:
        name: ``"embed"``, ``"pos_embed"``, ``"a{L}"`` or ``"m{L}"``.
        layer: the block index (``-1`` for embeddings).
        kind: ``"embed"`` / ``"pos_embed"`` / ``"attn"`` / ``"mlp"``.
        hook: the hook whose activation is this writer's output (``"blocks.3.hook_mlp_out"``).
        module: the Hugging Face module path (``"model.layers.3.mlp.down_proj"``).
        weight_name: canonical name of the weight (as in :meth:`HookedModel.named_weights`).
        weight: the live weight parameter (edit it in place to edit the model).
        d_model_axis: the axis of ``weight`` that is ``d_model`` (0 for ``Linear``, 1 for ``Conv1D``
            and embeddings).
        bias_name: canonical name of the bias, or None.
        bias: the live ``[d_model]`` bias, or None.
        post_norm: module path of a norm between this writer and the residual (Gemma 3), else None.
    """

    name: str
    layer: int
    kind: str
    hook: str
    module: str
    weight_name: str
    weight: Tensor
    d_model_axis: int
    bias_name: str | None = None
    bias: Tensor | None = None
    post_norm: str | None = None

    @property
    def direct(self) -> bool:
        """True if the output is added to the residual as it is (no norm in between)."""
        return self.post_norm is None

    @property
    def oriented(self) -> Float[Tensor, "d_model n_in"]:
        """The weight as a ``[d_model, n_in]`` view (a transpose where ``d_model`` is axis 1)."""
        return self.weight if self.d_model_axis == 0 else self.weight.T

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.weight.shape)
        extra = (", bias" if self.bias is not None else "") + (f", post_norm={self.post_norm!r}" if self.post_norm else "")
        return f"Writer({self.name}, {self.weight_name} [{shape}], d_model axis {self.d_model_axis}{extra})"


def _module_writer(
    arch: ArchSpec, live: dict[str, Tensor], layer: int, kind: str, conv1d: set[str]
) -> Writer:
    """The attention (``kind="attn"``) or MLP output projection of one block.

    ``conv1d``: the canonical names of the weights stored ``[in, out]`` (GPT-2 ``Conv1D``).
    """
    inner = "attn.hook_z" if kind == "attn" else "mlp.hook_post"
    out_hook = f"blocks.{layer}.hook_{kind}_out"
    path = arch.site(f"blocks.{layer}.{inner}").path
    out_site = arch.site(out_hook).path
    post_norm = None if path.startswith(out_site + ".") else out_site
    wname, bname = f"{path}.weight", f"{path}.bias"
    return Writer(
        name=f"{kind[0]}{layer}",
        layer=layer,
        kind=kind,
        hook=out_hook,
        module=path,
        weight_name=wname,
        weight=live[wname],
        d_model_axis=1 if wname in conv1d else 0,
        bias_name=bname if bname in live else None,
        bias=live.get(bname),
        post_norm=post_norm,
    )


def _embed_writer(arch: ArchSpec, live: dict[str, Tensor], hook: str) -> Writer:
    path = arch.site(hook).path
    name = hook.removeprefix("hook_")
    wname = f"{path}.weight"
    return Writer(name, -1, name, hook, path, wname, live[wname], 1)


def _writers_of(arch: ArchSpec, live: dict[str, Tensor], n_layers: int, conv1d: set[str]) -> list[Writer]:
    """The residual writers of a model given its arch spec and live weights (canonical names).

    Raises:
        KeyError: a writer's weight is missing from ``live`` (a model of another architecture).
    """
    out = [_embed_writer(arch, live, h) for h in TOP_HOOKS if arch.has(h)]
    for layer in range(n_layers):
        out += [_module_writer(arch, live, layer, k, conv1d) for k in ("attn", "mlp")]
    return out


def residual_writers(model: Any, merged: bool = False, live: dict[str, Tensor] | None = None) -> list[Writer]:
    """Every tensor that writes into the residual stream, in forward order.

    Args:
        model: a :class:`~deltalens.hooks.model.HookedModel` (either backend) or a plain Hugging Face
            ``*ForCausalLM``.
        merged: with a live (unmerged) LoRA adapter, return merged copies of the weights (read-only
            use, e.g. attribution); without it such a model raises, since its live tensors are not
            its effective weights.
        live: the model's weights by canonical name, if the caller already has them
            (``model.named_weights(merged=merged)``); read from the model otherwise.

    Returns:
        ``[Writer("embed"), (Writer("pos_embed"),) Writer("a0"), Writer("m0"), Writer("a1"), ...]``.

    Raises:
        ValueError: an unsupported architecture, or a live LoRA adapter without ``merged=True``.
    """
    from deltalens.hooks.archs import arch_for, n_layers_of
    from deltalens.hooks.weights import base_module, live_weights, transposed_weights

    if hasattr(model, "named_weights") and hasattr(model, "hf_model"):
        live = model.named_weights(merged=merged) if live is None else live
        hf, conv1d = base_module(model.hf_model), model.transposed_weights
    else:
        live = live_weights(model, merged=merged) if live is None else live
        hf, conv1d = base_module(model), transposed_weights(model)
    return _writers_of(arch_for(hf.config), live, n_layers_of(hf.config), conv1d)


class Untied:
    """Modules that shared a tied embedding tensor and now hold their own copy; :meth:`retie` undoes it.

    Made by :meth:`deltalens.hooks.model.HookedModel.untie_embedding`. ``len(untied)`` is the number
    of modules given a copy (0 for a model without tied embeddings).
    """

    def __init__(self, pairs: list[tuple[Any, Tensor]]) -> None:
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def retie(self) -> None:
        """Give each module its shared tensor back (idempotent)."""
        for module, param in self._pairs:
            module.weight = param
        self._pairs = []

    def __repr__(self) -> str:
        return f"Untied({len(self)} modules)"


def untie(roots: list[Any], shared: Tensor) -> Untied:
    """Give every non-embedding module under ``roots`` whose ``weight`` is ``shared`` its own copy.

    Args:
        roots: module trees to search (each module is visited once even if reachable twice).
        shared: the tied tensor (the token embedding's weight, ``[vocab, d_model]``).
    """
    import torch

    seen: set[int] = set()
    pairs: list[tuple[Any, Tensor]] = []
    for root in roots:
        for module in root.modules():
            if id(module) in seen or isinstance(module, torch.nn.Embedding):
                continue
            seen.add(id(module))
            if module._parameters.get("weight") is shared:
                pairs.append((module, shared))
                module.weight = torch.nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    return Untied(pairs)
