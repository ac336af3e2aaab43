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
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.hooks.cache import ActivationCache

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
            t = src_mask.shape[1]
            last = (t - 1 - src_mask.flip(-1).long().argmax(-1)).to(x.device)
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
    model: Any,
    source_cache: ActivationCache,
    names: Any = None,
    positions: PatchPositions = None,
    heads: Sequence[int] | None = None,
) -> Any:
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
    model: Any,
    source_cache: ActivationCache,
    names: Any = None,
    positions: PatchPositions = None,
    heads: Sequence[int] | None = None,
) -> Iterator[Any]:
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


def logit_diff(good: int | Sequence[int], bad: int | Sequence[int], position: int = -1) -> Metric:
    """A metric: mean over the batch of ``logit[good] − logit[bad]`` at ``position``.

    Example:
        >>> metric = logit_diff(tok.encode(" Paris")[0], tok.encode(" Rome")[0])
    """

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> float:
        last = logits[:, position].float()
        g = torch.as_tensor(good, device=last.device).reshape(-1)
        b = torch.as_tensor(bad, device=last.device).reshape(-1)
        if g.numel() == 1:
            g = g.expand(last.shape[0])
        if b.numel() == 1:
            b = b.expand(last.shape[0])
        rows = torch.arange(last.shape[0], device=last.device)
        return float((last[rows, g] - last[rows, b]).mean())

    return metric


def _tokens(model: Any, inputs: Any) -> tuple[Tensor, Tensor]:
    batch = model.tokenize(inputs, padding_side="left")  # position -1 is every row's last real token
    return batch.input_ids, batch.attention_mask


def patching_sweep(
    model: Any,
    clean: Any,
    corrupted: Any = None,
    metric: Metric | None = None,
    *,
    source_model: Any = None,
    names: Any = "blocks.*.hook_resid_pre",
    positions: str | Sequence[int] | None = "all",
    heads: bool | Sequence[int] = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch one hook × position (× head) at a time from a clean source run into a target run.

    Two set-ups, one API:

    * within a model: ``patching_sweep(model, clean, corrupted, metric=...)`` caches ``model`` on
      ``clean`` and patches into its run on ``corrupted``;
    * across checkpoints: ``patching_sweep(aligned, prompts, source_model=finetuned, metric=...)``
      caches ``finetuned`` on ``prompts`` and patches into ``aligned`` on the same prompts
      (``corrupted`` may still be given).

    Args:
        model: the ``HookedModel`` patched into.
        clean: the source inputs (texts, padded on the left, or ``[batch, pos]`` token ids).
        corrupted: the target inputs (default: ``clean``); must tokenize to the same shape.
        source_model: where the clean activations come from (default ``model``); needs the same
            tokenizer and d_model.
        metric: ``metric(logits[batch, pos, vocab]) -> float``.
        names: hooks to sweep (default every ``blocks.*.hook_resid_pre``).
        positions: ``"all"`` (each position in turn), None (all positions at once), or a list
            (negative entries count from the end: ``[-1]`` is every row's last token).
        heads: for ``attn.hook_pattern`` names, True (each head) or a list of heads.
        progress: tqdm progress bar.

    Returns:
        DataFrame with ``name, layer, position, (head,) metric, effect`` (``position`` is the absolute
        index, -1 when all positions are patched together). ``effect = (metric − corrupted) / (clean − corrupted)`` is 1
        where the patch restores the source behaviour and 0 where it does nothing (NaN when
        clean = corrupted). ``attrs`` hold ``metric_clean`` and ``metric_corrupted``.

    Example:
        >>> t = patching_sweep(model, clean_ids, corrupted_ids, metric=logit_diff(a, b), positions=[4, 5])
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from deltalens.hooks.names import layer_of, resolve_names

    if metric is None or not callable(metric):
        raise TypeError(
            "patching_sweep needs metric=callable(logits) -> float, e.g. logit_diff(good_id, bad_id)"
        )
    src_model = source_model if source_model is not None else model
    c_ids, c_mask = _tokens(model, clean)
    t_ids, t_mask = (c_ids, c_mask) if corrupted is None else _tokens(model, corrupted)
    if t_ids.shape != c_ids.shape:
        raise ValueError(
            f"clean inputs tokenize to {tuple(c_ids.shape)} but corrupted to {tuple(t_ids.shape)}; patching needs "
            "the same batch size and length (pass token ids of equal length)"
        )
    if getattr(src_model, "d_model", None) != getattr(model, "d_model", None):
        raise ValueError(f"source d_model {src_model.d_model} differs from the target's {model.d_model}")
    chosen = resolve_names(names, model.hook_names)
    head_list: list[int | None] = [None]
    if heads is not False:
        if not all(n.endswith("hook_pattern") for n in chosen):
            raise ValueError("heads= needs attn.hook_pattern names, e.g. names='blocks.*.attn.hook_pattern'")
        head_list = list(range(model.n_heads)) if heads is True else [int(h) for h in heads]
    clean_logits, cache = src_model.run_with_cache(
        c_ids, names=chosen, attention_mask=c_mask, return_logits=True
    )
    m_clean = float(metric(clean_logits))
    m_corr = float(metric(model.logits(t_ids, attention_mask=t_mask)))
    span = m_clean - m_corr
    if positions == "all":
        pos_list: list[int | None] = list(range(c_ids.shape[1]))
    elif positions is None:
        pos_list = [None]
    elif isinstance(positions, str):
        raise ValueError(f"positions must be 'all', None or a list of ints, got {positions!r}")
    else:
        t = c_ids.shape[1]
        pos_list = [int(p) % t if -t <= int(p) < t else int(p) for p in positions]
        bad = [p for p in pos_list if not 0 <= p < t]
        if bad:
            raise ValueError(f"positions {bad} are outside the inputs' {t} positions")
    rows = []
    total = len(chosen) * len(pos_list) * len(head_list)
    with tqdm(total=total, desc="patching", unit="run", disable=not progress) as bar:
        for name in chosen:
            for pos in pos_list:
                for h in head_list:
                    with patch(
                        model,
                        cache,
                        [name],
                        positions=None if pos is None else [pos],
                        heads=None if h is None else [h],
                    ):
                        m = float(metric(model.logits(t_ids, attention_mask=t_mask)))
                    row = {"name": name, "layer": layer_of(name), "position": -1 if pos is None else pos}
                    if heads is not False:
                        row["head"] = h
                    row.update(metric=m, effect=(m - m_corr) / span if span != 0 else float("nan"))
                    rows.append(row)
                    bar.update(1)
    df = pd.DataFrame(rows)
    df.attrs.update(metric_clean=m_clean, metric_corrupted=m_corr)
    return df
