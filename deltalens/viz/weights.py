"""Weight-space views: the norm of ΔW per layer and module, and the subspace overlap (MSO)
between weight updates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deltalens.hooks.weights import tensor_layer, tensor_module
from deltalens.schemas import DELTA_NORMS, WEIGHT_OVERLAP
from deltalens.viz.base import FigureView
from deltalens.viz.plots import (
    SeriesLog,
    average_over_rest,
    check_columns,
    color_map,
    facets,
    figure_view,
    heatmap,
    label_column,
    levels,
    mpl_text,
    new_figure,
    ordered,
    panel_name,
    panel_values,
    schema_frame,
    style_axes,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

EMBEDDINGS = "embeddings"
"""Whether the (un)embedding tensors count in an overlap row (``included`` / ``excluded``), an
extra column ``probes.weight_overlap_pairs`` adds that ``WEIGHT_OVERLAP`` does not declare: the
default row facet of :func:`weight_overlap`."""

# ---------------------------------------------------------------------------------------
# ΔW norms per layer and module
# ---------------------------------------------------------------------------------------
def split_param_name(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "self_attn.q_proj")``.

    Biases keep a ``.bias`` suffix; tensors outside the blocks (embeddings, final norm,
    unembedding) give ``(None, name without the model prefix and ".weight")``.
    """
    return tensor_layer(name), tensor_module(name)


def delta_norm_table(
    delta: Mapping[str, Any], reference: Mapping[str, Any] | None = None, update: str = "ΔW"
):
    """A tidy table of ``‖ΔW‖_F`` per tensor: ``update, name, layer, module, numel, norm, rel_norm``."""
    import pandas as pd
    import torch

    rows = []
    for name in delta:
        t = delta[name]
        norm = (
            float(torch.linalg.vector_norm(t.detach().float())) if isinstance(t, torch.Tensor) else float(t)
        )
        numel = int(t.numel()) if isinstance(t, torch.Tensor) else None
        rel = math.nan
        if reference is not None and name in reference:
            ref = float(torch.linalg.vector_norm(reference[name].detach().float()))
            rel = norm / ref if ref > 0 else math.nan
        layer, module = split_param_name(name)
        rows.append(
            {
                "update": update,
                "name": name,
                "layer": layer,
                "module": module,
                "numel": numel,
                "norm": norm,
                "rel_norm": rel,
            }
        )
    if not rows:
        raise ValueError("the delta holds no tensor")
    return pd.DataFrame(rows).astype({"layer": "Int64"})


def delta_norms(
    delta: Any,
    *,
    reference: Mapping[str, Any] | None = None,
    value: str | None = None,
    title: str = "‖ΔW‖ per layer and module",
) -> FigureView:
    """Heatmaps of the Frobenius norm of ΔW per (module, layer), plus bars for non-block tensors.

    Args:
        delta: a ``Mapping[str, Tensor]`` of ΔW (e.g. a ``WeightDelta``), several of them as
            ``{update label: mapping}`` (one panel each, shared colour scale), or a
            :data:`DELTA_NORMS` table (columns ``name, norm``, optionally ``update``, ``rel_norm`` ...).
        reference: the weights ΔW is relative to (e.g. ``model.state_dict()``); adds ``rel_norm``
            = ‖ΔW‖ / ‖W‖ and plots it.
        value: ``"norm"`` or ``"rel_norm"`` (default: ``rel_norm`` when a reference is given).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.data`` has columns ``update, name, layer, module, numel, norm,
        rel_norm``; heatmap cells are in ``.series`` (``series`` = module, ``x`` = layer).

    Raises:
        SchemaError: a table without ``name`` or ``norm``.
        TypeError: ``delta`` is neither a mapping nor a DataFrame.

    Example:
        >>> useful, harmful = dl.weight_delta(aligned, useful_ft), dl.weight_delta(aligned, harmful_ft)
        >>> viz.delta_norms({"useful": useful, "harmful": harmful}, reference=aligned.state_dict())
    """
    data = _norms_data(delta, reference)
    value = value or ("rel_norm" if data["rel_norm"].notna().any() else "norm")
    if value not in ("norm", "rel_norm"):
        raise ValueError(f"value must be 'norm' or 'rel_norm', got {value!r}")
    fig, log = _norms_picture(data, value, title)
    caption = "Colour: " + ("‖ΔW‖_F / ‖W‖_F" if value == "rel_norm" else "‖ΔW‖_F") + " per tensor."
    return figure_view("delta_norms", title, data, caption, fig, log, {"value": value})


def _norms_data(delta: Any, reference: Mapping[str, Any] | None) -> pd.DataFrame:
    """The ``DELTA_NORMS`` table of :func:`delta_norms`'s ``delta`` (a table's missing optional
    columns filled: layer and module parsed from ``name``, ``update="ΔW"``, ``rel_norm`` NaN)."""
    import pandas as pd

    if isinstance(delta, pd.DataFrame):
        data = DELTA_NORMS.check(delta, where="viz.delta_norms").copy()
        parsed = [split_param_name(n) for n in data["name"]]
        if "layer" not in data:
            data["layer"] = pd.array([p[0] for p in parsed], dtype="Int64")
        if "module" not in data:
            data["module"] = [p[1] for p in parsed]
        if "update" not in data:
            data["update"] = "ΔW"
        if "rel_norm" not in data:
            data["rel_norm"] = math.nan
        return data
    if isinstance(delta, Mapping) and delta and all(isinstance(v, Mapping) for v in delta.values()):
        return pd.concat([delta_norm_table(d, reference, str(k)) for k, d in delta.items()], ignore_index=True)
    if isinstance(delta, Mapping):
        return delta_norm_table(delta, reference)
    raise TypeError(
        "delta_norms takes a Mapping[str, Tensor], a dict of them, or a DataFrame; "
        f"got {type(delta).__name__}"
    )


def _outside_bars(ax: Axes, other: pd.DataFrame, updates: list[Any], value: str, log: SeriesLog) -> None:
    """Horizontal bars of ``value`` for the tensors outside the blocks, one bar per update."""
    import numpy as np

    names = list(dict.fromkeys(other["module"]))
    colors = color_map(updates)
    width = 0.8 / len(updates)
    for k, upd in enumerate(updates):
        sub = other[other["update"] == upd].set_index("module").reindex(names)
        ax.barh(
            np.arange(len(names)) + k * width,
            sub[value],
            height=width,
            color=colors[upd],
            label=mpl_text(upd, 30),
        )
        log.add("outside blocks", str(upd), names, sub[value])
    ax.invert_yaxis()
    ax.set_yticks(np.arange(len(names)) + 0.4 - width / 2, [mpl_text(n, 24) for n in names], fontsize=7)
    style_axes(ax, "outside blocks", value)
    if len(updates) > 1:
        ax.legend(fontsize=7, frameon=False)


def _norms_picture(data: pd.DataFrame, value: str, title: str) -> tuple[Any, SeriesLog]:
    """:func:`delta_norms`' figure: a (module × layer) heatmap per update, then the outside-block bars."""
    import numpy as np

    updates = list(dict.fromkeys(data["update"]))
    blocks = data[data["layer"].notna()]
    other = data[data["layer"].isna()]
    modules = list(dict.fromkeys(blocks["module"])) if not blocks.empty else []
    layers = sorted(int(x) for x in blocks["layer"].dropna().unique())
    vmax = float(np.nanmax(blocks[value])) if not blocks.empty else 1.0
    n_cols = len(updates) + (1 if not other.empty else 0)
    fig, axes = new_figure(
        1, n_cols, (max(3.6, 1.6 + 0.35 * len(layers)), max(3.0, 0.9 + 0.3 * len(modules)))
    )
    log = SeriesLog()
    im = None
    for k, upd in enumerate(updates):
        ax = axes[0, k]
        sub = blocks[blocks["update"] == upd]
        grid = np.full((len(modules), len(layers)), np.nan)
        for r in sub.itertuples():
            grid[modules.index(r.module), layers.index(int(r.layer))] = getattr(r, value)
        log.add_rows(str(upd), modules, layers, grid)
        im = heatmap(
            ax,
            grid,
            modules if k == 0 else [""] * len(modules),
            [str(x) for x in layers],
            cmap="viridis",
            vmin=0,
            vmax=vmax or 1.0,
            fontsize=7,
            rotate=False,
            limits=(28, 14),
        )
        ax.set_xlabel("layer")
        ax.set_title(mpl_text(upd, 40), fontsize=10)
    if im is not None and layers:
        fig.colorbar(im, ax=axes[0, : len(updates)].tolist(), shrink=0.8, label=value)
    if not other.empty:
        _outside_bars(axes[0, -1], other, updates, value, log)
    return fig, log


# ---------------------------------------------------------------------------------------
# subspace overlap between weight updates
# ---------------------------------------------------------------------------------------
def _pair_grids(
    sub: pd.DataFrame, labels: list[Any], cols: tuple[str, str, str, str | None]
) -> tuple[Any, Any]:
    """Symmetric ``[update, update]`` grids of ``value`` and ``baseline``; ``cols`` = (a, b, value, baseline)."""
    import numpy as np

    a, b, value, baseline = cols
    n = len(labels)
    grid = np.full((n, n), np.nan)
    base = np.full((n, n), np.nan)
    for rec in sub.to_dict("records"):
        i, j = labels.index(rec[a]), labels.index(rec[b])
        for p, q in ((i, j), (j, i)):
            grid[p, q] = rec[value]
            if baseline:
                base[p, q] = rec[baseline]
    return grid, base


def _overlap_cell(v: float, base: float) -> str:
    """One heatmap cell's text: the MSO above the bracketed baseline ("" where there is no MSO)."""
    if not math.isfinite(v):
        return ""
    return f"{v:.2f}" + (f"\n({base:.2f})" if math.isfinite(base) else "")


def _overlap_picture(
    agg: pd.DataFrame, cols: tuple[str, str, str, str | None, str | None, str | None], rows: list, panels: list
) -> tuple[Any, SeriesLog]:
    """One symmetric heatmap per (row, col) value; ``cols`` = (a, b, value, baseline, row, col)."""
    a, b, value, baseline, row, col = cols
    labels = ordered(list(agg[a]) + list(agg[b]))
    names = [str(x) for x in labels]
    side = max(3.2, 1.2 + 0.9 * len(labels))
    fig, axes = new_figure(len(rows), len(panels), (side + 0.6, side))
    log = SeriesLog()
    im = None
    for ax, sub, rv, cv in facets(agg, axes, row, rows, col, panels):
        grid, base = _pair_grids(sub, labels, (a, b, value, baseline))
        annot = [[_overlap_cell(v, bv) for v, bv in zip(gr, br)] for gr, br in zip(grid, base)]
        im = heatmap(ax, grid, names, names, cmap="viridis", vmin=0, vmax=1, annot=annot)
        pname = panel_name(row, rv, col, cv)
        ax.set_title(mpl_text(pname or value, 50), fontsize=10)
        log.add_rows(pname, names, names, grid)
    if im is not None:
        label = value + (" (random baseline)" if baseline else "")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    return fig, log


def weight_overlap(
    table: Any,
    *,
    a: str = "a",
    b: str = "b",
    value: str = "mso",
    baseline: str | None = "baseline",
    col: str | None = "eta",
    row: str | None = EMBEDDINGS,
    select: Mapping[str, Any] | None = None,
    max_panels: int = 4,
    title: str = "Weight-update subspace overlap (MSO)",
) -> FigureView:
    """Symmetric heatmaps of mean MSO between update pairs (useful, harmful, contaminated, Δ_A).

    Args:
        table: a ``WEIGHT_OVERLAP`` table (``probes.weight_overlap_pairs``), one row per (pair,
            η, ...). Rows that share a cell are averaged (the caption names the columns that vary).
        a, b, value: the pair and MSO columns (default the declared ones).
        baseline: the random-baseline column shown in brackets (``None`` omits it).
        col: one heatmap per value (default ``eta``), at most ``max_panels`` evenly spaced ones;
            ``None`` for one column of panels.
        row: one row of heatmaps per value; the default ``"embeddings"`` (``included`` /
            ``excluded``, an extra column) is used when the table has it, else one row; ``None`` for one row.
        select: keep rows where ``column == value`` (e.g. ``{"eta": [0.5, 0.9]}``).
        title: heading.

    Returns:
        A :class:`FigureView`; cells read "MSO (random baseline)"; ``.series``: ``panel`` =
        ``"{row}=…, {col}=…"``, ``series`` = row update, ``x`` = column update, ``y`` = mean MSO.

    Raises:
        SchemaError: the table lacks a ``WEIGHT_OVERLAP`` column.
        ValueError: an argument names no column.

    Example:
        >>> viz.weight_overlap(mso_df, select={"embeddings": "excluded"})
    """
    what = "viz.weight_overlap"
    df = schema_frame(table, WEIGHT_OVERLAP, select, what)
    check_columns(df, what, a=a, b=b, value=value, baseline=baseline, col=col)
    row = label_column(df, what, "row", row, EMBEDDINGS)
    values = [value] + ([baseline] if baseline else [])
    agg, note = average_over_rest(df, [c for c in (row, col, a, b) if c], values)
    rows = levels(agg, row)
    cols, note = panel_values(agg, col, max_panels, note)
    fig, log = _overlap_picture(agg, (a, b, value, baseline, row, col), rows, cols)
    params = {"a": a, "b": b, "value": value, "baseline": baseline, "col": col, "row": row}
    return figure_view("weight_overlap", title, df, note, fig, log, {**params, "select": dict(select or {})})
