"""Facts about a model's weight tensors: canonical names, their layer and group, live parameters.

This is the one place that parses Hugging Face tensor names
(``model.layers.3.self_attn.q_proj.weight``, ``transformer.h.0.mlp.c_fc.weight``,
``lm_head.weight``). Each name falls in one group:

``embedding`` (token / position embeddings), ``unembedding`` (``lm_head``), ``attn``, ``mlp``,
``norm`` (LayerNorm / RMSNorm gains and biases) or ``other``.

Canonical names are the unprocessed checkpoint's: the TransformerLens bridge wraps modules in
place (their names gain ``._original_component``) and peft adds ``base_model.model.`` and
``.base_layer.``; :func:`canonical_name` removes all of these.

Example:
    >>> tensor_group("model.layers.3.self_attn.q_proj.weight"), tensor_layer("model.layers.3.mlp.up_proj.weight")
    ('attn', 3)
    >>> tensor_module("model.layers.3.mlp.up_proj.weight")
    'mlp.up_proj'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal, Self

if TYPE_CHECKING:
    from torch import Tensor, nn

Group = Literal["embedding", "unembedding", "attn", "mlp", "norm", "other"]
GROUPS: tuple[str, ...] = ("embedding", "unembedding", "attn", "mlp", "norm", "other")

# Name parts per group, as data (HF naming across GPT-2, Llama, Mistral, Qwen2/3, Gemma 3).
_EMBED_PARTS = frozenset(
    {"embed_tokens", "embed_positions", "wte", "wpe", "word_embeddings", "position_embeddings"}
)
_UNEMBED_PARTS = frozenset({"lm_head", "embed_out"})
_ATTN_PARTS = frozenset({"self_attn", "attn", "attention"})
_MLP_PARTS = frozenset({"mlp", "feed_forward"})
_NORM_RE = re.compile(r"(^|_)(norm|ln|layernorm)(_|$)|^ln_\w+$|^ln_f$|norm$")
_BLOCK_RE = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer))\.(?P<layer>\d+)\.(?P<rest>.+)$")
# GPT-2 style ``Conv1D`` weights are stored ``[in, out]``; deltalens orients them ``[out, in]``
# so that "left singular vectors" always live in a layer's output space.
_CONV1D_RE = re.compile(
    r"(^|\.)h\.\d+\.(attn\.c_attn|attn\.q_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$"
)
_WRAPPER_PARTS = ("._original_component", ".base_layer")


def canonical_name(name: str) -> str:
    """A parameter name as in the unprocessed checkpoint (engine and peft wrappers removed)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.removeprefix("base_model.model.")


def tensor_group(name: str) -> Group:
    """The group of a tensor name (see the module docstring)."""
    parts = canonical_name(name).split(".")
    if any(p in _UNEMBED_PARTS for p in parts):
        return "unembedding"
    if any(p in _EMBED_PARTS for p in parts):
        return "embedding"
    owner = parts[-2] if len(parts) >= 2 else parts[0]
    if _NORM_RE.search(owner):
        return "norm"
    if any(p in _ATTN_PARTS for p in parts):
        return "attn"
    if any(p in _MLP_PARTS for p in parts):
        return "mlp"
    return "other"


def tensor_layer(name: str) -> int | None:
    """The block index in a tensor name (``model.layers.3.mlp.up_proj.weight`` -> 3), or None."""
    m = _BLOCK_RE.match(canonical_name(name))
    return int(m["layer"]) if m else None


def tensor_module(name: str) -> str:
    """The module of a tensor within its block, without ``.weight``: ``model.layers.3.mlp.up_proj.weight``
    -> ``mlp.up_proj``; biases keep ``.bias``; outside the blocks the name without the model prefix
    (``model.embed_tokens``, ``lm_head``)."""
    name = canonical_name(name)
    m = _BLOCK_RE.match(name)
    rest = m["rest"] if m else re.sub(r"^(?:model\.|transformer\.)", "", name)
    return rest.removesuffix(".weight")


def layer_pattern(name: str) -> str:
    """The tensor name with its block index replaced by ``*`` (the same tensor in every block)."""
    name = canonical_name(name)
    m = _BLOCK_RE.match(name)
    return f"{m['prefix']}.*.{m['rest']}" if m else name


def is_embedding(name: str) -> bool:
    """True for token / position embeddings and the unembedding (``lm_head``)."""
    return tensor_group(name) in ("embedding", "unembedding")


def is_conv1d_name(name: str) -> bool:
    """True for GPT-2 ``Conv1D`` weight names (stored ``[in, out]``)."""
    return bool(_CONV1D_RE.search(canonical_name(name)))


def base_module(hf_model: nn.Module) -> nn.Module:
    """The plain ``*ForCausalLM`` inside a peft wrapper (or the model itself)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return hf_model
    if isinstance(hf_model, PeftModel):
        return hf_model.base_model.model
    return hf_model


def module_dims(module: object) -> tuple[int, int] | None:
    """(out_features, in_features) of a linear-like module, or None."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.out_features, module.in_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight is (in, out)
        return module.nf, module.weight.shape[0]
    if hasattr(module, "num_embeddings"):
        return module.embedding_dim, module.num_embeddings
    return None


def transposed_weights(hf_model: nn.Module, params: dict[str, Tensor] | None = None) -> set[str]:
    """Names of weights stored ``[in, out]`` (GPT-2 ``Conv1D`` modules), found by module type.

    Found by parameter identity, so the names are those of ``params`` (the checkpoint's names,
    which the TransformerLens bridge keeps aside when it renames modules) or, without it, those
    of :func:`live_weights`.
    """
    conv = {id(m.weight) for m in hf_model.modules() if type(m).__name__ == "Conv1D"}
    named = params.items() if params is not None else base_module(hf_model).named_parameters()
    return {canonical_name(n) for n, p in named if id(p) in conv}


def live_weights(hf_model: nn.Module, merged: bool = False) -> dict[str, Tensor]:
    """Parameters keyed by their canonical names (see :func:`canonical_name`).

    Plain models give their live parameters (edit them in place to edit the model). Under a
    live (unmerged) LoRA adapter the live tensors are not the effective weights: ``merged=True``
    returns merged copies, and without it this raises.

    Raises:
        ValueError: a live LoRA adapter and ``merged=False``.
    """
    inner = base_module(hf_model)
    if inner is hf_model:
        return {canonical_name(k): v for k, v in inner.named_parameters()}
    if not merged:
        raise ValueError(
            "this model has a live (unmerged) LoRA adapter; in-place weight edits need merged weights: "
            "load it with merge_adapter=True"
        )
    lora_deltas: dict[str, Tensor] = {}
    for name, mod in inner.named_modules():
        if hasattr(mod, "get_delta_weight") and hasattr(mod, "base_layer"):
            d = sum(mod.get_delta_weight(a) for a in mod.active_adapters if a in mod.lora_A)
            lora_deltas[canonical_name(name + ".weight")] = d
    out: dict[str, Tensor] = {}
    for name, p in inner.named_parameters():
        if "lora_" in name:
            continue
        key = canonical_name(name)
        out[key] = p.detach() + lora_deltas[key] if key in lora_deltas else p
    return out


def is_offloaded(hf_model: nn.Module) -> bool:
    """True if a ``device_map`` offloaded some parameters (accelerate keeps them on the ``meta``
    device and brings each module's weights in from CPU memory or disk for its forward)."""
    return any(p.is_meta for p in hf_model.parameters())


def iter_offloaded_weights(hf_model: nn.Module, clone: bool = False) -> Iterator[tuple[str, Tensor]]:
    """``(canonical name, tensor)`` for every parameter of an offloaded model, one owning module at a time;
    each tensor has its parameter's own shape (e.g. ``[d_vocab, d_model]`` for the embedding).

    In the order of ``named_parameters`` (tied tensors once), keys as :func:`live_weights`. Parameters
    on a device are given as they are (detached); an offloaded one is read from where accelerate
    keeps it (CPU memory or disk) while its owning module is brought to the CPU, so only one
    module's offloaded weights are held at a time. Such a tensor may share storage with
    accelerate's offload copy: read it, or pass ``clone=True`` for a copy (editing it changes
    nothing in the model).
    """
    from itertools import groupby

    from accelerate.utils import align_module_device

    for owner, group in groupby(hf_model.named_parameters(), key=lambda item: item[0].rpartition(".")[0]):
        params = list(group)
        if not any(p.is_meta for _, p in params):
            yield from ((canonical_name(n), p.detach()) for n, p in params)
            continue
        mod = hf_model.get_submodule(owner)
        with align_module_device(mod, "cpu"):
            for n, p in params:
                if not p.is_meta:
                    yield canonical_name(n), p.detach()
                    continue
                t = getattr(mod, n.rpartition(".")[2]).detach()
                yield canonical_name(n), t.clone() if clone else t


def offloaded_weights(hf_model: nn.Module) -> dict[str, Tensor]:
    """Every parameter of an offloaded model, read from where accelerate keeps it, as CPU copies.

    Keys are canonical names (as :func:`live_weights`); tied tensors appear once, as there. Each
    value has its parameter's shape (``[out, in]`` / ``[in, out]`` as stored, ``[n]`` for biases and
    norms); the offloaded ones are copies on the CPU (editing them changes nothing in the model),
    read one owning module at a time (:func:`iter_offloaded_weights`), but all of them are held at
    once: to scan a model without holding it in memory, iterate :func:`iter_offloaded_weights`.
    """
    return dict(iter_offloaded_weights(hf_model, clone=True))


_WEIGHT_EDITS: dict[int, str] = {}  # id of a model's first live parameter -> label of the edit in force


def claim_weights(live: dict[str, Tensor], label: str) -> int:
    """Register a reversible weight edit on the model owning ``live``; refuse a second one.

    Raises:
        RuntimeError: another weight edit is already in force on this model.
    """
    key = id(next(iter(live.values())))
    if key in _WEIGHT_EDITS:
        raise RuntimeError(
            f"another weight edit ({_WEIGHT_EDITS[key]}) is in force on this model; restore it before starting a new one"
        )
    _WEIGHT_EDITS[key] = label
    return key


def release_weights(key: int) -> None:
    """End the weight edit registered under ``key`` (idempotent)."""
    _WEIGHT_EDITS.pop(key, None)


def weight_edit(live: dict[str, Tensor]) -> str | None:
    """The label of the weight edit in force on the model owning ``live``, or None."""
    return _WEIGHT_EDITS.get(id(next(iter(live.values())))) if live else None


class WeightEdit:
    """A reversible in-place edit of a model's live weight tensors, registered with the weight-edit registry.

    Making one claims the model (:func:`claim_weights`: a second edit in force is refused).
    :meth:`write` keeps each tensor's original (once, before its first write) and copies the new
    value in; :meth:`restore` writes the exact originals back under ``torch.no_grad``, runs the undo
    callbacks added with :meth:`on_restore` and releases the claim. Also a context manager.

    Attributes:
        label: the registry label (shown by ``model.active_edits()["weights"]``).
        active: True until :meth:`restore`.

    Raises:
        RuntimeError: another weight edit is in force on the model owning ``live``.

    Example:
        >>> with WeightEdit(model.named_weights(), "zero bias") as e:
        ...     e.write("lm_head.bias", live["lm_head.bias"], torch.zeros(vocab))
    """

    def __init__(self, live: dict[str, Tensor], label: str) -> None:
        self._key = claim_weights(live, label)
        self.label = label
        self._params: dict[str, Tensor] = {}
        self._originals: dict[str, Tensor] = {}
        self._undo: list[Callable[[], object]] = []
        self.active = True

    @property
    def edited(self) -> list[str]:
        """The canonical names of the tensors written so far (empty once restored)."""
        return list(self._originals)

    def save(self, name: str, param: Tensor) -> Tensor:
        """Keep a copy of ``param``'s current value as the original of ``name`` (once) and return it
        (same shape and dtype as ``param``)."""
        if name not in self._originals:
            self._params[name], self._originals[name] = param, param.detach().clone()
        return self._originals[name]

    def write(self, name: str, param: Tensor, new: Tensor) -> None:
        """Copy ``new`` (``param``'s shape, any dtype it casts from) into the live ``param`` (canonical
        name ``name``), its original kept first."""
        import torch

        self.save(name, param)
        with torch.no_grad():
            param.copy_(new)

    def on_restore(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` in :meth:`restore`, after the originals are written back (in the order added)."""
        self._undo.append(fn)

    def restore(self) -> None:
        """Write the exact original tensors back, run the undo callbacks, release the claim (idempotent)."""
        import torch

        if not self.active:
            return
        with torch.no_grad():
            for n, orig in self._originals.items():
                self._params[n].copy_(orig)
        for fn in self._undo:
            fn()
        self._originals, self._undo, self.active = {}, [], False
        release_weights(self._key)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
