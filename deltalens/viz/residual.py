"""Residual-stream views: logit lens, probe accuracy by layer, activation overlap.

The ΔW-norm view lives in :mod:`deltalens.viz.weights` (still importable from here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deltalens.viz.base import FigureView, provenance_of
from deltalens.viz.plots import (
    SeriesLog,
    apply_select,
    as_frame,
    auto_column,
    default_rows,
    figure_view,
    heatmap,
    line_view,
    mpl_text,
    new_figure,
)
from deltalens.viz.weights import delta_norm_table as delta_norm_table
from deltalens.viz.weights import delta_norms as delta_norms
from deltalens.viz.weights import split_param_name as split_param_name


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


def logit_lens(
    model: Any,
    prompt: str,
    *,
    layers: Any = None,
    positions: int | Sequence[int] | None = None,
    top_k: int = 5,
    final_norm: Any = None,
    title: str | None = None,
) -> FigureView:
    """Top next-token predictions read off the residual stream after every layer.

    Each cached ``blocks.{L}.hook_resid_post`` goes through the model's final norm and its
    unembedding (``model.final_norm`` and ``model.unembed``); the last layer reproduces the model's
    own logits. Works on both backends.

    Args:
        model: a ``HookedModel``.
        prompt: one text.
        layers: a layer spec (``None`` = all, an int, ``"a:b"``, ``"65-90%"``, a list).
        positions: prompt positions to read (default all; negative counts from the end).
        top_k: predictions kept per (layer, position) in ``.data``.
        final_norm: override the final norm module (default: from the architecture's hook map).
        title: heading.

    Returns:
        A :class:`FigureView` (rows: layers, columns: positions, text: top-1 token, colour: its
        probability). ``.data`` has columns ``layer, position, input_token, rank, token_id,
        token, prob, logit``.

    Example:
        >>> view = viz.logit_lens(model, "The capital of France is", positions=-1)
        >>> view.data.query("rank == 0")[["layer", "token", "prob"]]

    Gotcha: Gemma's final logit soft-capping is applied too, so probabilities match the model's.
    """
    import pandas as pd
    import torch

    from deltalens.hooks.names import parse_layers
    from deltalens.viz.attention import str_tokens

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    chosen = parse_layers(layers, model.n_layers)
    names = [f"blocks.{layer}.hook_resid_post" for layer in chosen]
    cache = model.run_with_cache(prompt, names=names)
    ids = cache.input_ids[0]
    n = int(ids.shape[0])
    pos = _positions(positions, n)
    toks = str_tokens(model.tokenizer, ids.tolist())
    norm = final_norm if final_norm is not None else model.final_norm
    rows = []
    with torch.inference_mode():
        for layer, name in zip(chosen, names):
            w = next(norm.parameters())
            logits = model.unembed(norm(cache[name][0][pos].to(device=w.device, dtype=w.dtype))).float()
            probs = logits.softmax(-1)
            top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
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
                            "token": str_tokens(model.tokenizer, [tid])[0],
                            "prob": float(top.values[i, r]),
                            "logit": float(logits[i, tid]),
                        }
                    )
    data = pd.DataFrame(rows)
    fig, log = _lens_picture(data, chosen, pos, toks)
    prov = provenance_of(model)
    label = str((prov or {}).get("checkpoint") or (prov or {}).get("base") or "model")
    return figure_view(
        "logit_lens",
        title or "Logit lens: top-1 next token after each layer",
        data,
        f"Prompt: {prompt!r}. Colour: probability of the top-1 token.",
        fig,
        log,
        {"layers": chosen, "positions": pos, "top_k": top_k, "prompt": prompt},
        provenance={label: prov} if prov else {},
    )


def _lens_picture(data: Any, layers: list[int], pos: list[int], toks: list[str]) -> tuple[Any, SeriesLog]:
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
    hue: str | None = "auto",
    col: str | None = None,
    row: str | None = None,
    err: str | None = "auto",
    baseline: str | None = "auto",
    chance: float | None = None,
    select: Mapping[str, Any] | None = None,
    title: str = "Linear probe accuracy by layer",
) -> FigureView:
    """Probe accuracy against layer, one line per model (or probe / concept).

    Args:
        table: tidy table, one row per (layer, model, ...): columns ``layer``, ``accuracy`` and
            optionally ``model`` / ``probe`` / ``concept``, ``accuracy_std``, ``chance``. The
            ``probes`` module's tables (``ProbeResult.table`` or ``.summary()`` with a ``model``
            column) work as they are; folds are averaged.
        x, y: the layer and accuracy columns.
        hue: the line grouping column; ``"auto"`` takes the first of ``model``, ``probe``,
            ``concept``, ``label``, ``split``, ``hook`` that varies; ``None`` for one line.
        col, row: one panel per value of these columns (small multiples).
        err: a standard-deviation column drawn as a band (``"auto"``: ``{y}_std`` if present).
        baseline: a per-layer baseline drawn dashed (``"auto"``: ``random_accuracy``, the accuracy
            along a random direction, if present; ``None`` omits it).
        chance: a dotted chance line (default: the mean of a ``chance`` or ``majority_accuracy``
            column if present).
        select: keep rows where ``column == value``; other varying columns are averaged (the
            caption says which).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` holds each line's ``(x, y)`` points.

    Example:
        >>> viz.probe_accuracy(probes_df, hue="model", chance=0.5).save("probes.png")
    """
    what = "viz.probe_accuracy"
    df = apply_select(as_frame(table, what), select, what)
    hue = auto_column(df, hue, ("model", "probe", "concept", "label", "split", "hook"), varying=True) or (
        auto_column(df, hue, ("model",))
    )
    err = auto_column(df, err, (f"{y}_std",))
    baseline = auto_column(df, baseline, ("random_accuracy",))
    if chance is None:
        chance_col = auto_column(df, "auto", ("chance", "majority_accuracy"))
        chance = float(df[chance_col].mean()) if chance_col else None
    return line_view(
        "probe_accuracy", df, x=x, y=y, hue=hue, col=col, row=row, band=err, baseline=baseline,
        chance=chance, title=title, ylabel=y, ylim=None,
    )  # fmt: skip


def activation_overlap(
    table: Any,
    *,
    x: str = "layer",
    y: str = "mso",
    baseline: str | None = "auto",
    hue: str | None = "auto",
    col: str | None = "auto",
    row: str | None = "auto",
    select: Mapping[str, Any] | None = None,
    title: str = "Activation subspace overlap (MSO) by layer",
) -> FigureView:
    """Per-layer MSO between activation subspaces, with the random baseline dashed.

    Args:
        table: tidy table, one row per (layer, pair, ...): columns ``layer``, ``mso``, a random
            baseline (``mso_random`` or ``baseline``) and a pair (``pair`` such as ``"U-H1"``, or
            ``set_a``/``set_b``, or ``a``/``b``), optionally ``model``, ``energy_frac``/``eta``. The
            ``probes.activation_overlap`` table works as it is: its per-layer rows
            (``scope="layer"``) and uncentred rows are shown unless ``select`` says otherwise.
        x, y: the layer and MSO columns.
        baseline: random-baseline column (``"auto"``: ``mso_random`` or ``baseline``; ``None`` omits it).
        hue: line grouping (``"auto"``: the first of ``pair``, ``prompt_set``, ``model`` that varies).
        col: panel columns (``"auto"``: ``energy_frac`` or ``eta`` if it varies; at most 4 values).
        row: panel rows (``"auto"``: ``model`` if it varies and is not the hue).
        select: e.g. ``{"eta": 0.5}``; other varying columns are averaged (see the caption).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` holds ``"{hue}"`` and ``"{hue} (random baseline)"`` lines.

    Example:
        >>> viz.activation_overlap(act_df, select={"eta": [0.1, 0.5], "centered": True})
    """
    what = "viz.activation_overlap"
    df = apply_select(as_frame(table, what), select, what)
    df, picked = default_rows(df, select, {"scope": "layer", "centered": False})
    if x in df.columns:
        df = df[df[x].notna()]
    for a, b in (("set_a", "set_b"), ("a", "b")):
        if "pair" not in df.columns and {a, b} <= set(df.columns):
            df = df.assign(pair=df[a].astype(str) + "-" + df[b].astype(str))
    baseline = auto_column(df, baseline, ("mso_random", "baseline"))
    hue = auto_column(df, hue, ("pair",)) or auto_column(df, hue, ("prompt_set", "model"), varying=True)
    col = auto_column(df, col, ("energy_frac", "eta"), varying=True)
    row = auto_column(df, row, tuple(c for c in ("model",) if c != hue), varying=True)
    view = line_view(
        "activation_overlap", df, x=x, y=y, hue=hue, col=col, row=row, band=None, baseline=baseline,
        chance=None, title=title, ylabel="MSO", ylim=(0, 1.02), max_panels=4,
    )  # fmt: skip
    view.caption = " ".join(c for c in (picked, view.caption) if c)
    return view
