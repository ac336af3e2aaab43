"""Subspace-steering views: utility / harmfulness against frac (the paper's Figures 2-3),
E_k bars, activation-patching heatmaps.

The weight-MSO heatmaps across update pairs live in :mod:`deltalens.viz.weights` (still
importable from here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deltalens.schemas import PATCHING, SWEEP
from deltalens.viz.base import FigureView
from deltalens.viz.plots import (
    SeriesLog,
    average_over_rest,
    check_columns,
    color_map,
    facets,
    figure_legend,
    figure_view,
    heatmap,
    label_column,
    levels,
    mpl_text,
    new_figure,
    ordered,
    pick_subset,
    schema_frame,
    style_axes,
)
from deltalens.viz.weights import weight_overlap as weight_overlap

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

UTILITY_METRICS: tuple[str, ...] = ("utility", "accuracy", "exact_match")
HARM_METRICS: tuple[str, ...] = ("harmfulness", "harm", "harm_score", "compliance_rate", "compliance")
"""Without ``metrics``, :func:`steering_sweep` plots the first utility column and the first harm
column present (the paper's two panels), else every other numeric column."""

_NOT_METRICS = set(SWEEP.names) | {
    "k", "seed", "edit_s", "eval_s", "cosine_task_proj", "cosine_task_align", "n", "n_prompts",
}  # fmt: skip
"""Numeric sweep columns that are never metrics (the declared ones, timings, counts)."""
TASK = "task"
"""The study's label of which fine-tune a sweep row belongs to (not declared by ``SWEEP``):
the default line-style column of :func:`steering_sweep` and bar colour of :func:`energy_kept`."""
_REF_STYLES = [("black", "-"), ("dimgray", "--"), ("gray", ":"), ("saddlebrown", "-."), ("purple", "--")]
_DASHES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P"]



# ------------------------------------------------------------------------ steering sweep
def _merge_reference(
    refs: dict[str, dict[str, float]], label: str, row: Mapping[str, Any], metrics: Sequence[str]
) -> None:
    """Add ``row``'s finite values of ``metrics`` to the reference line ``label``."""
    import pandas as pd

    refs.setdefault(label, {}).update({m: float(row[m]) for m in metrics if m in row and pd.notna(row[m])})


def _own_references(
    rows: pd.DataFrame, label_cols: Sequence[str | None], method: str, metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Reference lines from the sweep's own reference rows, labelled by the first of
    ``label_cols`` that tells them apart (else by the varying ones joined, else by ``method``)."""
    refs: dict[str, dict[str, float]] = {}
    if rows.empty:
        return refs
    cands = [c for c in label_cols if c and c in rows.columns and rows[c].notna().all()]
    unique = [c for c in cands if rows[c].nunique() == len(rows)]
    cols = unique[:1] or [c for c in cands if rows[c].nunique() > 1] or [method]
    for row in rows.to_dict("records"):
        _merge_reference(refs, " / ".join(str(row[c]) for c in cols), row, metrics)
    return refs


def _given_references(
    refs: dict[str, dict[str, float]], references: Any, label_col: str, metrics: Sequence[str]
) -> None:
    """Merge the caller's ``references`` (a ``{label: {metric: value}}`` dict or a DataFrame) into ``refs``."""
    import pandas as pd

    if isinstance(references, pd.DataFrame):
        col = label_col if label_col in references.columns else references.columns[0]
        for row in references.to_dict("records"):
            _merge_reference(refs, str(row[col]), row, metrics)
    elif isinstance(references, Mapping):
        for lab, vals in references.items():
            if not isinstance(vals, Mapping):
                raise TypeError(
                    f"references[{lab!r}] should map metric -> value, e.g. {{'utility': 0.4}}; got {vals!r}"
                )
            refs.setdefault(str(lab), {}).update({m: float(v) for m, v in vals.items()})
    elif references is not None:
        raise TypeError("references must be a {label: {metric: value}} dict or a DataFrame")


def _split_references(
    df: pd.DataFrame,
    references: Any,
    cols: tuple[str, str, str | None, str | None, str],
    metrics: Sequence[str],
    what: str,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """The sweep rows (``x`` not NaN) and the reference lines: the table's reference rows merged
    with the caller's ``references``; ``cols`` = (x, method, mode, style, reference_label)."""
    x, method, mode, style, label_col = cols
    is_ref = df[x].isna()
    refs = _own_references(df[is_ref], (label_col, mode, style, method), method, metrics)
    _given_references(refs, references, label_col, metrics)
    if is_ref.all():
        raise ValueError(f"{what}: the table holds only reference rows (frac is NaN everywhere)")
    return df[~is_ref], refs


def _default_metrics(df: pd.DataFrame, x: str, method: str, mode: str | None, what: str) -> list[str]:
    """The first of :data:`UTILITY_METRICS` and of :data:`HARM_METRICS` present, else every numeric
    column that is not declared by ``SWEEP`` nor a timing / count."""
    groups = (UTILITY_METRICS, HARM_METRICS)
    metrics = [next(c for c in g if c in df.columns) for g in groups if any(c in df.columns for c in g)]
    if not metrics:
        metrics = [
            c
            for c in df.columns
            if c not in _NOT_METRICS and c not in (x, method, mode) and df[c].dtype.kind in "fiu"
        ]
    if not metrics:
        raise ValueError(f"{what}: no metric column found; pass metrics=[...] (columns: {list(df.columns)})")
    return metrics


def _sweep_lines(
    ax: Axes,
    sub: pd.DataFrame,
    metric: str,
    cols: tuple[str, str, str | None],
    values: tuple[list[Any], list[Any]],
    log: SeriesLog,
    panel: str,
) -> None:
    """One line per (method, style) of a :func:`steering_sweep` panel; ``cols`` = (x, method, style)."""
    x, method, style = cols
    methods, styles = values
    colors = color_map(methods)
    dashes = dict(zip(styles, _DASHES * 4))
    markers = dict(zip(methods, _MARKERS * 3))
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
                s[x], s[metric], marker=markers[mt], ms=4, color=colors[mt], ls=dashes[st],
                label=mpl_text(label, 32),
            )  # fmt: skip
            log.add(panel, label, s[x], s[metric])


def _reference_lines(
    ax: Axes, refs: Mapping[str, Mapping[str, float]], metric: str, log: SeriesLog, panel: str
) -> None:
    """Horizontal lines for the references that have a finite value of ``metric``."""
    for r, (lab, vals) in enumerate(refs.items()):
        if metric in vals and math.isfinite(vals[metric]):
            c, ls = _REF_STYLES[r % len(_REF_STYLES)]
            ax.axhline(vals[metric], color=c, ls=ls, lw=1.1, alpha=0.8, label=mpl_text(lab, 24))
            log.add(panel, f"ref: {lab}", [math.nan], [vals[metric]])


def _sweep_picture(
    agg: pd.DataFrame,
    metrics: list[str],
    cols: tuple[str, str, str | None, str | None],
    refs: Mapping[str, Mapping[str, float]],
) -> tuple[Any, SeriesLog]:
    """The (mode × metric) panels of :func:`steering_sweep`; ``cols`` = (x, method, mode, style)."""
    x, method, mode, style = cols
    modes, methods, styles = levels(agg, mode), ordered(agg[method]), levels(agg, style)
    fig, axes = new_figure(len(modes), len(metrics))
    log = SeriesLog()
    for i, md in enumerate(modes):
        sub = agg if md is None else agg[agg[mode] == md]
        for j, metric in enumerate(metrics):
            panel = metric if md is None else f"{md}: {metric}"
            _sweep_lines(axes[i, j], sub, metric, (x, method, style), (methods, styles), log, panel)
            _reference_lines(axes[i, j], refs, metric, log, panel)
            style_axes(axes[i, j], panel, x, metric)
    figure_legend(fig, axes, where="below")  # beside the panels it crowded the right-hand one
    return fig, log


def steering_sweep(
    sweep: Any,
    *,
    metrics: Sequence[str] | None = None,
    x: str = "frac",
    method: str = "method",
    mode: str | None = "mode",
    style: str | None = TASK,
    references: Any = None,
    reference_label: str = "model",
    select: Mapping[str, Any] | None = None,
    title: str = "Subspace steering: metrics against subspace fraction",
) -> FigureView:
    """Utility and harmfulness against ``frac`` per method and mode, with reference lines.

    The paper's Figures 2-3: one panel per (mode, metric), one line per method (Top-K, RandomK,
    Random), horizontal lines for the W_0 / W_A / full fine-tune references.

    Args:
        sweep: a ``SWEEP`` table (``interventions.subspace_sweep``): metric columns beside the
            declared ones. Rows whose ``frac`` is NaN are references (``method="none"``,
            ``mode="reference" | "full"``), labelled by the first of ``reference_label``, ``mode``,
            ``style``, ``method`` that tells them apart (else the varying ones joined).
        metrics: metric columns (default: the first of :data:`UTILITY_METRICS` and of
            :data:`HARM_METRICS` present, else every undeclared numeric column).
        x, method, mode: columns (default the declared ones; ``mode=None``: no mode panels).
        style: column drawn as line styles; the default ``"task"`` (the study's label, e.g.
            useful / harmful) is used when the table has it, else none; ``None`` for none.
        references: ``{"W_0": {"utility": .1, "harm": 1.2}, ...}`` or a DataFrame with a
            ``reference_label`` column (else its first) and metric columns.
        reference_label: column naming reference rows.
        select: keep rows where ``column == value``; other varying columns are averaged.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` rows: ``panel`` = ``"{mode}: {metric}"``, ``series`` =
        ``"{method}"`` (``"{method} / {style}"``); references as ``"ref: {label}"`` with ``x`` NaN.

    Raises:
        SchemaError: the table lacks a ``SWEEP`` column.
        ValueError: an argument names no column.

    Gotcha: frac is a fraction of each tensor's rank, not of the update's energy (see :func:`energy_kept`).
    """
    what = "viz.steering_sweep"
    df = schema_frame(sweep, SWEEP, select, what)
    check_columns(df, what, x=x, method=method, mode=mode)
    style = label_column(df, what, "style", style, TASK)
    metrics = list(metrics) if metrics is not None else _default_metrics(df, x, method, mode, what)
    check_columns(df, what, **{f"metrics[{i}]": m for i, m in enumerate(metrics)})
    df, refs = _split_references(df, references, (x, method, mode, style, reference_label), metrics, what)
    agg, note = average_over_rest(df, [c for c in (mode, method, style, x) if c], metrics)
    fig, log = _sweep_picture(agg, metrics, (x, method, mode, style), refs)
    params = {"metrics": metrics, "x": x, "method": method, "mode": mode, "style": style, "references": refs}
    return figure_view("steering_sweep", title, df, note, fig, log, {**params, "select": dict(select or {})})


# --------------------------------------------------------------------------- E_k bars
def _energy_bars(
    ax: Axes,
    sub: pd.DataFrame,
    cols: tuple[str, str, str | None],
    hues: list[Any],
    fracs: list[float],
    log: SeriesLog,
    panel: str,
) -> None:
    """One group of bars per frac, one bar per ``hue`` value; ``cols`` = (x, y, hue)."""
    import numpy as np

    x, y, hue = cols
    colors = color_map(hues)
    width = 0.8 / len(hues)
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


def _energy_picture(
    agg: pd.DataFrame, cols: tuple[str, str, str | None, str | None, str | None]
) -> tuple[Any, SeriesLog]:
    """The (mode × method) bar panels of :func:`energy_kept`; ``cols`` = (x, y, hue, method, mode)."""
    import numpy as np

    x, y, hue, method, mode = cols
    modes, methods, hues = levels(agg, mode), levels(agg, method), levels(agg, hue)
    fracs = sorted(agg[x].unique())
    fig, axes = new_figure(len(modes), len(methods), (4.0, 3.0))
    log = SeriesLog()
    for ax, sub, md, mt in facets(agg, axes, mode, modes, method, methods):
        panel = ": ".join(str(v) for v in (md, mt) if v is not None) or y
        _energy_bars(ax, sub, (x, y, hue), hues, fracs, log, panel)
        ax.set_xticks(np.arange(len(fracs)), [f"{f:g}" for f in fracs])
        ax.set_ylim(0, 1.02)
        style_axes(ax, panel, x, "E_k")
    if hue:
        figure_legend(fig, axes)
    return fig, log


def energy_kept(
    sweep: Any,
    *,
    x: str = "frac",
    y: str = "energy_kept",
    hue: str | None = TASK,
    method: str | None = "method",
    mode: str | None = "mode",
    select: Mapping[str, Any] | None = None,
    title: str = "Energy kept E_k: useful vs harmful updates",
) -> FigureView:
    """Grouped bars of E_k = Σ‖PΔ_T‖² / Σ‖Δ_T‖² against frac, one bar per update (useful, harmful).

    Args:
        sweep: a ``SWEEP`` table; reference rows (``frac`` NaN) are left out.
        x, y: the frac and energy columns (``y="energy_kept_no_embed"`` for E_k without embeddings).
        hue: the bar grouping column; the default ``"task"`` (the study's label) is used when the
            table has it, else one bar per frac; ``None`` for one bar per frac.
        method, mode: panel columns (columns = methods, rows = modes); ``None`` for one panel.
        select: keep rows where ``column == value``; other varying columns are averaged.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` rows: ``panel`` = ``"{mode}: {method}"``, ``series`` = hue
        value, ``x`` = frac, ``y`` = E_k.

    Raises:
        SchemaError: the table lacks a ``SWEEP`` column.
        ValueError: an argument names no column.

    Example:
        >>> viz.energy_kept(sweep_df, select={"mode": "parallel"})

    Gotcha: for a Haar-random k-dimensional subspace E_k ≈ k/m, so the Random bars are the
    reference the Top-K bars should be read against.
    """
    what = "viz.energy_kept"
    df = schema_frame(sweep, SWEEP, select, what)
    check_columns(df, what, x=x, y=y, method=method, mode=mode)
    hue = label_column(df, what, "hue", hue, TASK)
    df = df[df[x].notna() & df[y].notna()]
    if df.empty:
        raise ValueError(f"{what}: no row has both {x!r} and {y!r}")
    agg, note = average_over_rest(df, [c for c in (mode, method, hue, x) if c], [y])
    fig, log = _energy_picture(agg, (x, y, hue, method, mode))
    params = {"x": x, "y": y, "hue": hue, "method": method, "mode": mode, "select": dict(select or {})}
    return figure_view("energy_kept", title, df, note, fig, log, params)


# ---------------------------------------------------------------------- patching heatmaps
def _position_labels(df: pd.DataFrame, position: str, positions: list[Any], token: str | None) -> list[str]:
    """Tick labels of the positions: ``"all"`` for -1, else the index, or ``"{token} ({index})"``."""
    if not token:
        return ["all" if p == -1 else str(p) for p in positions]
    tok = df.drop_duplicates(position).set_index(position)[token]
    return [f"{mpl_text(tok.get(p, ''), 10)} ({p})" for p in positions]


def _patching_grid(sub: pd.DataFrame, cols: tuple[str, str, str], layers: list[Any], positions: list[Any]):
    """The ``[layer, position]`` grid of mean ``value``; ``cols`` = (layer, position, value)."""
    layer, position, value = cols
    return (
        sub.pivot_table(index=layer, columns=position, values=value, aggfunc="mean")
        .reindex(index=layers, columns=positions)
        .to_numpy(dtype=float)
    )


def _patching_picture(
    df: pd.DataFrame, agg: pd.DataFrame, panels: list[Any], cols: tuple[str, str, str, str | None, str | None]
) -> tuple[Any, SeriesLog]:
    """One diverging heatmap per facet value; ``cols`` = (layer, position, value, facet, token)."""
    import numpy as np

    layer, position, value, facet, token = cols
    layers, positions = sorted(agg[layer].unique()), sorted(agg[position].unique())
    labels = _position_labels(df, position, positions, token)
    vmax = float(np.nanmax(np.abs(agg[value].to_numpy(dtype=float)))) or 1.0
    size = (max(4.0, 1.8 + 0.55 * len(positions)), max(3.0, 1.2 + 0.3 * len(layers)))
    fig, axes = new_figure(1, len(panels), size)
    log = SeriesLog()
    im = None
    for ax, pv in zip(axes[0], panels):
        grid = _patching_grid(agg if pv is None else agg[agg[facet] == pv], cols[:3], layers, positions)
        annot = None
        if len(layers) * len(positions) <= 160:
            annot = [["" if not np.isfinite(v) else f"{v:.2f}" for v in row] for row in grid]
        ylabels = [str(x) for x in layers]
        im = heatmap(ax, grid, ylabels, labels, cmap="RdBu_r", vmin=-vmax, vmax=vmax, annot=annot, fontsize=7)
        ax.set_ylabel(layer)
        ax.set_xlabel(position)
        ax.invert_yaxis()
        pname = "" if pv is None else f"{facet}={pv}"
        if pname:
            ax.set_title(mpl_text(pname, 40), fontsize=10)
        log.add_rows(pname, [f"layer {lay}" for lay in layers], positions, grid)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=value)
    return fig, log


def patching(
    table: Any,
    *,
    layer: str = "layer",
    position: str = "position",
    value: str = "effect",
    token: str | None = "token",
    facet: str | None = "hook",
    select: Mapping[str, Any] | None = None,
    max_panels: int = 4,
    title: str = "Activation patching: effect by layer and position",
) -> FigureView:
    """Heatmap of an activation-patching effect, layers × positions (diverging, centred at 0).

    Args:
        table: a ``PATCHING`` table (``interventions.patching_sweep``), one row per (hook name,
            position, head): ``position`` -1 means all positions at once.
        layer, position, value: columns (default the declared ones).
        token: a column holding each position's token, used in the tick labels; the default
            ``"token"`` is used when the table has it, else positions are numbered.
        facet: one heatmap per value of this column (at most ``max_panels``); the default
            ``"hook"`` is the hook name without its layer (``blocks.3.hook_resid_pre`` ->
            ``hook_resid_pre``), added from ``name`` when the table has no ``hook`` column;
            ``None`` for one heatmap.
        select: keep rows where ``column == value``; other varying columns (e.g. ``head``) are
            averaged.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series``: ``panel`` = ``"{facet}={value}"``, ``series`` =
        ``"layer {L}"``, ``x`` = position, ``y`` = effect.

    Raises:
        SchemaError: the table lacks a ``PATCHING`` column.
        ValueError: an argument names no column.

    Example:
        >>> viz.patching(patching_sweep(model, clean, corrupted, metric=logit_diff(a, b)))
    """
    what = "viz.patching"
    df = schema_frame(table, PATCHING, select, what)
    if "hook" not in df.columns:
        df = df.assign(hook=df["name"].astype(str).str.replace(r"^blocks\.\d+\.", "", regex=True))
    check_columns(df, what, layer=layer, position=position, value=value, facet=facet)
    token = label_column(df, what, "token", token, "token")
    agg, note = average_over_rest(df, [c for c in (facet, layer, position) if c], [value])
    panels = levels(agg, facet)
    if len(panels) > max_panels:
        panels = pick_subset(panels, max_panels)
        note = (note + f" Showing {facet} in {panels}.").strip()
    fig, log = _patching_picture(df, agg, panels, (layer, position, value, facet, token))
    params = {"layer": layer, "position": position, "value": value, "facet": facet}
    return figure_view("patching", title, df, note, fig, log, {**params, "select": dict(select or {})})
