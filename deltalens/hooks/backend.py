"""The two hook backends behind :class:`~deltalens.hooks.model.HookedModel`.

Both take a batch, the hook names to capture (in execution order), the active edit functions
and a ``reduce`` callback (position selection, dtype, device) applied the moment an activation
is captured, so full-sequence tensors are never kept longer than needed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from deltalens.hooks import attention, derived
from deltalens.hooks.archs import ArchSpec, n_layers_of
from deltalens.hooks.edits import apply_fns
from deltalens.hooks.weights import base_module

DERIVED = derived.KINDS

if TYPE_CHECKING:
    from deltalens.hooks.batch import Batch, HookFn

Reduce = Callable[[str, Tensor], Tensor]


@contextlib.contextmanager
def attn_implementation(hf_model: nn.Module, impl: str | None) -> Iterator[None]:
    """Temporarily switch the attention kernel (e.g. to ``eager`` for attention patterns)."""
    cfg = base_module(hf_model).config
    configs = [cfg] + [getattr(cfg, k) for k in ("text_config",) if hasattr(cfg, k)]
    old = [c._attn_implementation for c in configs]
    if impl is None or all(o == impl for o in old):
        yield
        return
    try:
        for c in configs:
            c._attn_implementation = impl
        yield
    finally:
        for c, o in zip(configs, old):
            c._attn_implementation = o


class Backend:
    """Common state of a backend: the HF module, its config, arch spec, layer count."""

    name = "base"

    def __init__(
        self,
        hf_model: nn.Module,
        arch: ArchSpec,
        engine: Any,
        params: dict | None = None,
        plain: nn.Module | None = None,
    ) -> None:
        self.hf_model = hf_model
        self.plain = plain if plain is not None else hf_model
        """The Hugging Face module to run when nothing is hooked (it shares the live weights)."""
        self.params = params  # parameter names as in the checkpoint, when the engine renames modules
        self.arch = arch
        self.engine = engine
        cfg = base_module(hf_model).config
        self.base_config = getattr(cfg, "text_config", None) or cfg
        self.n_layers = n_layers_of(cfg)

    @property
    def head_shape(self) -> tuple[int, int, int]:
        """``(n_heads, n_kv_heads, d_head)`` of the attention."""
        cfg = self.base_config
        n = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        kv = int(getattr(cfg, "num_key_value_heads", None) or n)
        d = int(getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", None) or cfg.n_embd) // n)
        return n, kv, d

    def view(self, kind: str | None, x: Tensor) -> Tensor:
        """The hook's view of a module tensor (see :class:`~deltalens.hooks.archs.Site`)."""
        if kind is None:
            return x
        n, kv, d = self.head_shape
        if kind in ("q", "k", "v"):
            i = "qkv".index(kind)
            x = x[..., i * n * d : (i + 1) * n * d]
        heads = kv if kind == "kv_heads" else n
        return x.reshape(*x.shape[:-1], heads, d)

    def unview(self, kind: str | None, x: Tensor, act: Tensor) -> Tensor:
        """The module tensor ``x`` with the part the hook sees replaced by ``act``."""
        if kind is None:
            return act
        flat = act.reshape(*act.shape[:-2], act.shape[-2] * act.shape[-1])
        if kind not in ("q", "k", "v"):
            return flat
        n, _, d = self.head_shape
        i = "qkv".index(kind)
        return torch.cat([x[..., : i * n * d], flat, x[..., (i + 1) * n * d :]], dim=-1)

    @property
    def device(self) -> torch.device:
        """The device of the wrapped model's parameters."""
        return next(self.hf_model.parameters()).device

    def plain_forward(self, batch: Batch) -> Tensor:
        """Logits ``[batch, pos, vocab]`` of the unhooked model (no engine in the way)."""
        return self.plain(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits

    def forward(
        self, batch: Batch, capture: list[str], edits: dict[str, list[HookFn]], reduce: Reduce
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run ``batch`` with ``edits`` applied; capture ``capture`` through ``reduce``.

        Returns:
            ``(logits [batch, pos, vocab], {hook name: reduce(name, activation)})``; activations
            arrive as ``[batch, pos, d_model]`` (``[batch, head, q, k]`` for ``attn.hook_pattern``)."""
        raise NotImplementedError


class TransformerLensBackend(Backend):
    """TransformerLens 4.x ``TransformerBridge``: hooks are the bridge's own ``HookPoint``s."""

    name = "transformer_lens"

    @classmethod
    def build(cls, hf_model: nn.Module, tokenizer: Any, arch: ArchSpec, name: str) -> TransformerLensBackend:
        """Wrap ``hf_model`` (not copied: its parameters stay the live weights) in this backend's engine."""
        from transformer_lens import TransformerBridge

        # The bridge re-creates a tokenizer from ``name_or_path``; deltalens tokenises itself, so
        # hand it a shallow copy that needs no reload.
        tok = copy.copy(tokenizer)
        tok.init_kwargs = {**tokenizer.init_kwargs, "name_or_path": name, "add_bos_token": True}
        cfg = hf_model.config
        # The bridge wraps HF modules in place (names gain ``_original_component``); keep the
        # checkpoint's parameter names, pointing at the same live tensors.
        params = dict(hf_model.named_parameters())
        if not getattr(cfg, "architectures", None):
            cfg.architectures = [type(hf_model).__name__]
        # An untouched twin of the HF module (its own modules and config, the same weight tensors):
        # unhooked generate runs on it with its KV cache (which the bridge's blocks get wrong), and
        # in-place weight edits reach both.
        shared = {id(t): t for t in [*hf_model.parameters(), *hf_model.buffers()]}
        plain = copy.deepcopy(hf_model, memo=shared).eval()
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tok, device=str(next(hf_model.parameters()).device)
        )
        return cls(hf_model, arch, bridge, params=params, plain=plain)

    def forward(self, batch, capture, edits, reduce):
        """See :meth:`Backend.forward` (always through the bridge, so that a hook that changes
        nothing changes no bit of the logits, as in TransformerLens)."""
        acts: dict[str, Tensor] = {}
        hooks: list[tuple[str, Callable]] = []
        results = any(n.endswith("hook_result") for n in [*capture, *edits])
        if results:  # the bridge computes per-head results only when asked to
            self.engine.set_use_attn_result(True)
        try:
            logits = self._run(batch, capture, edits, reduce, acts, hooks)
        finally:
            if results:
                self.engine.set_use_attn_result(False)
        return logits, acts

    def _run(self, batch, capture, edits, reduce, acts, hooks) -> Tensor:
        for name, fns in edits.items():
            hooks.append((name, lambda x, hook, fns=fns: apply_fns(fns, x)))
        for name in capture:
            hooks.append((name, lambda x, hook, n=name: acts.__setitem__(n, reduce(n, x))))
        return self.engine.run_with_hooks(
            batch.input_ids,
            fwd_hooks=hooks,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )


class NNsightBackend(Backend):
    """nnsight 0.8 ``TransformersModel``: hooks map to module inputs / outputs per architecture."""

    name = "nnsight"

    @classmethod
    def build(cls, hf_model: nn.Module, tokenizer: Any, arch: ArchSpec, **kw: Any) -> NNsightBackend:
        """Wrap ``hf_model`` (not copied: its parameters stay the live weights) in this backend's engine."""
        from nnsight import TransformersModel

        # nnsight sets padding_side on the tokenizer it is given; keep the user's untouched.
        lm = TransformersModel(hf_model, tokenizer=copy.copy(tokenizer), task="text-generation", **kw)
        return cls(hf_model, arch, lm)

    def _envoy(self, path: str) -> Any:
        env = self.engine
        if base_module(self.hf_model) is not self.hf_model:
            path = "base_model.model." + path
        for part in path.split("."):
            env = env[int(part)] if part.isdigit() else getattr(env, part)
        return env

    def forward(self, batch, capture, edits, reduce):
        """See :meth:`Backend.forward`."""
        from deltalens.hooks.names import execution_order

        if not capture and not edits:
            return self.plain_forward(batch), {}
        wanted = execution_order(set(capture) | set(edits), self.n_layers)
        inside = [n for n in wanted if self.arch.site(n).where == "attention"]
        saved: dict[str, Any] = {}
        outside = [n for n in wanted if n not in inside]
        impl = attention.register() if inside else None
        fns = self._attention_fns(inside, capture, edits, reduce, saved)
        with attn_implementation(self.hf_model, impl), attention.attention_hooks(fns):
            logits = self._trace(batch, outside, capture, edits, reduce, saved)
        return logits, {name: saved[name] for name in capture}

    def _trace(self, batch, names, capture, edits, reduce, saved) -> Tensor:
        with self.engine.trace(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        ):
            for group in _site_groups(self.arch, names):
                self._visit(group, capture, edits, reduce, saved)
            logits = self.engine.output.logits.save()
        return logits

    def _attention_fns(self, names, capture, edits, reduce, saved) -> dict[nn.Module, dict[str, Callable]]:
        """Per attention module, the functions its hooked attention calls (edit, then capture)."""
        fns: dict[nn.Module, dict[str, Callable]] = {}
        inner = base_module(self.hf_model)
        for name in names:
            module = inner.get_submodule(self.arch.site(name).path)
            kind = attention.KINDS[name.split(".", 2)[2]]
            fns.setdefault(module, {})[kind] = _edit_then_keep(name, edits.get(name, []), capture, reduce, saved)
        return fns

    def _visit(self, group, capture, edits, reduce, saved) -> None:
        """Read one module site once; view, edit and capture every hook that lives there."""
        (path, where), names = group
        env = self._envoy(path)
        value = env.input if where == "input" else env.output
        plain = [n for n in names if self.arch.site(n).view not in DERIVED]
        edited = False
        for name in plain:
            site = self.arch.site(name)
            tup = isinstance(value, tuple)
            part = value[site.idx or 0] if tup else value
            act = self.view(site.view, part)
            if name in edits:
                act = apply_fns(edits[name], act)
                part = self.unview(site.view, part, act)
                value = (*value[: site.idx or 0], part, *value[(site.idx or 0) + 1 :]) if tup else part
                edited = True
            if name in capture:
                saved[name] = reduce(name, act).save()
        if edited:
            if where == "input":
                env.input = value
            else:
                env.output = value
        derived = [n for n in names if n not in plain]
        if derived:
            x = value[0] if isinstance(value, tuple) else value
            new = self._derived(path, x, derived, capture, edits, reduce, saved)
            if new is not None:
                env.output = new

    def _derived(self, path, x, names, capture, edits, reduce, saved) -> Tensor | None:
        """Hooks computed from a module's input; returns the module's new output if any was edited."""
        module = base_module(self.hf_model).get_submodule(path)
        kinds = {self.arch.site(n).view: n for n in names}
        if "result" in kinds:
            result = derived.head_results(module, self.view("heads", x))
            return self._edit_keep(kinds["result"], result, capture, edits, reduce, saved, derived.sum_results(module))
        scale, normalized = derived.norm_parts(module, x, self.arch.norm)
        touched = False
        if "scale" in kinds:
            new = self._edit_keep(kinds["scale"], scale, capture, edits, reduce, saved)
            if new is not None:
                scale, touched = new, True
                normalized = derived.normalize(x, scale, self.arch.norm)
        if "normalized" in kinds:
            new = self._edit_keep(kinds["normalized"], normalized, capture, edits, reduce, saved)
            if new is not None:
                normalized, touched = new, True
        return derived.norm_output(module, normalized, self.arch.norm).to(x.dtype) if touched else None

    @staticmethod
    def _edit_keep(name, act, capture, edits, reduce, saved, rebuild=None) -> Tensor | None:
        """Apply ``name``'s edits to ``act`` and capture it; the edited value (rebuilt) or None."""
        new = apply_fns(edits[name], act) if name in edits else None
        if name in capture:
            saved[name] = reduce(name, act if new is None else new).save()
        if new is None:
            return None
        return rebuild(new) if rebuild is not None else new


def _edit_then_keep(name: str, fns: list[HookFn], capture, reduce, saved) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        x = apply_fns(fns, x)
        if name in capture:
            saved[name] = reduce(name, x)
        return x

    return run


def _site_groups(arch: ArchSpec, names: list[str]) -> list[tuple[tuple[str, str], list[str]]]:
    """Consecutive hooks (in execution order) grouped by the module site they read."""
    groups: list[tuple[tuple[str, str], list[str]]] = []
    for name in names:
        site = arch.site(name)
        key = (site.path, site.where)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(name)
        else:
            groups.append((key, [name]))
    return groups
