"""Table and drawing helpers shared by the plot functions of ``deltalens.viz``.

Table helpers check and resolve column arguments, select rows and average over what varies;
drawing helpers make pyplot-free Agg figures, heatmaps and small multiples of lines, and record
what was drawn in a :class:`SeriesLog`. matplotlib and pandas are imported inside the functions,
so importing this module stays light.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deltalens.viz.base import FigureView

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from deltalens.schemas import Schema


# --------------------------------------------------------------------------------- tables
def column_error(df: pd.DataFrame, what: str, label: str, value: str) -> ValueError:
    """A ``ValueError`` saying ``value``, given as ``label`` (e.g. ``"hue='modle'"``), is not a
    column of ``df``; it names close matches and the table's columns."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(x) for x in df.columns], n=2, cutoff=0.5)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return ValueError(f"{what}: {label} is not a column of the table{hint}; its columns are {list(df.columns)}")


def check_columns(df: pd.DataFrame, what: str, **columns: str | None) -> None:
    """Raise a ``ValueError`` naming the argument, its value and the table's columns for each
    column argument (``name=value``) that ``df`` lacks; ``None`` means no column and passes."""
    for arg, value in columns.items():
        if value is not None and value not in df.columns:
            raise column_error(df, what, f"{arg}={value!r}", value)


def label_column(df: pd.DataFrame, what: str, arg: str, value: str | None, default: str) -> str | None:
    """Resolve a study-label argument (``task``, ``model``, ``embeddings`` ...), a column no schema
    declares: its ``default`` name is used when the table has that column and dropped (None) when
    it does not; any other name must be a column (else :func:`check_columns`'s ``ValueError``)."""
    if value == default and value not in df.columns:
        return None
    check_columns(df, what, **{arg: value})
    return value


def as_frame(table: Any, what: str) -> pd.DataFrame:
    """Accept a DataFrame (or anything ``pandas.DataFrame`` accepts) and check it is non-empty."""
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    if df.empty:
        raise ValueError(f"{what}: the table is empty")
    return df


def schema_frame(table: Any, schema: Schema, select: Mapping[str, Any] | None, what: str) -> pd.DataFrame:
    """``table`` as a non-empty DataFrame checked against ``schema`` (a
    :class:`~deltalens.schemas.SchemaError` names missing columns), then the rows ``select`` keeps."""
    return apply_select(schema.check(as_frame(table, what), where=what), select, what)


def apply_select(df: pd.DataFrame, select: Mapping[str, Any] | None, what: str) -> pd.DataFrame:
    """Keep the rows where each ``column == value`` (or ``column in [values]``)."""
    if not select:
        return df
    for col in select:
        if col not in df.columns:
            raise column_error(df, what, f"select key {col!r}", col)
    for col, val in select.items():
        if isinstance(val, list | tuple | set | frozenset):
            df = df[df[col].isin(list(val))]
        else:
            df = df[df[col] == val]
    if df.empty:
        raise ValueError(f"{what}: no row matches select={dict(select)!r}")
    return df


def default_rows(
    df: pd.DataFrame, select: Mapping[str, Any] | None, defaults: Mapping[str, Any]
) -> tuple[pd.DataFrame, str]:
    """Keep ``column == default`` for each column of ``defaults`` that varies and is not in ``select``.

    Returns the rows and a caption note naming the choices (so nothing is averaged silently).
    """
    picked = []
    for col, val in defaults.items():
        if (select and col in select) or col not in df.columns or df[col].nunique(dropna=False) < 2:
            continue
        keep = df[col] == val
        if keep.any():
            df = df[keep]
            picked.append(f"{col}={val}")
    return df, (f"Showing {', '.join(picked)} (pass select={{...}} for others)." if picked else "")


def average_over_rest(
    df: pd.DataFrame, keys: Sequence[str], values: Sequence[str]
) -> tuple[pd.DataFrame, str]:
    """Group by ``keys`` and average ``values``; say which other varying columns were averaged over."""
    keys = [k for k in keys if k is not None]
    other = [c for c in df.columns if c not in keys and c not in values and df[c].nunique(dropna=False) > 1]
    counts = df.groupby(keys, dropna=False, sort=False).size()
    note = ""
    if (counts > 1).any():
        note = (
            f"Mean over {', '.join(other[:5])}{' ...' if len(other) > 5 else ''} "
            "(pass select={...} to pick one)."
            if other
            else "Mean over repeated rows."
        )
    out = df.groupby(keys, dropna=False, sort=False)[list(values)].mean(numeric_only=True).reset_index()
    return out, note


_ORDER_KEYS = {  # rank within one column: methods, modes, then the stages / updates of a model family
    "topk": 0, "top": 0, "randomk": 1, "random": 2, "none": 3,
    "parallel": 0, "same": 0, "par": 0, "orthogonal": 1, "orth": 1, "reference": 2, "full": 3,
    "w0": 0, "base": 0, "wa": 1, "aligned": 1, "alignment": 1, "deltaa": 1,
    "useful": 2, "harmful": 3, "contaminated": 4, "safety": 5,
}  # fmt: skip


def ordered(values: Iterable[Any]) -> list[Any]:
    """Unique values, known names (Top-K, RandomK, Random; parallel, orthogonal ...) first, then sorted."""
    uniq = list(dict.fromkeys(v for v in values))

    def key(v: Any) -> tuple[int, Any]:
        norm = re.sub(r"[^a-z0-9]", "", str(v).lower())
        return (_ORDER_KEYS.get(norm, 99), str(v))

    try:
        return sorted(uniq, key=key)
    except TypeError:  # pragma: no cover - mixed types
        return uniq


def pick_subset(values: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` values, evenly spaced, keeping the first and last."""
    values = list(values)
    if len(values) <= limit:
        return values
    idx = sorted({round(i * (len(values) - 1) / (limit - 1)) for i in range(limit)})
    return [values[i] for i in idx]


def levels(df: pd.DataFrame, column: str | None) -> list[Any]:
    """The :func:`ordered` values of ``column``, or ``[None]`` when there is no column."""
    return ordered(df[column]) if column else [None]


def panel_values(df: pd.DataFrame, column: str | None, max_panels: int, note: str) -> tuple[list[Any], str]:
    """:func:`levels` of a panel column, at most ``max_panels`` evenly spaced ones (``note`` says so)."""
    values = levels(df, column)
    if len(values) > max_panels:
        kept = pick_subset(sorted(values), max_panels)
        note = (note + f" Showing {column} in {kept} of {len(values)} values.").strip()
        values = kept
    return values, note


# --------------------------------------------------- figures (matplotlib imported lazily)
def new_figure(
    n_rows: int = 1, n_cols: int = 1, panel_size: tuple[float, float] = (4.6, 3.3)
) -> tuple[Figure, Any]:
    """A pyplot-free Agg figure and a 2-D array of axes."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows), layout="constrained")
    axes = np.atleast_2d(np.asarray(fig.subplots(n_rows, n_cols, squeeze=False)))
    return fig, axes


def figure_png(fig: Figure, dpi: int = 90) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg backend (no timestamp, so deterministic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def figure_legend(fig: Figure, axes: Any, where: str = "right") -> None:
    """One legend for the whole figure, outside the panels (labels deduplicated).

    ``where="right"`` puts it beside the panels, ``"below"`` under them in as many columns as
    the figure's width holds (constrained layout keeps the panels clear of it either way).
    """
    seen: dict[str, Any] = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if not seen:
        return
    if where == "below":
        widest = max(len(label) for label in seen)
        per_column = 0.55 + 0.065 * widest  # inches: handle, padding and the label at fontsize 8
        ncols = max(1, min(len(seen), int(fig.get_figwidth() // per_column)))
        fig.set_figheight(fig.get_figheight() + 0.2 + 0.18 * math.ceil(len(seen) / ncols))  # room for it
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=ncols, fontsize=8,
                   frameon=False)  # fmt: skip
    else:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=8, frameon=False)


def figure_view(
    kind: str, title: str, data: Any, caption: str, fig: Figure, log: SeriesLog, params: dict, **extra: Any
) -> FigureView:
    """The :class:`FigureView` of a drawn figure: its PNG and the series ``log`` recorded."""
    fields = {"kind": kind, "title": title, "data": data, "caption": caption, "params": params, **extra}
    return FigureView(**fields, png=figure_png(fig), series=log.frame())


def mpl_text(text: Any, limit: int = 18) -> str:
    """Make a token or label safe for matplotlib (no mathtext, visible whitespace, bounded length)."""
    s = str(text).replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    s = "".join(c if c.isprintable() else "?" for c in s)
    if s.strip() == "" and s:
        s = repr(s)[1:-1].replace(" ", "␣")
    return s if len(s) <= limit else s[: limit - 1] + "…"


class SeriesLog:
    """Collects ``(panel, series, x, y)`` rows while a figure is drawn."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, panel: str, series: str, xs: Iterable[Any], ys: Iterable[Any]) -> None:
        for x, y in zip(xs, ys):
            self.rows.append({"panel": panel, "series": series, "x": _py(x), "y": _py(y)})

    def add_rows(self, panel: str, names: Iterable[str], xs: Sequence[Any], grid: Any) -> None:
        """One series per row of a heatmap ``grid``: row ``i`` is named ``names[i]``."""
        for name, ys in zip(names, grid):
            self.add(panel, name, xs, ys)

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["panel", "series", "x", "y"])


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


_TAB10 = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf".split()


def color_map(labels: Sequence[Any]) -> dict[Any, str]:
    """A stable colour per label (tab10)."""
    return {lab: _TAB10[i % len(_TAB10)] for i, lab in enumerate(labels)}


def text_color(image: Any, value: float) -> str:
    """Black or white, whichever reads better on ``image``'s colour for ``value``."""
    import math

    if value is None or not math.isfinite(value):
        return "black"
    r, g, b, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def panel_name(row: str | None, rv: Any, col: str | None, cv: Any) -> str:
    """``"row=value, col=value"`` for a small-multiples panel (parts without a column left out)."""

    def part(c: str | None, v: Any) -> str:
        if c is None:
            return ""
        return f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}"

    return ", ".join(p for p in (part(row, rv), part(col, cv)) if p)


def style_axes(
    ax: Axes, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None
) -> None:
    if title:
        ax.set_title(mpl_text(title, 60), fontsize=10)
    if xlabel:
        ax.set_xlabel(mpl_text(xlabel, 40))
    if ylabel:
        ax.set_ylabel(mpl_text(ylabel, 40))
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def facets(
    df: pd.DataFrame, axes: Any, row: str | None, rows: Sequence[Any], col: str | None, cols: Sequence[Any]
) -> Iterator[tuple[Axes, pd.DataFrame, Any, Any]]:
    """``(panel axes, its rows of df, row value, column value)`` for each panel of a small-multiples grid."""
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            sub = df
            if row:
                sub = sub[sub[row] == rv]
            if col:
                sub = sub[sub[col] == cv]
            yield axes[i, j], sub, rv, cv


def heatmap(
    ax: Axes,
    grid: Any,
    rows: Sequence[Any],
    cols: Sequence[Any],
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    annot: list[list[str]] | None = None,
    fontsize: int = 8,
    annot_size: int | None = None,
    rotate: bool | None = None,
    limits: tuple[int, int] = (18, 14),
    origin: str | None = None,
) -> Any:
    """Draw ``grid`` with tick labels of at most ``limits`` = (rows, columns) characters and cell texts.

    ``rotate`` tilts the column labels (default: more than 4); ``annot_size`` defaults to ``fontsize - 1``.
    """
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin=origin)
    tilt = len(cols) > 4 if rotate is None else rotate
    ax.set_xticks(
        range(len(cols)),
        [mpl_text(c, limits[1]) for c in cols],
        rotation=45 if tilt else 0,
        ha="right" if tilt else "center",
        fontsize=fontsize,
    )
    ax.set_yticks(range(len(rows)), [mpl_text(r, limits[0]) for r in rows], fontsize=fontsize)
    if annot is not None:
        size = fontsize - 1 if annot_size is None else annot_size
        for i in range(len(rows)):
            for j in range(len(cols)):
                if annot[i][j]:
                    color = text_color(im, grid[i, j])
                    ax.text(j, i, annot[i][j], ha="center", va="center", fontsize=size, color=color)
    return im


# ------------------------------------------------------------------------- lines by layer
def line_view(
    kind: str,
    df: pd.DataFrame,
    *,
    x: str,
    y: str,
    hue: str | None,
    col: str | None,
    row: str | None,
    band: str | None,
    baseline: str | None,
    chance: float | None,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None,
    max_panels: int = 6,
    headline: str = "",
) -> FigureView:
    """One line per ``hue`` value against ``x``, one panel per (``row``, ``col``) value.

    ``band`` is a standard-deviation column drawn around the line, ``baseline`` a column drawn
    dashed, ``chance`` a dotted horizontal line; other varying columns are averaged. The caller
    has checked that every named column exists. ``headline`` is said once, above the panels and
    first in the caption (what every panel has in common).
    """
    values = [c for c in (y, band, baseline) if c]
    agg, note = average_over_rest(df, [c for c in (row, col, hue, x) if c], values)
    rows, note = panel_values(agg, row, max_panels, note)
    cols, note = panel_values(agg, col, max_panels, note)
    hues = levels(agg, hue)
    colors = color_map(hues)
    fig, axes = new_figure(len(rows), len(cols), (4.4, 3.2))
    log = SeriesLog()
    for ax, sub, rv, cv in facets(agg, axes, row, rows, col, cols):
        pname = panel_name(row, rv, col, cv)
        for hv in hues:
            s = sub if hv is None else sub[sub[hue] == hv]
            label = y if hv is None else str(hv)
            _hue_line(ax, s, x, y, label, colors[hv], band, baseline, log, pname)
        _finish_line_panel(ax, sub, pname, x, ylabel, baseline, chance, ylim, log)
    figure_legend(fig, axes)
    if headline:
        fig.suptitle(mpl_text(headline, 160), fontsize=10)
        note = f"{headline} {note}".strip()
    params = {"x": x, "y": y, "hue": hue, "col": col, "row": row, "band": band, "baseline": baseline}
    return figure_view(kind, title, df, note, fig, log, params)


def _hue_line(
    ax: Axes,
    rows: pd.DataFrame,
    x: str,
    y: str,
    label: str,
    color: str,
    band: str | None,
    baseline: str | None,
    log: SeriesLog,
    panel: str,
) -> None:
    """Draw one line of :func:`line_view` (with its band and dashed baseline) and log it."""
    s = rows.dropna(subset=[y]).sort_values(x)
    if s.empty:
        return
    ax.plot(s[x], s[y], marker="o", ms=4, color=color, label=mpl_text(label, 30))
    log.add(panel, label, s[x], s[y])
    if band:
        ax.fill_between(s[x], s[y] - s[band], s[y] + s[band], color=color, alpha=0.15, lw=0)
    if baseline:
        ax.plot(s[x], s[baseline], ls="--", lw=1, color=color, alpha=0.7)
        log.add(panel, f"{label} (random baseline)", s[x], s[baseline])


def _finish_line_panel(
    ax: Axes,
    sub: pd.DataFrame,
    panel: str,
    x: str,
    ylabel: str,
    baseline: str | None,
    chance: float | None,
    ylim: tuple[float, float] | None,
    log: SeriesLog,
) -> None:
    """A :func:`line_view` panel's legend entry for baselines, chance line, limits, labels and ticks."""
    if baseline:
        ax.plot([], [], ls="--", color="gray", label="random baseline")
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance {chance:g}")
        log.add(panel, "chance", [float("nan")], [chance])
    if ylim:
        ax.set_ylim(*ylim)
    style_axes(ax, panel or None, x, ylabel)
    if sub[x].dtype.kind in "iu":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if sub[x].nunique() == 1:  # one layer: MaxNLocator would fall back to 1.900, 1.925, ...
            ax.set_xticks([int(sub[x].dropna().iloc[0])])
