"""HookedModel: one loaded checkpoint on one backend, behind one hook vocabulary."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from deltalens.hooks.batch import Batch, HookFn
from deltalens.hooks.cache import ActivationCache
from deltalens.hooks.edits import lower
from deltalens.hooks.inputs import Inputs, Positions, as_dtype, check_ids, check_positions, encode
from deltalens.hooks.names import NamesArg, all_hook_names, execution_order, resolve_names
from deltalens.hooks.provenance import Provenance
from deltalens.hooks.weights import (
    GROUPS,
    base_module,
    is_offloaded,
    live_weights,
    offloaded_weights,
    tensor_group,
    tensor_layer,
    transposed_weights,
    weight_edit,
)
from deltalens.hooks.writers import Untied, untie

if TYPE_CHECKING:
    from torch import nn

    from deltalens.hooks.backend import Backend



class HookHandle:
    """Returned by :meth:`HookedModel.add_hooks`; ``.remove()`` takes the hooks off again."""

    def __init__(self, model: HookedModel, key: int, names: list[str]) -> None:
        self._model, self._key, self.names = model, key, names

    def remove(self) -> None:
        """Take this handle's hooks off the model (idempotent)."""
        self._model._active.pop(self._key, None)

    def __repr__(self) -> str:
        live = self._key in self._model._active
        return f"HookHandle({self.names}, {'active' if live else 'removed'})"


def select_positions(x: Tensor, positions: Positions, batch: Batch) -> Tensor:
    """Cut ``[batch, pos, ...]`` down to the requested positions (patterns keep all)."""
    if positions is None:
        return x
    if positions == "last":
        idx = batch.last_index.to(x.device)
        return x[torch.arange(x.shape[0], device=x.device), idx]
    if isinstance(positions, int | slice):
        return x[:, positions]
    raise ValueError(f"positions must be None, 'last', an int or a slice; got {positions!r}")


class HookedModel:
    """A causal LM on a hook backend (TransformerLens bridge or nnsight), one vocabulary.

    Build it with :func:`deltalens.load`. The wrapped Hugging Face module is ``hf_model``; its
    parameters are the live weights, so an in-place weight edit is seen by every later forward.

    Example:
        >>> m = dl.load("ckpt/", backend="nnsight")
        >>> cache = m.run_with_cache(["Hello", "Hi there"], positions="last")
        >>> cache["blocks.0.hook_resid_post"].shape     # [batch, d_model]
        >>> with m.hooks({"blocks.0.hook_resid_post": lambda x: x * 0}):
        ...     m.logits("Hello")
    """

    def __init__(self, backend: Backend, tokenizer: Any, provenance: Provenance) -> None:
        self._backend = backend
        self.tokenizer = tokenizer
        self.provenance = provenance
        self.hf_model = backend.hf_model
        cfg = backend.base_config
        self.n_layers: int = backend.n_layers
        self.d_model: int = getattr(cfg, "hidden_size", None) or cfg.n_embd
        self.n_heads: int = getattr(cfg, "num_attention_heads", None) or cfg.n_head
        self.vocab_size: int = int(base_module(backend.hf_model).get_input_embeddings().weight.shape[0])
        self.max_positions: int | None = getattr(cfg, "max_position_embeddings", None) or getattr(
            cfg, "n_positions", None
        )
        self.hook_names: list[str] = all_hook_names(self.n_layers, backend.arch.has)
        self._active: dict[int, dict[str, HookFn]] = {}
        self._next_key = 0
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ---------------------------------------------------------------- basics
    @property
    def backend(self) -> str:
        """``"transformer_lens"`` or ``"nnsight"``."""
        return self._backend.name

    @property
    def engine(self) -> Any:
        """The backend object itself (a ``TransformerBridge`` or an nnsight ``TransformersModel``)."""
        return self._backend.engine

    def __repr__(self) -> str:
        p = self.provenance
        return (
            f"HookedModel(arch={p.arch}, backend={self.backend}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, dtype={p.dtype}, checkpoint={p.checkpoint or p.base!r}"
            + (f", adapter={p.adapter!r}" if p.adapter else "")
            + ")"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{k}</td><td><code>{v}</code></td></tr>" for k, v in self.provenance.to_dict().items()
        )
        return (
            f"<div><b>HookedModel</b> — {self.n_layers} layers, d_model {self.d_model}, "
            f"{len(self.hook_names)} hook points<table>{rows}</table></div>"
        )

    def tokenize(
        self,
        inputs: Inputs,
        attention_mask: Tensor | None = None,
        padding_side: str | None = None,
        chat: bool = False,
        template: str | None = None,
    ) -> Batch:
        """Turn strings or token ids into a padded :class:`Batch`.

        Args:
            inputs: a string, a list of strings, a ``[batch, pos]`` LongTensor, or lists of ids.
            attention_mask: with tensor inputs, ``[batch, pos]`` (default: all ones).
            padding_side: ``"left"`` / ``"right"`` (default: the tokenizer's).
        """
        if (chat or template is not None) and isinstance(inputs, str | list | tuple) and inputs:
            if isinstance(inputs, str) or isinstance(inputs[0], str):
                texts = self.format_prompts([inputs] if isinstance(inputs, str) else list(inputs), chat, template)
                inputs = texts
        ids, mask = encode(self.tokenizer, inputs, attention_mask, padding_side, add_special_tokens=not chat)
        mask = mask.long()
        check_ids(ids, mask, self.vocab_size, self.max_positions)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return Batch(
            ids.to(self._backend.device), mask.to(self._backend.device), pos.to(self._backend.device)
        )

    # ---------------------------------------------------------------- hooks
    def _check_names(self, names: Sequence[str]) -> list[str]:
        return resolve_names(list(names), self.hook_names)

    def add_hooks(self, fns: dict[str, HookFn]) -> HookHandle:
        """Attach hooks until ``handle.remove()``; ``fn(act) -> act | None`` (None keeps ``act``).

        Names may be globs (``blocks.*.hook_resid_post``); the same ``fn`` goes on every match.
        """
        expanded: dict[str, HookFn] = {}
        for pat, fn in fns.items():
            if not callable(fn):
                raise TypeError(f"hook for {pat!r} is not callable")
            for n in resolve_names(pat, self.hook_names):
                expanded[n] = fn
        key = self._next_key
        self._next_key += 1
        self._active[key] = expanded
        return HookHandle(self, key, list(expanded))

    @contextlib.contextmanager
    def hooks(self, fns: dict[str, HookFn]) -> Iterator[HookHandle]:
        """Context manager: hooks are active inside the block and removed in ``finally``."""
        handle = self.add_hooks(fns)
        try:
            yield handle
        finally:
            handle.remove()

    def active_edits(self) -> dict[str, list[str] | str | None]:
        """What currently changes this model's outputs: hooked names and the weight edit in force.

        ``{"hooks": [hook names with an active hook function], "weights": label or None}``; both
        empty means the model computes exactly what its checkpoint does.
        """
        live = self._backend.params if self._backend.params is not None else None
        if live is None:
            try:
                live = self.named_weights()
            except ValueError:  # a live adapter cannot carry weight edits
                live = {}
        return {"hooks": sorted({n for group in self._active.values() for n in group}), "weights": weight_edit(live)}

    def reset_hooks(self) -> None:
        """Remove every hook added with :meth:`add_hooks`."""
        self._active.clear()

    def _hook_fns(self) -> dict[str, list[HookFn]]:
        """The active hook functions by hook name, in the order they were added (not yet lowered)."""
        edits: dict[str, list[HookFn]] = {}
        for group in self._active.values():
            for name, fn in group.items():
                edits.setdefault(name, []).append(fn)
        return edits

    def _edits(self) -> dict[str, list[HookFn]]:
        """Engine-level edits: the active hook functions, lowered (see :func:`deltalens.hooks.edits.lower`)."""
        return lower(self._hook_fns())

    # ---------------------------------------------------------------- forward passes
    def _forward(
        self, batch: Batch, capture: Sequence[str], reduce: Callable[[str, Tensor], Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        capture = execution_order(capture, self.n_layers)
        edits = self._edits()
        with torch.inference_mode():
            return self._backend.forward(batch, capture, edits, reduce or (lambda n, x: x))

    def logits(
        self, inputs: Inputs, attention_mask: Tensor | None = None, chat: bool = False, template: str | None = None
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits ``[batch, pos, vocab]`` with the active hooks applied (``chat`` / ``template`` as in :meth:`generate`)."""
        batch = self.tokenize(inputs, attention_mask, chat=chat, template=template)
        logits, _ = self._forward(batch, [])
        return logits

    def run_with_cache(
        self,
        inputs: Inputs,
        names: NamesArg = "blocks.*.hook_resid_post",
        positions: Positions = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device = "cpu",
        attention_mask: Tensor | None = None,
        return_logits: bool = False,
        chat: bool = False,
        template: str | None = None,
    ) -> ActivationCache | tuple[Tensor, ActivationCache]:
        """Run a forward pass and cache the selected activations.

        Args:
            inputs: strings or token ids (batched with padding).
            names: exact name, glob, list, or predicate; default every ``hook_resid_post``.
            positions: ``None`` (all, ``[batch, pos, d]``), ``"last"`` (last *real* token from the
                attention mask, ``[batch, d]``), an int or a slice. ``attn.hook_pattern`` entries
                always keep every position (``[batch, head, q, k]``).
            dtype: cast cached tensors (``torch.float16`` or ``"float16"``); default keeps the model's.
            device: where cached tensors go (default CPU, detached).
            chat: wrap text prompts in the tokenizer's chat template (as :meth:`generate` does).
            template: a ``"...{prompt}..."`` string to wrap text prompts in instead.

        Returns:
            An :class:`ActivationCache` (or ``(logits, cache)`` with ``return_logits=True``).

        Raises:
            KeyError: an unknown hook name (the message lists the closest valid ones).
        """
        check_positions(positions)
        dtype = as_dtype(dtype)
        chosen = resolve_names(names, self.hook_names)
        batch = self.tokenize(inputs, attention_mask, chat=chat, template=template)

        def reduce(name: str, x: Tensor) -> Tensor:
            if not name.endswith(("hook_pattern", "hook_attn_scores")):
                x = select_positions(x, positions, batch)
            x = x.detach().to(device=device)
            if dtype is not None and x.is_floating_point():
                x = x.to(dtype)
            return x.clone()

        logits, acts = self._forward(batch, chosen, reduce)
        cache = ActivationCache(
            {n: acts[n] for n in chosen},
            input_ids=batch.input_ids.cpu(),
            attention_mask=batch.attention_mask.cpu(),
            positions=positions,
            meta={"provenance": self.provenance.to_dict()},
        )
        return (logits, cache) if return_logits else cache

    def gradients(
        self,
        inputs: Inputs,
        metric: Callable[[Tensor], Tensor],
        names: NamesArg = "blocks.*.hook_resid_post",
        attention_mask: Tensor | None = None,
        chat: bool = False,
        template: str | None = None,
        return_activations: bool = False,
        device: str | torch.device | None = "cpu",
    ) -> ActivationCache | tuple[ActivationCache, ActivationCache]:
        """Gradients ``d metric(logits) / d activation`` at the named hooks, with active hooks in force.

        Args:
            inputs: strings or token ids, as for :meth:`run_with_cache`.
            metric: ``metric(logits [batch, pos, vocab]) -> scalar tensor``.
            names: hook names (exact, glob, list or predicate).
            return_activations: also return the activations of the same forward pass.
            device: where the gradients (and activations) go, detached (default CPU); ``None``
                leaves them on the device the model computed them on.

        Returns:
            An :class:`ActivationCache` of gradients, each with its activation's shape; with
            ``return_activations=True``, ``(activations, gradients)``, both with the metric's value
            in ``meta["metric"]``.

        Example:
            >>> g = model.gradients(["Hi"], lambda lg: lg[:, -1, 42].sum(), names="blocks.*.hook_resid_post")
        """
        from deltalens.hooks.gradients import activation_gradients

        chosen = resolve_names(names, self.hook_names)
        batch = self.tokenize(inputs, attention_mask, chat=chat, template=template)
        out = activation_gradients(
            self._backend, self._hook_fns(), batch, metric, chosen, return_activations, device
        )
        grads, acts, value = out if return_activations else (out, None, None)
        ids, mask, prov = batch.input_ids.cpu(), batch.attention_mask.cpu(), self.provenance.to_dict()
        meta = {"provenance": prov, "kind": "gradients"}
        g_cache = ActivationCache(grads, input_ids=ids, attention_mask=mask, meta=meta)
        if acts is None:
            return g_cache
        g_cache.meta["metric"] = value
        a_meta = {"provenance": prov, "metric": value}
        return ActivationCache(acts, input_ids=ids, attention_mask=mask, meta=a_meta), g_cache

    # ---------------------------------------------------------------- generation
    def format_prompts(
        self, prompts: Sequence[str], chat: bool = False, template: str | None = None
    ) -> list[str]:
        """Apply a ``{prompt}`` template or the tokenizer's chat template to raw prompts."""
        if template is not None:
            if "{prompt}" not in template:
                raise ValueError(
                    "template must contain a '{prompt}' slot, e.g. 'User: {prompt}\\nAssistant:'"
                )
            return [template.replace("{prompt}", p) for p in prompts]
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    "chat=True but this tokenizer has no chat template; pass template='...{prompt}...'"
                )
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p in prompts
            ]
        return list(prompts)

    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = 32,
        chat: bool = False,
        template: str | None = None,
        batch_size: int = 16,
        progress: bool = False,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Greedy generation; returns only the new text of each prompt.

        Without active activation hooks this runs Hugging Face ``generate`` with its KV cache on the
        untouched model (on TransformerLens, a twin of the wrapped module that shares its weights, so
        in-place weight edits apply). With hooks active it runs a greedy loop through the backend so
        the hooks apply at every step.
        """
        single = isinstance(prompts, str)
        texts = self.format_prompts([prompts] if single else list(prompts), chat=chat, template=template)
        add_special = not chat  # a rendered chat template already carries its special tokens
        out: list[str] = []
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="generate", unit="batch")
        for s in starts:
            chunk = texts[s : s + batch_size]
            old = self.tokenizer.padding_side
            self.tokenizer.padding_side = "left"
            try:
                enc = self.tokenizer(chunk, padding=True, return_tensors="pt", add_special_tokens=add_special)
            finally:
                self.tokenizer.padding_side = old
            batch = self.tokenize(enc["input_ids"], enc["attention_mask"])
            new = self._generate_batch(batch, max_new_tokens, **generate_kwargs)
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return out

    def generate_ids(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        max_new_tokens: int = 32,
        **generate_kwargs: Any,
    ) -> Int[Tensor, "batch new"]:
        """Greedy continuation of token ids (new tokens only; rows that stop early are padded).

        Same decoding as :meth:`generate`, for callers that tokenise themselves.
        """
        return self._generate_batch(self.tokenize(input_ids, attention_mask), max_new_tokens, **generate_kwargs)

    def _generate_batch(self, batch: Batch, max_new_tokens: int, **kw: Any) -> Tensor:
        eos = self.tokenizer.eos_token_id
        if not self._active:
            with torch.inference_mode():
                gen = self._backend.plain.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=kw.pop("do_sample", False),
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos,
                    use_cache=True,
                    **kw,
                )
            return gen[:, batch.input_ids.shape[1] :]
        ids, mask = batch.input_ids, batch.attention_mask
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new = []
        for _ in range(max_new_tokens):
            b = Batch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
            logits, _ = self._forward(b, [])
            nxt = logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.tokenizer.pad_token_id), nxt)
            new.append(nxt)
            done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, (~done | (nxt == eos)).long()[:, None]], 1)
            if done.all():
                break
        return torch.stack(new, 1)

    # ---------------------------------------------------------------- weights
    def state_dict(self) -> dict[str, Tensor]:
        """Unprocessed Hugging Face weights (LoRA merged), keys as in the base checkpoint.

        This is what weight deltas are computed from; TransformerLens-processed weights
        (folded LayerNorm etc.) are never used. Prefer it to ``hf_model.state_dict()``: the
        TransformerLens bridge renames the wrapped modules.
        """
        return {k: v.detach() for k, v in self.named_weights(merged=True).items()}

    def named_weights(self, merged: bool = False) -> dict[str, Tensor]:
        """Live parameters keyed like :meth:`state_dict`, for reversible in-place edits.

        With a live (unmerged) LoRA adapter, ``merged=True`` returns merged copies instead;
        editing live weights under an unmerged adapter raises. A model whose ``device_map``
        offloads weights (to ``"cpu"`` or ``"disk"``) gives copies read from the offload with
        ``merged=True`` and refuses in-place edits.
        """
        if is_offloaded(self.hf_model):
            if not merged:
                raise ValueError(
                    "this model's weights are offloaded by its device_map (accelerate reads them from "
                    "CPU memory or disk for every forward), so they cannot be edited in place; load it "
                    "without offload (device_map=None or every module on one device) to edit weights"
                )
            return offloaded_weights(self.hf_model)
        if self._backend.params is not None:
            return dict(self._backend.params)
        return live_weights(self.hf_model, merged=merged)

    # ---------------------------------------------------------------- model facts
    weight_groups: tuple[str, ...] = GROUPS
    """The groups a weight tensor can belong to (see :meth:`weight_group`)."""

    @staticmethod
    def weight_group(name: str) -> str:
        """``embedding`` / ``unembedding`` / ``attn`` / ``mlp`` / ``norm`` / ``other`` for a weight name."""
        return tensor_group(name)

    @staticmethod
    def weight_layer(name: str) -> int | None:
        """The block index of a weight name (``model.layers.3.mlp.up_proj.weight`` -> 3), or None."""
        return tensor_layer(name)

    @property
    def transposed_weights(self) -> set[str]:
        """Names of weights stored ``[in, out]`` (GPT-2 ``Conv1D``); deltas orient them ``[out, in]``."""
        return transposed_weights(self.hf_model, self._backend.params)

    @property
    def tied_embeddings(self) -> bool:
        """True if the unembedding shares its tensor with the token embedding."""
        inner = base_module(self.hf_model)
        out, emb = inner.get_output_embeddings(), inner.get_input_embeddings()
        return out is not None and emb is not None and out.weight is emb.weight

    @property
    def device(self) -> torch.device:
        """The device of the model's (first) parameters, where inputs go."""
        return self._backend.device

    @property
    def norm_kind(self) -> str:
        """The architecture's norm: ``"rms"`` (gain ``w``), ``"rms_1p"`` (Gemma: gain ``1 + w``) or ``"layernorm"``."""
        return self._backend.arch.norm

    @property
    def has_live_adapter(self) -> bool:
        """True if a LoRA adapter is loaded unmerged (its weights cannot be edited in place)."""
        return base_module(self.hf_model) is not self.hf_model

    def unembedding(self) -> tuple[Float[Tensor, "vocab d_model"], Float[Tensor, " vocab"] | None]:
        """The live unembedding ``(W_U [vocab, d_model], b_U [vocab] or None)`` (HF orientation)."""
        head = base_module(self.hf_model).get_output_embeddings()
        return head.weight, getattr(head, "bias", None)

    def untie_embedding(self) -> Untied:
        """Give the unembedding its own copy of a tied token embedding until ``.retie()``.

        Both the hooked module and (TransformerLens) the untouched twin used for ``generate`` are
        untied; a model without tied embeddings gives an empty :class:`~deltalens.hooks.writers.Untied`.
        """
        shared = base_module(self.hf_model).get_input_embeddings().weight
        return untie([self.hf_model, self._backend.plain], shared)

    @property
    def final_norm(self) -> nn.Module:
        """The final norm (``ln_final``) as a callable module: ``[..., d_model] -> [..., d_model]``."""
        path = self._backend.arch.site("ln_final.hook_normalized")[0]
        return base_module(self.hf_model).get_submodule(path)

    def unembed(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Map normalised residual vectors to logits (the unembedding, plus any final logit soft-cap).

        ``model.unembed(model.final_norm(resid))`` on the last block's ``hook_resid_post`` gives the
        model's own logits.
        """
        inner = base_module(self.hf_model)
        head = inner.get_output_embeddings()
        logits = head(x.to(device=head.weight.device, dtype=head.weight.dtype))
        cap = getattr(self._backend.base_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def trainable_copy(self) -> nn.Module:
        """A detached copy of the wrapped Hugging Face module (a live LoRA adapter merged), to train."""
        import copy

        from peft import PeftModel

        hf = copy.deepcopy(self.hf_model)
        if isinstance(hf, PeftModel):
            hf = hf.merge_and_unload()
        for p in hf.parameters():  # peft froze the base weights; a copy to train starts unfrozen
            p.requires_grad_(True)
        return hf
