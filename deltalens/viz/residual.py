"""Residual-stream views: logit lens, probe accuracy by layer, activation overlap.

The ΔW-norm view lives in :mod:`deltalens.viz.weights` (still importable from here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deltalens.schemas import ACTIVATION_OVERLAP, PROBES
from deltalens.viz.base import FigureView, provenance_of
from deltalens.viz.plots import (
    SeriesLog,
    check_columns,
    default_rows,
    figure_view,
    heatmap,
    label_column,
    line_view,
    mpl_text,
    new_figure,
    schema_frame,
)
from deltalens.viz.weights import delta_norm_table as delta_norm_table
from deltalens.viz.weights import delta_norms as delta_norms
from deltalens.viz.weights import split_param_name as split_param_name

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor, nn

    from deltalens.hooks.cache import ActivationCache
    from deltalens.hooks.model import HookedModel

MODEL = "model"
"""The study's label of which checkpoint a probe row belongs to (not declared by ``PROBES``):
the default line grouping of :func:`probe_accuracy`."""


# ---------------------------------------------------------------------------------------
# logit lens
# ---------------------------------------------------------------------------------------
def _positions(positions: int | Sequence[int] | None, n: int) -> list[int]:
    if positions is None:
        chosen = list(range(n))
    else:
        chosen = [positions] if isinstance(positions, int) else list(positions)
    out = []
    for p in chosen:
        q = int(p) + n if int(p) < 0 else int(p)
        if not 0 <= q < n:
            raise ValueError(f"position {p} is outside the prompt's {n} tokens")
        out.append(q)
    return out


def _top_rows(
    tokenizer: Any, layer: int, pos: list[int], toks: list[str], top: Any, logits: Tensor
) -> list[dict[str, Any]]:
    """One row per (position, rank) of one layer's ``top`` = ``probs.topk(...)`` (``[pos, k]``)."""
    from deltalens.viz.attention import str_tokens

    rows = []
    for i, p in enumerate(pos):
        for r in range(top.indices.shape[1]):
            tid = int(top.indices[i, r])
            rows.append(
                {
                    "layer": layer,
                    "position": p,
                    "input_token": toks[p],
                    "rank": r,
                    "token_id": tid,
                    "token": str_tokens(tokenizer, [tid])[0],
                    "prob": float(top.values[i, r]),
                    "logit": float(logits[i, tid]),
                }
            )
    return rows


def _lens_rows(
    model: HookedModel,
    cache: ActivationCache,
    layers: list[int],
    pos: list[int],
    toks: list[str],
    norm: nn.Module,
    top_k: int,
) -> list[dict[str, Any]]:
    """Each layer's ``resid_post`` at ``pos`` through ``norm`` and the unembedding: its top-k rows."""
    import torch

    rows = []
    w = next(norm.parameters())
    with torch.inference_mode():
        for layer in layers:
            resid = cache[f"blocks.{layer}.hook_resid_post"][0][pos].to(device=w.device, dtype=w.dtype)
            logits = model.unembed(norm(resid)).float()
            probs = logits.softmax(-1)
            top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
            rows.extend(_top_rows(model.tokenizer, layer, pos, toks, top, logits))
    return rows


def logit_lens(
    model: HookedModel,
    prompt: str,
    *,
    layers: str | int | slice | Sequence[int] | None = None,
    positions: int | Sequence[int] | None = None,
    top_k: int = 5,
    final_norm: nn.Module | None = None,
    title: str | None = None,
) -> FigureView:
    """Top next-token predictions read off the residual stream after every layer.

    Each cached ``blocks.{L}.hook_resid_post`` goes through the model's final norm and its
    unembedding (``model.final_norm`` and ``model.unembed``); the last layer reproduces the model's
    own logits (Gemma's final soft-capping included). Works on both backends.

    Args:
        model: the model to read.
        prompt: one text.
        layers: a layer spec (``None`` = all, an int, ``"a:b"``, ``"65-90%"``, a list).
        positions: prompt positions to read (default all; negative counts from the end).
        top_k: predictions kept per (layer, position) in ``.data``.
        final_norm: override the final norm module (default: ``model.final_norm``).
        title: heading.

    Returns:
        A :class:`FigureView` (rows: layers, columns: positions, text: top-1 token, colour: its
        probability). ``.data`` has columns ``layer, position, input_token, rank, token_id,
        token, prob, logit``.

    Example:
        >>> view = viz.logit_lens(model, "The capital of France is", positions=-1)
        >>> view.data.query("rank == 0")[["layer", "token", "prob"]]
    """
    import pandas as pd

    from deltalens.hooks.names import parse_layers
    from deltalens.viz.attention import str_tokens

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    chosen = parse_layers(layers, model.n_layers)
    cache = model.run_with_cache(prompt, names=[f"blocks.{layer}.hook_resid_post" for layer in chosen])
    ids = cache.input_ids[0]
    pos = _positions(positions, int(ids.shape[0]))
    toks = str_tokens(model.tokenizer, ids.tolist())
    norm = final_norm if final_norm is not None else model.final_norm
    data = pd.DataFrame(_lens_rows(model, cache, chosen, pos, toks, norm, top_k))
    fig, log = _lens_picture(data, chosen, pos, toks)
    prov = provenance_of(model)
    label = str((prov or {}).get("checkpoint") or (prov or {}).get("base") or "model")
    title = title or "Logit lens: top-1 next token after each layer"
    caption = f"Prompt: {prompt!r}. Colour: probability of the top-1 token."
    params = {"layers": chosen, "positions": pos, "top_k": top_k, "prompt": prompt}
    provenance = {label: prov} if prov else {}
    return figure_view("logit_lens", title, data, caption, fig, log, params, provenance=provenance)


def _lens_picture(data: pd.DataFrame, layers: list[int], pos: list[int], toks: list[str]) -> tuple[Any, SeriesLog]:
    import numpy as np

    top1 = data[data["rank"] == 0]
    grid = np.full((len(layers), len(pos)), np.nan)
    text = [["" for _ in pos] for _ in layers]
    li = {layer: i for i, layer in enumerate(layers)}
    pi = {p: j for j, p in enumerate(pos)}
    log = SeriesLog()
    for r in top1.itertuples():
        grid[li[r.layer], pi[r.position]] = r.prob
        text[li[r.layer]][pi[r.position]] = r.token
    for layer in layers:
        sub = top1[top1["layer"] == layer]
        log.add("logit lens", f"layer {layer}", sub["position"], sub["prob"])
    w = min(22.0, 1.5 + 0.95 * len(pos))
    h = min(22.0, 1.3 + 0.42 * len(layers))
    fig, axes = new_figure(1, 1, (max(w, 4.0), max(h, 2.4)))
    ax = axes[0, 0]
    annot = [[mpl_text(t, 10) for t in row] for row in text]
    im = heatmap(
        ax,
        grid,
        [str(layer) for layer in layers],
        [toks[p] for p in pos],
        cmap="Blues",
        vmin=0,
        vmax=1,
        annot=annot,
        annot_size=8,
        rotate=True,
        limits=(18, 10),
        origin="lower",
    )
    ax.set_xlabel("input position (token)")
    ax.set_ylabel("layer (resid_post)")
    fig.colorbar(im, ax=ax, label="top-1 probability", shrink=0.8)
    return fig, log


# ---------------------------------------------------------------------------------------
# line plots by layer
# ---------------------------------------------------------------------------------------
def probe_accuracy(
    table: Any,
    *,
    x: str = "layer",
    y: str = "accuracy",
    hue: str | None = MODEL,
    col: str | None = None,
    row: str | None = None,
    err: str | None = None,
    baseline: str | None = "random_accuracy",
    chance: float | None = None,
    select: Mapping[str, Any] | None = None,
    title: str = "Linear probe accuracy by layer",
) -> FigureView:
    """Probe accuracy against layer, one line per model.

    Args:
        table: a ``PROBES`` table (``probes.probe_layers(...).table`` or ``.summary()``), plus any
            label columns such as the study's ``model``; folds and other varying columns are
            averaged (the caption says which).
        x, y: the layer and accuracy columns.
        hue: the line grouping column; the default ``"model"`` (the study's label) is used when
            the table has it, else one line; ``None`` for one line.
        col, row: one panel per value of these columns (small multiples).
        err: a standard-deviation column drawn as a band (``None``: no band).
        baseline: a per-layer baseline drawn dashed (default ``random_accuracy``, the accuracy
            along a random direction; ``None`` omits it).
        chance: a dotted chance line (default: the mean ``majority_accuracy``).
        select: keep rows where ``column == value``.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` holds each line's ``(x, y)`` points.

    Raises:
        SchemaError: the table lacks a ``PROBES`` column.
        ValueError: an argument names no column.

    Example:
        >>> viz.probe_accuracy(result.summary(), chance=0.5).save("probes.png")
    """
    what = "viz.probe_accuracy"
    df = schema_frame(table, PROBES, select, what)
    check_columns(df, what, x=x, y=y, col=col, row=row, err=err, baseline=baseline)
    hue = label_column(df, what, "hue", hue, MODEL)
    if chance is None:
        chance = float(df["majority_accuracy"].mean())
    return line_view(
        "probe_accuracy", df, x=x, y=y, hue=hue, col=col, row=row, band=err, baseline=baseline,
        chance=chance, title=title, ylabel=y, ylim=None,
    )  # fmt: skip


_COMPARISON = ("model", "set_a", "set_b", "scope", "layer", "centered")
"""The columns that name one comparison of two activation subspaces (all but ``eta``)."""


def _fmt(values: Any) -> str:
    """``1``, ``1–3``: the range of some k values."""
    lo, hi = float(min(values)), float(max(values))
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


def same_k_note(df: pd.DataFrame, col: str | None) -> str:
    """One sentence when the panel column (``eta``) does not change any subspace's dimension k.

    The subspaces are the top-k principal directions of each prompt set, k chosen by the energy
    threshold η: when no comparison's ``k_a`` / ``k_b`` changes with η, the η panels compare the
    same subspaces and look alike, which is said once here instead of left for the reader to find.
    Returns ``""`` when k changes with ``col``, ``col`` has one value, or the table has no k.
    """
    if not col or col not in df.columns or not {"k_a", "k_b"} <= set(df.columns) or df[col].nunique() < 2:
        return ""
    keys = [c for c in _COMPARISON if c in df.columns and c != col]
    ks = df[keys + ["k_a", "k_b"]].dropna(subset=["k_a", "k_b"])
    per_comparison = ks.groupby(keys, dropna=False)[["k_a", "k_b"]] if keys else ks[["k_a", "k_b"]]
    if ks.empty or int(per_comparison.nunique().to_numpy().max()) > 1:
        return ""
    name = "η" if col == "eta" else col
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(df[col].unique()))
    k = _fmt([*ks["k_a"], *ks["k_b"]])
    where = f"k = {k} at every {name}" if "–" not in k else f"k ({k} by layer and set) is the same at every {name}"
    return f"{where} ({shown}): every {name} panel compares the same subspaces."


def activation_overlap(
    table: Any,
    *,
    x: str = "layer",
    y: str = "mso",
    baseline: str | None = "baseline",
    hue: str | None = "pair",
    col: str | None = "eta",
    row: str | None = "model",
    select: Mapping[str, Any] | None = None,
    title: str = "Activation subspace overlap (MSO) by layer",
) -> FigureView:
    """Per-layer MSO between activation subspaces, with the random baseline dashed.

    Args:
        table: an ``ACTIVATION_OVERLAP`` table (``probes.activation_overlap``). Its per-layer
            (``scope="layer"``) uncentred rows are shown unless ``select`` picks others; rows
            without a layer are left out.
        x, y: the layer and MSO columns.
        baseline: random-baseline column (``None`` omits it).
        hue: line grouping; the default ``"pair"`` is ``"{set_a}-{set_b}"`` (added when the table
            has no ``pair`` column).
        col: panel columns (default ``eta``; at most 4 values); ``None`` for one column.
        row: panel rows (default ``model``); ``None`` for one row.
        select: e.g. ``{"eta": 0.5}``; other varying columns are averaged (see the caption).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` holds ``"{hue}"`` and ``"{hue} (random baseline)"``
        lines, ``panel`` = ``"model=…, eta=…"``. When no subspace's k changes with η (the η
        panels then look alike), the caption and the figure's heading say so once
        (``"k = 1 at every η (0.1, 0.3, 0.5): …"``).

    Raises:
        SchemaError: the table lacks an ``ACTIVATION_OVERLAP`` column.
        ValueError: an argument names no column.

    Example:
        >>> viz.activation_overlap(act_df, select={"eta": [0.1, 0.5], "centered": True})
    """
    what = "viz.activation_overlap"
    df = schema_frame(table, ACTIVATION_OVERLAP, select, what)
    df, picked = default_rows(df, select, {"scope": "layer", "centered": False})
    check_columns(df, what, x=x, y=y, baseline=baseline)
    df = df[df[x].notna()]
    if "pair" not in df.columns:
        df = df.assign(pair=df["set_a"].astype(str) + "-" + df["set_b"].astype(str))
    check_columns(df, what, hue=hue, col=col, row=row)
    view = line_view(
        "activation_overlap", df, x=x, y=y, hue=hue, col=col, row=row, band=None, baseline=baseline,
        chance=None, title=title, ylabel="MSO", ylim=(0, 1.02), max_panels=4, headline=same_k_note(df, col),
    )  # fmt: skip
    view.caption = " ".join(c for c in (picked, view.caption) if c)
    return view
