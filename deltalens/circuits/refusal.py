"""Refusal directions (Arditi et al. 2024, "Refusal in language models is mediated by a single direction").

* :func:`refusal_directions`: the difference in means ``r_L = mean(harmful) − mean(harmless)`` of
  ``blocks.L.hook_resid_pre`` (the residual stream entering block ``L``, as in the paper) at the
  last real token of each prompt (or another post-instruction position), per layer and per stage.
* :func:`ablate_direction`: directional ablation, ``x ← x − (x·r̂) r̂`` at every position of every
  residual writer's output (``hook_embed``, ``hook_pos_embed``, every ``hook_attn_out`` and
  ``hook_mlp_out``) — or, with ``where="resid"``, of every ``hook_resid_pre|mid|post``.
* :func:`add_direction`: activation addition, ``x ← x + α·r`` at ``blocks.L.hook_resid_pre``, every position.
* :func:`orthogonalize`: the same ablation as a weight edit, ``W ← W − r̂ r̂ᵀ W`` for every
  residual writer (biases too), reversible and bit-exact on exit.
* :func:`direction_stats`: norm and cosine of each stage's direction to a reference stage's at
  the same layer — does fine-tuning rotate or shrink it?

Tied embeddings: :func:`orthogonalize` edits the token embedding, and a tied unembedding reads
the same tensor. The paper's identity (weight edit == ablation of every writer) only holds if
the unembedding keeps its original weights, so inside the block the unembedding is untied: it
gets its own copy of the original embedding and the embedding alone is orthogonalised; on exit
the original tensor is written back and the two are tied again.

Example:
    >>> rd = refusal_directions({"wa": wa, "harmful": ft}, harmful_prompts, harmless_prompts)
    >>> rd.to_frame().head(); rd.stats(reference="wa")
    >>> r = rd.vector(2, stage="wa")
    >>> with ablate_direction(wa, r):
    ...     wa.generate(harmful_prompts[:4])
    >>> with orthogonalize(wa, r) as h:
    ...     wa.active_edits()["weights"]
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deltalens.circuits.stages import STAGE, as_models
from deltalens.hooks.names import TOP_HOOKS
from deltalens.hooks.weights import WeightEdit

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float
    from torch import Tensor

    from deltalens.hooks.model import HookedModel, HookHandle
    from deltalens.hooks.writers import Untied, Writer

RESID_HOOKS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")
WHERE: tuple[str, ...] = ("all_writers", "resid")
FRAME_COLUMNS: tuple[str, ...] = (STAGE, "layer", "hook", "norm", "harmful_norm", "harmless_norm", "n_harmful", "n_harmless")
STATS_COLUMNS: tuple[str, ...] = (STAGE, "layer", "norm", "norm_ratio", "cosine")


# ---------------------------------------------------------------------------- input checks
def _texts(prompts: Any, arg: str) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    texts = getattr(prompts, "texts", prompts)
    if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{arg} must be a non-empty list of strings (or a PromptSet), got {type(prompts).__name__}")
    return list(texts)


def _check_layer(layer: Any, n_layers: int, arg: str = "layer") -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"{arg}={layer!r} is out of range: this model has {n_layers} layers (0..{n_layers - 1})")
    return layer


def _check_position(position: Any) -> None:
    ok = position == "last" or (isinstance(position, int) and not isinstance(position, bool) and position < 0)
    if not ok:
        raise ValueError(f"position={position!r}: expected 'last' or a negative int (-1 = the last real token)")


def _unit(model: HookedModel, direction: Any) -> Float[Tensor, " d_model"]:
    """``direction / ‖direction‖`` as a float64 CPU vector, after checking its size."""
    v = _vector(model, direction)
    n = v.norm()
    if not n > 0:
        raise ValueError("direction is the zero vector; a direction to ablate needs a non-zero norm")
    return v / n


def _vector(model: HookedModel, direction: Any) -> Float[Tensor, " d_model"]:
    import torch

    try:
        v = torch.as_tensor(direction).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"direction must be a [d_model] tensor or array, got {type(direction).__name__}") from None
    if v.ndim != 1 or v.shape[0] != model.d_model:
        raise ValueError(
            f"direction has shape {tuple(v.shape)}; expected ({model.d_model},), the model's d_model"
        )
    if not torch.isfinite(v).all():
        raise ValueError("direction contains NaN or inf")
    return v


# ---------------------------------------------------------------------------- directions
@dataclass
class RefusalDirections:
    """Difference-in-means directions per stage and layer.

    Attributes:
        layers: the layers, in the order of the rows of each mean.
        hook: ``"resid_pre"`` (default), ``"resid_mid"`` or ``"resid_post"``.
        position: ``"last"`` or a negative offset from the last real token.
        harmful_mean / harmless_mean: ``{stage: [n_layers_chosen, d_model]}`` (float64, CPU).
        n_harmful / n_harmless: prompt counts.

    Example:
        >>> rd.direction(3)            # unit vector (one stage)
        >>> rd.vector(3, stage="wa")   # the raw difference of means
    """

    layers: list[int]
    hook: str
    position: Any
    harmful_mean: dict[str, Tensor] = field(repr=False)
    harmless_mean: dict[str, Tensor] = field(repr=False)
    n_harmful: int = 0
    n_harmless: int = 0

    @property
    def stages(self) -> list[str]:
        """The stage names, in the order the models were given."""
        return list(self.harmful_mean)

    def _row(self, layer: int, stage: str | None) -> tuple[str, int]:
        if stage is None:
            if len(self.stages) != 1:
                raise ValueError(f"stage=None is ambiguous: give one of {self.stages}")
            stage = self.stages[0]
        if stage not in self.harmful_mean:
            raise KeyError(f"stage={stage!r} not in {self.stages}")
        if layer not in self.layers:
            raise ValueError(f"layer={layer!r} has no direction; computed layers are {self.layers}")
        return stage, self.layers.index(layer)

    def _diff(self, stage: str) -> Float[Tensor, "layer d_model"]:
        """``harmful_mean - harmless_mean`` of ``stage`` (float64), one row per entry of :attr:`layers`."""
        return self.harmful_mean[stage] - self.harmless_mean[stage]

    def vector(self, layer: int, stage: str | None = None) -> Float[Tensor, " d_model"]:
        """The raw difference of means ``r`` ``[d_model]`` at ``layer`` (float32; what :func:`add_direction` adds)."""
        stage, i = self._row(layer, stage)
        return self._diff(stage)[i].float()

    def direction(self, layer: int, stage: str | None = None) -> Float[Tensor, " d_model"]:
        """The unit vector ``r̂ = r / ‖r‖`` ``[d_model]`` at ``layer`` (float32).

        Raises:
            ValueError: ``r`` is zero (e.g. ``resid_pre`` of layer 0 when every prompt ends in the same token).
        """
        stage, i = self._row(layer, stage)
        r = self._diff(stage)[i]
        if not r.norm() > 1e-12 * max(1.0, float(self.harmful_mean[stage][i].norm())):
            raise ValueError(
                f"the difference of means of stage {stage!r} at layer {layer} is zero (both prompt sets "
                "have the same activation there, e.g. the same last token before block 0): no direction"
            )
        return (r / r.norm()).float()

    def vectors(self, stage: str | None = None) -> Float[Tensor, "layer d_model"]:
        """All raw vectors of one stage, ``[len(layers), d_model]`` (float32), one row per entry of :attr:`layers`."""
        stage, _ = self._row(self.layers[0], stage)
        return self._diff(stage).float()

    def to_frame(self) -> pd.DataFrame:
        """One row per (stage, layer): ``norm`` of ``r``, norms of both means, prompt counts."""
        import pandas as pd

        rows = []
        for s in self.stages:
            diff = self._diff(s)
            for i, layer in enumerate(self.layers):
                rows.append({
                    STAGE: s, "layer": layer, "hook": f"blocks.{layer}.hook_{self.hook}",
                    "norm": float(diff[i].norm()), "harmful_norm": float(self.harmful_mean[s][i].norm()),
                    "harmless_norm": float(self.harmless_mean[s][i].norm()),
                    "n_harmful": self.n_harmful, "n_harmless": self.n_harmless,
                })  # fmt: skip
        return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))

    def stats(self, reference: str | None = None) -> pd.DataFrame:
        """``stage, layer, norm, norm_ratio, cosine`` against the ``reference`` stage (default: the first)."""
        import pandas as pd

        ref = self.stages[0] if reference is None else reference
        if ref not in self.harmful_mean:
            raise ValueError(f"reference={reference!r} is not a stage; stages are {self.stages}")
        r0 = self._diff(ref)
        rows = []
        for s in self.stages:
            r = self._diff(s)
            cos = (r * r0).sum(-1) / (r.norm(dim=-1) * r0.norm(dim=-1))
            ratio = r.norm(dim=-1) / r0.norm(dim=-1)
            for i, layer in enumerate(self.layers):
                rows.append({STAGE: s, "layer": layer, "norm": float(r[i].norm()),
                             "norm_ratio": float(ratio[i]), "cosine": float(cos[i])})  # fmt: skip
        return pd.DataFrame(rows, columns=list(STATS_COLUMNS))

    def __repr__(self) -> str:
        norms = ", ".join(
            f"{s}: max ‖r‖ {float(self._diff(s).norm(dim=-1).max()):.3g}"
            for s in self.stages
        )
        return (
            f"RefusalDirections(stages={self.stages}, layers={self.layers}, hook=hook_{self.hook}, "
            f"position={self.position!r}, n_harmful={self.n_harmful}, n_harmless={self.n_harmless}; {norms})"
        )

    def _repr_html_(self) -> str:
        df = self.to_frame()[[STAGE, "layer", "norm", "harmful_norm", "harmless_norm"]]
        return (
            f"<div><b>RefusalDirections</b> — hook_{html.escape(self.hook)}, position "
            f"{html.escape(str(self.position))}, {self.n_harmful} harmful / {self.n_harmless} harmless prompts"
            + df.to_html(index=False, float_format=lambda x: f"{x:.4g}")
            + "</div>"
        )


def _select(x: Tensor, mask: Tensor, position: int) -> Tensor:
    """Rows ``x[b, last_real(b) + 1 + position]`` of ``[batch, pos, d]`` (``position < 0``)."""
    import torch

    from deltalens.hooks.batch import last_index

    last = last_index(mask)
    first = mask.long().argmax(-1)
    idx = last + 1 + position
    if (idx < first).any():
        raise ValueError(f"position={position} reaches before the first token of a prompt that is too short")
    return x[torch.arange(x.shape[0]), idx]


def _means(
    model: HookedModel, prompts: list[str], names: list[str], position: Any, batch_size: int, progress: bool, **fmt: Any
) -> Tensor:
    """Mean activation ``[len(names), d_model]`` (float64) over ``prompts`` at ``position``."""
    import torch
    from tqdm.auto import tqdm

    total = torch.zeros(len(names), model.d_model, dtype=torch.float64)
    starts = tqdm(range(0, len(prompts), batch_size), desc="means", disable=not progress, leave=False)
    for s in starts:
        chunk = prompts[s : s + batch_size]
        pos = "last" if position in ("last", -1) else None
        cache = model.run_with_cache(chunk, names=names, positions=pos, **fmt)
        for i, n in enumerate(names):
            x = cache[n] if pos == "last" else _select(cache[n], cache.attention_mask, position)
            total[i] += x.double().sum(0)
    return total / len(prompts)


def refusal_directions(
    models: Any,
    harmful: Any,
    harmless: Any,
    layers: Sequence[int] | None = None,
    position: str | int = "last",
    chat: bool = False,
    template: str | None = None,
    hook: str = "resid_pre",
    batch_size: int = 16,
    progress: bool = False,
) -> RefusalDirections:
    """Difference-in-means refusal directions, per layer, for one model or each stage.

    Args:
        models: a ``HookedModel``, a list or a dict ``{stage: model}``.
        harmful / harmless: prompts (strings or a ``PromptSet``), formatted with ``chat`` /
            ``template`` exactly as the model is prompted when it refuses.
        layers: which blocks (default all); each must be in ``0..n_layers-1``.
        position: ``"last"`` (the last real token of the formatted prompt, from the attention
            mask) or a negative offset from it (``-2`` = the token before; the paper's
            post-instruction positions are the template tokens after the instruction).
        chat / template: as for :meth:`HookedModel.run_with_cache`.
        hook: ``"resid_pre"`` (the paper's choice), ``"resid_mid"`` or ``"resid_post"``.
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        :class:`RefusalDirections` (raw means kept; ``.vector``, ``.direction``, ``.to_frame``, ``.stats``).

    Raises:
        ValueError: empty prompts, a layer out of range, a bad position or hook (before any forward pass).
    """
    ms = as_models(models)
    hs, hl = _texts(harmful, "harmful"), _texts(harmless, "harmless")
    _check_position(position)
    if hook not in RESID_HOOKS:
        raise ValueError(f"hook={hook!r}: expected one of {RESID_HOOKS}")
    n = min(m.n_layers for m in ms.values())
    chosen = list(range(n)) if layers is None else [_check_layer(ly, n, "layers") for ly in layers]
    if not chosen:
        raise ValueError("layers is empty: give at least one layer")
    names = [f"blocks.{ly}.hook_{hook}" for ly in chosen]
    kw = dict(position=position, batch_size=batch_size, progress=progress, chat=chat, template=template)
    means = {s: (_means(m, hs, names, **kw), _means(m, hl, names, **kw)) for s, m in ms.items()}
    return RefusalDirections(
        layers=chosen,
        hook=hook,
        position=position,
        harmful_mean={s: v[0] for s, v in means.items()},
        harmless_mean={s: v[1] for s, v in means.items()},
        n_harmful=len(hs),
        n_harmless=len(hl),
    )


def direction_stats(
    models: Any,
    harmful: Any,
    harmless: Any,
    layers: Sequence[int] | None = None,
    reference: str | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Does fine-tuning rotate or shrink the refusal direction?

    Computes :func:`refusal_directions` for every stage (``kwargs`` go to it) and returns
    ``stage, layer, norm, norm_ratio, cosine``: ``‖r‖`` of each stage's direction, its ratio to the
    reference stage's norm at that layer, and the cosine between the two. The ``stage`` column is
    always present (one model is compared with itself).

    Args:
        reference: the stage to compare with (default: the first).

    Example:
        >>> direction_stats({"wa": wa, "harmful": ft}, harmful, harmless, reference="wa")
    """
    ms = as_models(models)
    if reference is not None and reference not in ms:
        raise ValueError(f"reference={reference!r} is not a stage; stages are {list(ms)}")
    return refusal_directions(ms, harmful, harmless, layers=layers, **kwargs).stats(reference)


# ---------------------------------------------------------------------------- hook interventions
def _writer_hooks(model: HookedModel, where: str) -> list[str]:
    if where == "all_writers":
        embeds = [h for h in TOP_HOOKS if h in model.hook_names]
        return embeds + [f"blocks.{ly}.hook_{k}_out" for ly in range(model.n_layers) for k in ("attn", "mlp")]
    return [f"blocks.{ly}.hook_{h}" for ly in range(model.n_layers) for h in RESID_HOOKS]


@contextlib.contextmanager
def ablate_direction(model: HookedModel, direction: Any, where: str = "all_writers") -> Iterator[HookHandle]:
    """Directional ablation: ``x ← x − (x·r̂) r̂`` at every position, inside the block.

    Args:
        model: a ``HookedModel``.
        direction: ``[d_model]`` (normalised here; its length does not matter).
        where: ``"all_writers"`` — the output of every residual writer (``hook_embed``,
            ``hook_pos_embed``, each ``hook_attn_out`` and ``hook_mlp_out``): the residual stream then
            has no component along ``r̂`` anywhere, and the result equals :func:`orthogonalize`
            (on Gemma 3 the writers' outputs are taken after their post-norms) — or ``"resid"``:
            every ``hook_resid_pre``, ``hook_resid_mid`` and ``hook_resid_post``, as the paper's hooks.

    Example:
        >>> with ablate_direction(model, rd.direction(3)):
        ...     model.generate(["how do I ..."])
    """
    from deltalens.interventions.steer import ablate

    if where not in WHERE:
        raise ValueError(f"where={where!r}: expected one of {WHERE}")
    r = _unit(model, direction)
    with ablate(model, r.float(), _writer_hooks(model, where)) as handle:
        yield handle


@contextlib.contextmanager
def add_direction(model: HookedModel, direction: Any, layer: int, alpha: float = 1.0) -> Iterator[HookHandle]:
    """Activation addition: ``blocks.{layer}.hook_resid_pre ← x + alpha · direction`` at every position.

    ``direction`` ``[d_model]`` is used as given (the paper adds the raw difference of means, not a
    unit vector); the activation ``[batch, pos, d_model]`` gets it at every position.

    Example:
        >>> with add_direction(model, rd.vector(3), layer=3):
        ...     model.generate(["write a poem about the sea"])     # now refuses
    """
    from deltalens.interventions.steer import steer

    _check_layer(layer, model.n_layers)
    v = _vector(model, direction)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise ValueError(f"alpha={alpha!r}: expected a number")
    with steer(model, v.float(), f"blocks.{layer}.hook_resid_pre", alpha=float(alpha)) as handle:
        yield handle


# ---------------------------------------------------------------------------- weight orthogonalisation
class OrthogonalizationHandle(WeightEdit):
    """A weight orthogonalisation in force; :meth:`restore` writes the original tensors back.

    Also a context manager. :meth:`restore` re-ties an unembedding untied for the edit.

    Attributes:
        label: the registry label (shown by ``model.active_edits()["weights"]``).
        names: the canonical names of the edited tensors.
        untied: the unembedding modules given their own copy of the embedding (tied models).
    """

    def __init__(self, live: dict[str, Tensor], label: str) -> None:
        super().__init__(live, label)
        self._untied: Untied | None = None

    @property
    def names(self) -> list[str]:
        """The canonical names of the edited tensors (empty once restored)."""
        return self.edited

    @property
    def untied(self) -> int:
        """How many modules got their own copy of a tied embedding (0 untied, or once restored)."""
        return len(self._untied) if self._untied is not None else 0

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"OrthogonalizationHandle({self.label}, {len(self.names)} tensors, untied={self.untied}, {state})"


def _check_orthogonalizable(model: HookedModel) -> tuple[list[Writer], dict[str, Tensor]]:
    """The model's writers and its weights by name, after refusing a live LoRA adapter and post-normed
    writers (Gemma 3)."""
    from deltalens.hooks.model import HookedModel
    from deltalens.hooks.writers import residual_writers

    if not isinstance(model, HookedModel):
        raise TypeError(f"model must be a HookedModel (from dl.load), got {type(model).__name__}")
    if model.has_live_adapter:
        raise ValueError(
            "orthogonalize: this model has a live (unmerged) LoRA adapter, whose weights cannot be edited in "
            "place; load it with merge_adapter=True, or use ablate_direction"
        )
    live = model.named_weights()
    writers = residual_writers(model, live=live)
    normed = [w for w in writers if not w.direct]
    if normed:
        raise ValueError(
            f"orthogonalize: {model.provenance.arch} normalises each sublayer's output after its projection "
            f"({normed[0].post_norm}), so editing {normed[0].weight_name} cannot remove a residual direction; "
            "use ablate_direction(model, direction) (hooks after the norms) instead"
        )
    return writers, live


def _project_out(w: Tensor, r: Tensor, axis: int) -> Tensor:
    """``w`` with ``r̂`` projected out of its ``d_model`` axis (float64 arithmetic, ``w``'s dtype)."""
    w64, r64 = w.detach().double(), r.to(w.device)
    if w.ndim == 1:
        out = w64 - (w64 @ r64) * r64
    elif axis == 0:
        out = w64 - r64[:, None] * (r64 @ w64)[None, :]
    else:
        out = w64 - (w64 @ r64)[:, None] * r64[None, :]
    return out.to(w.dtype)


def apply_orthogonalization(model: HookedModel, direction: Any) -> OrthogonalizationHandle:
    """Handle-returning twin of :func:`orthogonalize` (``handle.restore()`` undoes it, bit-exactly).

    Args:
        model: a ``HookedModel`` (no live LoRA adapter, no post-normed writers).
        direction: ``[d_model]`` (normalised here; its length does not matter).

    Raises:
        ValueError / RuntimeError: as :func:`orthogonalize`, before any weight changes.
    """
    writers, live = _check_orthogonalizable(model)
    r = _unit(model, direction)
    label = f"orthogonalize(r̂ ⊥, {len(writers)} writers, r̂[:2]=[{r[0]:.3g}, {r[1]:.3g}])"
    handle = OrthogonalizationHandle(live, label)
    try:
        handle._untied = model.untie_embedding()
        handle.on_restore(handle._untied.retie)
        for w in writers:
            for name, t in ((w.weight_name, w.weight), (w.bias_name, w.bias)):
                if name is not None:
                    handle.write(name, t, _project_out(t, r, w.d_model_axis))
    except BaseException:
        handle.restore()
        raise
    return handle


@contextlib.contextmanager
def orthogonalize(model: HookedModel, direction: Any) -> Iterator[OrthogonalizationHandle]:
    """Weight orthogonalisation: ``W ← W − r̂ r̂ᵀ W`` for every residual writer, inside the block.

    ``direction`` is ``[d_model]`` (normalised here to ``r̂``). Every tensor of
    :func:`~deltalens.hooks.writers.residual_writers` (token and position
    embeddings, attention and MLP output projections, their biases) loses its component along
    ``r̂`` in the ``d_model`` axis, so no writer can write along ``r̂``: the model then computes
    what :func:`ablate_direction` (``where="all_writers"``) computes, with no hooks (so
    ``generate`` keeps its KV cache). The edit is registered with the weight-edit registry
    (``model.active_edits()["weights"]`` shows its label; caches key on it) and the exact
    original tensors come back on exit, also on exceptions.

    Tied embeddings: the unembedding is untied inside the block (it keeps the original weights,
    as the paper's identity needs; ``model.tied_embeddings`` is False meanwhile) and tied again on exit.

    Raises:
        ValueError: a direction of the wrong size or zero; a live LoRA adapter (load with
            ``merge_adapter=True``); an architecture whose writers are followed by a norm (Gemma 3:
            use :func:`ablate_direction`).
        RuntimeError: another weight edit is in force on the model.

    Example:
        >>> with orthogonalize(model, rd.direction(3)) as h:
        ...     model.generate(harmful_prompts)
    """
    handle = apply_orthogonalization(model, direction)
    try:
        yield handle
    finally:
        handle.restore()
