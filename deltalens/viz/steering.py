"""Subspace-steering views: utility / harmfulness against frac (the paper's Figures 2-3),
E_k bars, activation-patching heatmaps.

The weight-MSO heatmaps across update pairs live in :mod:`deltalens.viz.weights` (still
importable from here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from deltalens.viz.base import FigureView
from deltalens.viz.plots import (
    SeriesLog,
    apply_select,
    as_frame,
    auto_column,
    average_over_rest,
    color_map,
    facets,
    figure_legend,
    figure_view,
    heatmap,
    levels,
    mpl_text,
    new_figure,
    ordered,
    pick_subset,
    require_columns,
    style_axes,
)
from deltalens.viz.weights import weight_overlap as weight_overlap

UTILITY_METRICS: tuple[str, ...] = ("utility", "accuracy", "exact_match")
HARM_METRICS: tuple[str, ...] = ("harmfulness", "harm", "harm_score", "compliance_rate", "compliance")
"""Without ``metrics``, :func:`steering_sweep` plots the first utility column and the first harm
column present (the paper's two panels), else every other numeric column."""

_NOT_METRICS = {
    "frac", "k", "k_total", "alpha", "seed", "energy_kept", "energy_kept_no_embed", "edit_s", "eval_s",
    "cosine_task_proj", "cosine_task_align", "n", "n_prompts",
}  # fmt: skip
UPDATE_COLUMNS: tuple[str, ...] = ("update", "task", "finetune")
"""Columns naming which fine-tune a sweep row belongs to (drawn as line styles / bar colours)."""
_REF_STYLES = [("black", "-"), ("dimgray", "--"), ("gray", ":"), ("saddlebrown", "-."), ("purple", "--")]


def _references(
    df: Any,
    references: Any,
    x: str,
    method: str,
    mode: str | None,
    style: str | None,
    label_col: str,
    metrics: Sequence[str],
) -> tuple[Any, dict[str, dict[str, float]]]:
    """Split reference rows (``x`` is NaN) off the sweep and merge them with ``references``."""
    import pandas as pd

    refs: dict[str, dict[str, float]] = {}

    def merge(label: str, row: Mapping[str, Any]) -> None:
        refs.setdefault(label, {}).update(
            {m: float(row[m]) for m in metrics if m in row and pd.notna(row[m])}
        )

    is_ref = df[x].isna()
    if is_ref.any():
        rows = df[is_ref]
        cands = [
            c for c in (label_col, mode, style, method) if c and c in rows.columns and rows[c].notna().all()
        ]
        unique = [c for c in cands if rows[c].nunique() == len(rows)]
        cols = unique[:1] or [c for c in cands if rows[c].nunique() > 1] or [method]
        for row in rows.to_dict("records"):
            merge(" / ".join(str(row[c]) for c in cols), row)
    if isinstance(references, pd.DataFrame):
        col = label_col if label_col in references.columns else references.columns[0]
        for row in references.to_dict("records"):
            merge(str(row[col]), row)
    elif isinstance(references, Mapping):
        for lab, vals in references.items():
            if not isinstance(vals, Mapping):
                raise TypeError(
                    f"references[{lab!r}] should map metric -> value, e.g. {{'utility': 0.4}}; got {vals!r}"
                )
            refs.setdefault(str(lab), {}).update({m: float(v) for m, v in vals.items()})
    elif references is not None:
        raise TypeError("references must be a {label: {metric: value}} dict or a DataFrame")
    return df[~is_ref], refs


def steering_sweep(
    sweep: Any,
    *,
    metrics: Sequence[str] | None = None,
    x: str = "frac",
    method: str = "method",
    mode: str | None = "mode",
    style: str | None = "auto",
    references: Any = None,
    reference_label: str = "model",
    select: Mapping[str, Any] | None = None,
    title: str = "Subspace steering: metrics against subspace fraction",
) -> FigureView:
    """Utility and harmfulness against ``frac`` per method and mode, with reference lines.

    The paper's Figures 2-3 shape: one panel per (mode, metric), one line per method (Top-K,
    RandomK, Random), horizontal lines for the W_0 / W_A / full fine-tune references.

    Args:
        sweep: tidy sweep table, one row per (method, mode, frac, ...), e.g. the output of
            ``interventions.subspace_sweep``: columns ``method``, ``mode``, ``frac``,
            ``energy_kept``, metric columns (``utility``, ``harm`` ...) and optionally ``task`` /
            ``update``. Rows whose ``frac`` is NaN are references (``method="none",
            mode="reference" | "full"``, or ``method="W_A"``), labelled by the first of
            ``reference_label``, ``mode``, ``style``, ``method`` that tells them apart (else by the
            varying ones joined, e.g. ``"full / harmful"``).
        metrics: metric columns to plot (default: the first of :data:`UTILITY_METRICS` and the
            first of :data:`HARM_METRICS` present, else every other numeric column).
        x, method, mode: column names (``mode=None`` if the table has a single mode).
        style: column drawn as line styles (``"auto"``: the first of :data:`UPDATE_COLUMNS` that
            varies, e.g. ``task`` = useful / harmful; ``None`` for none).
        references: extra reference values, ``{"W_0": {"utility": .1, "harmfulness": 1.2}, ...}``
            or a DataFrame with a label column and metric columns.
        reference_label: column naming reference rows.
        select: keep rows where ``column == value``; other varying columns are averaged.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` has one row per drawn point, ``panel`` =
        ``"{mode}: {metric}"``, ``series`` = ``"{method}"`` (``"{method} / {style}"``), and
        reference lines as ``series="ref: {label}"`` with ``x`` NaN.

    Example:
        >>> viz.steering_sweep(sweep_df, references={"W_A": {"utility": 0.31, "harmfulness": 0.02}})

    Gotcha: frac is a fraction of each tensor's rank (k = round(frac·min(m, n))), not of the
    update's energy; plot ``energy_kept`` with :func:`energy_kept`.
    """
    import numpy as np

    what = "viz.steering_sweep"
    df = apply_select(as_frame(sweep, what), select, what)
    require_columns(df, [x, method], what)
    if mode is not None and mode not in df.columns:
        mode = None
    if metrics is None:
        groups = (UTILITY_METRICS, HARM_METRICS)
        metrics = [next(c for c in g if c in df.columns) for g in groups if any(c in df.columns for c in g)]
        if not metrics:
            metrics = [
                c
                for c in df.columns
                if c not in _NOT_METRICS and c not in (x, method, mode) and df[c].dtype.kind in "fiu"
            ]
        if not metrics:
            raise ValueError(
                f"{what}: no metric column found; pass metrics=[...] (columns: {list(df.columns)})"
            )
    metrics = list(metrics)
    require_columns(df, metrics, what)
    style = auto_column(df, style, UPDATE_COLUMNS, varying=True)
    df, refs = _references(df, references, x, method, mode, style, reference_label, metrics)
    if df.empty:
        raise ValueError(f"{what}: the table holds only reference rows (frac is NaN everywhere)")
    keys = [c for c in (mode, method, style, x) if c]
    agg, note = average_over_rest(df, keys, metrics)
    modes, methods, styles = levels(agg, mode), ordered(agg[method]), levels(agg, style)
    colors = color_map(methods)
    dashes = dict(zip(styles, ["-", "--", ":", "-."] * 4))
    markers = dict(zip(methods, ["o", "s", "^", "D", "v", "P"] * 3))
    fig, axes = new_figure(len(modes), len(metrics))
    log = SeriesLog()
    for i, md in enumerate(modes):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            panel = metric if md is None else f"{md}: {metric}"
            sub = agg if md is None else agg[agg[mode] == md]
            for mt in methods:
                for st in styles:
                    s = sub[sub[method] == mt]
                    if st is not None:
                        s = s[s[style] == st]
                    s = s.dropna(subset=[metric]).sort_values(x)
                    if s.empty:
                        continue
                    label = str(mt) if st is None else f"{mt} / {st}"
                    ax.plot(
                        s[x],
                        s[metric],
                        marker=markers[mt],
                        ms=4,
                        color=colors[mt],
                        ls=dashes[st],
                        label=mpl_text(label, 32),
                    )
                    log.add(panel, label, s[x], s[metric])
            for r, (lab, vals) in enumerate(refs.items()):
                if metric in vals and np.isfinite(vals[metric]):
                    c, ls = _REF_STYLES[r % len(_REF_STYLES)]
                    ax.axhline(vals[metric], color=c, ls=ls, lw=1.1, alpha=0.8, label=mpl_text(lab, 24))
                    log.add(panel, f"ref: {lab}", [math.nan], [vals[metric]])
            style_axes(ax, panel, x, metric)
    figure_legend(fig, axes)
    params = {"metrics": metrics, "x": x, "method": method, "mode": mode, "style": style, "references": refs}
    return figure_view("steering_sweep", title, df, note, fig, log, {**params, "select": dict(select or {})})


def energy_kept(
    sweep: Any,
    *,
    x: str = "frac",
    y: str = "energy_kept",
    hue: str | None = "auto",
    method: str | None = "method",
    mode: str | None = "mode",
    select: Mapping[str, Any] | None = None,
    title: str = "Energy kept E_k: useful vs harmful updates",
) -> FigureView:
    """Grouped bars of E_k = Σ‖PΔ_T‖² / Σ‖Δ_T‖² against frac, one bar per update (useful, harmful).

    Args:
        sweep: the sweep table (columns ``frac``, ``energy_kept``, ``method``, ``mode`` and
            ``task`` or ``update``); reference rows (``frac`` NaN) are left out.
        x, y: the frac and energy columns (``y="energy_kept_no_embed"`` for E_k without embeddings).
        hue: the bar grouping column (``"auto"``: the first of :data:`UPDATE_COLUMNS` that varies);
            ``None`` gives one bar per frac.
        method, mode: panel columns (columns = methods, rows = modes); absent columns are ignored.
        select: keep rows where ``column == value``; other varying columns are averaged.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` rows: ``panel`` = ``"{mode}: {method}"``, ``series`` = hue
        value, ``x`` = frac, ``y`` = E_k.

    Example:
        >>> viz.energy_kept(sweep_df, select={"mode": "parallel"})

    Gotcha: for a Haar-random k-dimensional subspace E_k ≈ k/m, so the Random bars are the
    reference the Top-K bars should be read against.
    """
    import numpy as np

    what = "viz.energy_kept"
    df = apply_select(as_frame(sweep, what), select, what)
    require_columns(df, [x, y], what)
    hue = auto_column(df, hue, UPDATE_COLUMNS, varying=True)
    require_columns(df, [hue], what)
    method = method if method in df.columns else None
    mode = mode if mode in df.columns else None
    df = df[df[x].notna() & df[y].notna()]
    if df.empty:
        raise ValueError(f"{what}: no row has both {x!r} and {y!r}")
    agg, note = average_over_rest(df, [c for c in (mode, method, hue, x) if c], [y])
    modes, methods, hues = levels(agg, mode), levels(agg, method), levels(agg, hue)
    colors = color_map(hues)
    fracs = sorted(agg[x].unique())
    fig, axes = new_figure(len(modes), len(methods), (4.0, 3.0))
    log = SeriesLog()
    width = 0.8 / len(hues)
    for ax, sub, md, mt in facets(agg, axes, mode, modes, method, methods):
        panel = ": ".join(str(v) for v in (md, mt) if v is not None) or y
        for k, hv in enumerate(hues):
            s = sub if hv is None else sub[sub[hue] == hv]
            s = s.set_index(x).reindex(fracs)
            label = y if hv is None else str(hv)
            ax.bar(
                np.arange(len(fracs)) + (k - (len(hues) - 1) / 2) * width,
                s[y].to_numpy(),
                width=width,
                color=colors[hv],
                label=mpl_text(label, 24),
            )
            log.add(panel, label, fracs, s[y].to_numpy())
        ax.set_xticks(np.arange(len(fracs)), [f"{f:g}" for f in fracs])
        ax.set_ylim(0, 1.02)
        style_axes(ax, panel, x, "E_k")
    if hue:
        figure_legend(fig, axes)
    params = {"x": x, "y": y, "hue": hue, "method": method, "mode": mode, "select": dict(select or {})}
    return figure_view("energy_kept", title, df, note, fig, log, params)


def patching(
    table: Any,
    *,
    layer: str = "layer",
    position: str = "position",
    value: str = "effect",
    token: str | None = "token",
    facet: str | None = "auto",
    select: Mapping[str, Any] | None = None,
    max_panels: int = 4,
    title: str = "Activation patching: effect by layer and position",
) -> FigureView:
    """Heatmap of an activation-patching effect, layers × positions (diverging, centred at 0).

    Args:
        table: tidy table, one row per (layer, position, ...): columns ``layer``, ``position``
            (-1 = all positions at once), ``effect`` and optionally ``token`` (the position's token,
            used as tick label), ``name`` (a hook name, as ``interventions.patching_sweep`` writes),
            ``hook`` / ``component``, ``head``.
        layer, position, value, token: column names.
        facet: one heatmap per value (``"auto"``: ``hook`` — the hook name without its layer — or
            ``component``, if it varies; ``None`` for one heatmap).
        select: keep rows where ``column == value``; other varying columns are averaged.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series``: ``series`` = ``"layer {L}"``, ``x`` = position, ``y`` = effect.

    Example:
        >>> viz.patching(patch_df, value="logit_diff_recovered")
    """
    import numpy as np

    what = "viz.patching"
    df = apply_select(as_frame(table, what), select, what)
    require_columns(df, [layer, position, value], what)
    token = token if token is not None and token in df.columns else None
    if "name" in df.columns and "hook" not in df.columns:  # patching_sweep: hook kind without the layer
        df = df.assign(hook=df["name"].astype(str).str.replace(r"^blocks\.\d+\.", "", regex=True))
    facet = auto_column(df, facet, ("hook", "component"), varying=True)
    require_columns(df, [facet], what)
    agg, note = average_over_rest(df, [c for c in (facet, layer, position) if c], [value])
    panels = levels(agg, facet)
    if len(panels) > max_panels:
        panels = pick_subset(panels, max_panels)
        note = (note + f" Showing {facet} in {panels}.").strip()
    layers = sorted(agg[layer].unique())
    positions = sorted(agg[position].unique())
    labels = ["all" if p == -1 else str(p) for p in positions]
    if token:
        tok = df.drop_duplicates(position).set_index(position)[token]
        labels = [f"{mpl_text(tok.get(p, ''), 10)} ({p})" for p in positions]
    vmax = float(np.nanmax(np.abs(agg[value].to_numpy(dtype=float)))) or 1.0
    w = max(4.0, 1.8 + 0.55 * len(positions))
    h = max(3.0, 1.2 + 0.3 * len(layers))
    fig, axes = new_figure(1, len(panels), (w, h))
    log = SeriesLog()
    im = None
    for k, pv in enumerate(panels):
        ax = axes[0, k]
        sub = agg if pv is None else agg[agg[facet] == pv]
        grid = (
            sub.pivot_table(index=layer, columns=position, values=value, aggfunc="mean")
            .reindex(index=layers, columns=positions)
            .to_numpy(dtype=float)
        )
        annot = None
        if len(layers) * len(positions) <= 160:
            annot = [["" if not np.isfinite(v) else f"{v:.2f}" for v in row] for row in grid]
        im = heatmap(
            ax,
            grid,
            [str(x) for x in layers],
            labels,
            cmap="RdBu_r",
            vmin=-vmax,
            vmax=vmax,
            annot=annot,
            fontsize=7,
        )
        ax.set_ylabel(layer)
        ax.set_xlabel(position)
        ax.invert_yaxis()
        pname = "" if pv is None else f"{facet}={pv}"
        if pname:
            ax.set_title(mpl_text(pname, 40), fontsize=10)
        log.add_rows(pname, [f"layer {lay}" for lay in layers], positions, grid)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=value)
    params = {
        "layer": layer,
        "position": position,
        "value": value,
        "facet": facet,
        "select": dict(select or {}),
    }
    return figure_view("patching", title, df, note, fig, log, params)
