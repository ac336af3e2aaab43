"""Activation patching, within one model (clean → corrupted) and across checkpoints.

:func:`patch` writes activations from a source :class:`~deltalens.hooks.cache.ActivationCache`
into a model's forward pass at chosen hooks and positions (context manager). :func:`patching_sweep`
does it one hook × position (× head) at a time and returns a tidy effect table — e.g. the
fine-tuned model's residual stream patched into the aligned model, layer by layer. Both go
through ``HookedModel.hooks``, so they behave the same on both backends.

Example:
    >>> table = patching_sweep(aligned, prompts, source_model=harmful, metric=refusal_logit_diff,
    ...                        names="blocks.*.hook_resid_post", positions="all")
    >>> table.pivot(index="layer", columns="position", values="effect")
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from deltalens.schemas import PATCHING

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.hooks.batch import Batch
    from deltalens.hooks.cache import ActivationCache
    from deltalens.hooks.model import HookedModel, HookHandle, Inputs
    from deltalens.hooks.names import NamesArg

Metric = Callable[[Tensor], float | Tensor]
PatchPositions = None | int | slice | Sequence[int]


def _index(positions: PatchPositions) -> Any:
    if positions is None:
        return slice(None)
    if isinstance(positions, int | slice):
        return positions
    return list(positions)


def _patch_fn(
    name: str,
    src: Tensor,
    cut: Any,
    positions: PatchPositions,
    heads: Sequence[int] | None,
    src_mask: Tensor | None,
) -> Callable[[Tensor], Tensor]:
    pattern = name.endswith("hook_pattern")
    full = cut is None or pattern
    idx = _index(positions)
    if heads is not None and not pattern:
        raise ValueError(f"heads= applies to attn.hook_pattern hooks only, not {name!r}")

    def fn(x: Tensor) -> Tensor:
        s = src.to(device=x.device, dtype=x.dtype)
        out = x.clone()
        if full:
            if s.shape != x.shape:
                raise ValueError(
                    f"patch {name!r}: the source activation is {tuple(s.shape)} but this run's is {tuple(x.shape)}; "
                    "the source and patched inputs must have the same batch size and length"
                )
            if pattern:  # [batch, head, q, k]; positions are query positions
                h = slice(None) if heads is None else list(heads)
                view_o, view_s = out[:, h], s[:, h]
                view_o[:, :, idx] = view_s[:, :, idx]
                out[:, h] = view_o
            else:
                out[:, idx] = s[:, idx]
            return out
        # the cache kept one position per row: [batch, d]
        if s.shape[0] != x.shape[0] or s.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"patch {name!r}: source {tuple(s.shape)} does not fit activation {tuple(x.shape)}"
            )
        if cut == "last":
            if src_mask is None:
                raise ValueError(f"patch {name!r}: a positions='last' cache needs its attention_mask")
            from deltalens.hooks.batch import last_index

            last = last_index(src_mask).to(x.device)
            out[torch.arange(x.shape[0], device=x.device), last] = s
        elif isinstance(cut, int):
            out[:, cut] = s
        else:
            raise ValueError(
                f"patch {name!r}: cannot place a cache cut with positions={cut!r}; cache all positions"
            )
        return out

    return fn


def add_patch(
    model: HookedModel,
    source_cache: ActivationCache,
    names: NamesArg = None,
    positions: PatchPositions = None,
    heads: Sequence[int] | None = None,
) -> HookHandle:
    """Handle-returning twin of :func:`patch` (``handle.remove()`` undoes it)."""
    from deltalens.hooks.names import resolve_names

    if names is not None and not callable(names) and not isinstance(names, str) and len(names) == 0:
        return model.add_hooks({})
    chosen = resolve_names(names, list(source_cache))
    cut = source_cache.positions
    if cut is not None and positions is not None:
        raise ValueError(
            f"the source cache holds only positions={cut!r}; it is patched there, so leave positions=None "
            "(or cache every position)"
        )
    mask = source_cache.attention_mask
    return model.add_hooks({n: _patch_fn(n, source_cache[n], cut, positions, heads, mask) for n in chosen})


@contextlib.contextmanager
def patch(
    model: HookedModel,
    source_cache: ActivationCache,
    names: NamesArg = None,
    positions: PatchPositions = None,
    heads: Sequence[int] | None = None,
) -> Iterator[HookHandle]:
    """Replace activations at ``names`` (and ``positions``) with the source cache's, inside the block.

    Args:
        model: the ``HookedModel`` to patch into.
        source_cache: activations from a clean run, of this model or another checkpoint, on inputs
            of the same batch size and length as the patched run.
        names: hooks to patch (names, globs, predicate); default every hook in the cache; an empty
            list patches nothing.
        positions: sequence positions (int, slice, list; None = all). A cache cut with
            ``positions="last"`` or an int is patched at those positions.
        heads: for ``attn.hook_pattern`` hooks, the heads to patch (default all).

    Example:
        >>> clean = model.run_with_cache(clean_ids, names="blocks.*.hook_resid_pre")
        >>> with patch(model, clean, "blocks.1.hook_resid_pre", positions=[3]):
        ...     logits = model.logits(corrupted_ids)
    """
    handle = add_patch(model, source_cache, names, positions, heads)
    try:
        yield handle
    finally:
        handle.remove()


def logit_diff_metric(
    good: int | Sequence[int], bad: int | Sequence[int], position: int = -1
) -> Callable[[Tensor], Tensor]:
    """A differentiable metric: mean over the batch of ``logit[good] − logit[bad]`` at ``position``.

    The metric maps logits ``[batch, pos, vocab]`` to a scalar tensor (float32, with the logits'
    graph), so it can be differentiated (attribution patching, edge attribution); :func:`logit_diff`
    is its float-valued twin. ``good`` / ``bad`` may be one id or one id per row. With left padding
    ``position=-1`` is each row's last real token.

    Example:
        >>> metric = logit_diff_metric(tok.encode(" Paris")[0], tok.encode(" Rome")[0])
    """

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
        last = logits[:, position].float()
        g = torch.as_tensor(good, device=last.device).reshape(-1)
        b = torch.as_tensor(bad, device=last.device).reshape(-1)
        if g.numel() == 1:
            g = g.expand(last.shape[0])
        if b.numel() == 1:
            b = b.expand(last.shape[0])
        rows = torch.arange(last.shape[0], device=last.device)
        return (last[rows, g] - last[rows, b]).mean()

    return metric


def logit_diff(good: int | Sequence[int], bad: int | Sequence[int], position: int = -1) -> Metric:
    """A metric: mean over the batch of ``logit[good] − logit[bad]`` at ``position``, as a float.

    The float of :func:`logit_diff_metric`'s value.

    Example:
        >>> metric = logit_diff(tok.encode(" Paris")[0], tok.encode(" Rome")[0])
    """
    diff = logit_diff_metric(good, bad, position)

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> float:
        return float(diff(logits))

    return metric


def paired_batches(
    model: HookedModel, clean: Inputs, corrupted: Inputs | None, what: str = "patching", **fmt: Any
) -> tuple[Batch, Batch]:
    """Left-padded ``(clean, corrupted)`` batches (``input_ids`` / ``attention_mask`` ``[batch, pos]``),
    checked to pair row by row and position by position; ``corrupted=None`` gives the clean batch twice.

    Left padding makes position -1 every row's last real token. ``fmt`` (``chat``, ``template``) goes
    to :meth:`~deltalens.hooks.model.HookedModel.tokenize`.

    Raises:
        ValueError: the two tokenize to different shapes (the message names ``what`` and both shapes).
    """
    c = model.tokenize(clean, padding_side="left", **fmt)
    t = c if corrupted is None else model.tokenize(corrupted, padding_side="left", **fmt)
    if t.input_ids.shape != c.input_ids.shape:
        raise ValueError(
            f"clean inputs tokenize to {tuple(c.input_ids.shape)} but corrupted to {tuple(t.input_ids.shape)}; "
            f"{what} needs the same batch size and length (pass token ids of equal length)"
        )
    return c, t


def _sweep_inputs(
    model: HookedModel, source: HookedModel, clean: Inputs, corrupted: Inputs | None
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(clean ids, mask), (corrupted ids, mask)``, checked to fit each other and both models."""
    c, t = paired_batches(model, clean, corrupted)
    if source.d_model != model.d_model:
        raise ValueError(f"source d_model {source.d_model} differs from the target's {model.d_model}")
    return (c.input_ids, c.attention_mask), (t.input_ids, t.attention_mask)


def _head_list(model: HookedModel, chosen: list[str], heads: bool | Sequence[int]) -> list[int | None]:
    """The heads to patch one at a time (``[None]``: whole hooks)."""
    if heads is False:
        return [None]
    if not all(n.endswith("hook_pattern") for n in chosen):
        raise ValueError("heads= needs attn.hook_pattern names, e.g. names='blocks.*.attn.hook_pattern'")
    return list(range(model.n_heads)) if heads is True else [int(h) for h in heads]


def _position_list(positions: str | Sequence[int] | None, t: int) -> list[int | None]:
    """The positions to patch one at a time (``[None]``: all together), negative ones resolved."""
    if positions == "all":
        return list(range(t))
    if positions is None:
        return [None]
    if isinstance(positions, str):
        raise ValueError(f"positions must be 'all', None or a list of ints, got {positions!r}")
    pos_list: list[int | None] = [int(p) % t if -t <= int(p) < t else int(p) for p in positions]
    bad = [p for p in pos_list if not 0 <= p < t]
    if bad:
        raise ValueError(f"positions {bad} are outside the inputs' {t} positions")
    return pos_list


@dataclass(frozen=True)
class _Target:
    """The patched run: the model, its inputs, the metric and the two reference values of it."""

    model: HookedModel
    ids: Tensor
    mask: Tensor
    metric: Metric
    m_clean: float
    m_corr: float


def _patch_rows(
    target: _Target,
    cache: ActivationCache,
    grid: tuple[list[str], list[int | None], list[int | None]],
    with_heads: bool,
    progress: bool,
) -> list[dict[str, Any]]:
    """One :data:`~deltalens.schemas.PATCHING` row per hook × position × head of ``grid``."""
    from tqdm.auto import tqdm

    from deltalens.hooks.names import layer_of

    chosen, pos_list, head_list = grid
    span = target.m_clean - target.m_corr
    rows = []
    total = len(chosen) * len(pos_list) * len(head_list)
    with tqdm(total=total, desc="patching", unit="run", disable=not progress) as bar:
        for name, pos, h in itertools.product(chosen, pos_list, head_list):
            at = None if pos is None else [pos]
            with patch(target.model, cache, [name], positions=at, heads=None if h is None else [h]):
                m = float(target.metric(target.model.logits(target.ids, attention_mask=target.mask)))
            row = {"name": name, "layer": layer_of(name), "position": -1 if pos is None else pos}
            if with_heads:
                row["head"] = h
            row.update(metric=m, effect=(m - target.m_corr) / span if span != 0 else float("nan"))
            rows.append(row)
            bar.update(1)
    return rows


def patching_sweep(
    model: HookedModel,
    clean: Inputs,
    corrupted: Inputs | None = None,
    metric: Metric | None = None,
    *,
    source_model: HookedModel | None = None,
    names: NamesArg = "blocks.*.hook_resid_pre",
    positions: str | Sequence[int] | None = "all",
    heads: bool | Sequence[int] = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch one hook × position (× head) at a time from a clean source run into a target run.

    Within a model, ``patching_sweep(model, clean, corrupted, metric=...)`` caches ``model`` on
    ``clean`` and patches into its run on ``corrupted``. Across checkpoints,
    ``patching_sweep(aligned, prompts, source_model=finetuned, metric=...)`` caches ``finetuned`` on
    ``prompts`` and patches into ``aligned`` on the same prompts (``corrupted`` may still be given).

    Args:
        model: the ``HookedModel`` patched into.
        clean: the source inputs (texts, padded on the left, or ``[batch, pos]`` token ids).
        corrupted: the target inputs (default: ``clean``); must tokenize to the same shape.
        metric: ``metric(logits[batch, pos, vocab]) -> float``.
        source_model: where the clean activations come from (default ``model``); same tokenizer and d_model.
        names: hooks to sweep (default every ``blocks.*.hook_resid_pre``).
        positions: ``"all"`` (each position in turn), None (all at once), or a list (negative entries
            count from the end: ``[-1]`` is every row's last token).
        heads: for ``attn.hook_pattern`` names, True (each head) or a list of heads.
        progress: tqdm progress bar.

    Returns:
        A :data:`~deltalens.schemas.PATCHING` frame ``name, layer, position, (head,) metric, effect``
        (``position`` -1 when all are patched together); ``effect = (metric − corrupted) / (clean −
        corrupted)``: 1 where the patch restores the source behaviour, 0 where it does nothing, NaN
        when clean = corrupted. ``attrs`` hold ``metric_clean`` and ``metric_corrupted``.

    Example:
        >>> t = patching_sweep(model, clean_ids, corrupted_ids, metric=logit_diff(a, b), positions=[4, 5])
    """
    from deltalens.hooks.names import resolve_names

    if metric is None or not callable(metric):
        raise TypeError(
            "patching_sweep needs metric=callable(logits) -> float, e.g. logit_diff(good_id, bad_id)"
        )
    src_model = source_model if source_model is not None else model
    (c_ids, c_mask), (t_ids, t_mask) = _sweep_inputs(model, src_model, clean, corrupted)
    chosen = resolve_names(names, model.hook_names)
    head_list = _head_list(model, chosen, heads)
    clean_logits, cache = src_model.run_with_cache(c_ids, names=chosen, attention_mask=c_mask, return_logits=True)
    m_clean = float(metric(clean_logits))
    m_corr = float(metric(model.logits(t_ids, attention_mask=t_mask)))
    grid = (chosen, _position_list(positions, c_ids.shape[1]), head_list)
    target = _Target(model, t_ids, t_mask, metric, m_clean, m_corr)
    df = PATCHING.frame(_patch_rows(target, cache, grid, heads is not False, progress))
    df.attrs.update(metric_clean=m_clean, metric_corrupted=m_corr)
    return df
