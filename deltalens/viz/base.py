"""The view object every ``deltalens.viz`` function returns, and shared drawing helpers.

A view is data plus a way to draw it. It renders in Jupyter through ``_repr_html_`` without
touching the network, saves to one self-contained HTML file with ``.save("x.html")``, and a
picture view (a matplotlib PNG, embedded as a base64 data URI) also saves as ``.save("x.png")``.

Element ids are derived from a hash of the content, so the same input always gives
byte-identical HTML.

Example:
    >>> import pandas as pd
    >>> from deltalens import viz
    >>> table = pd.DataFrame({"layer": [0, 1, 2], "accuracy": [0.55, 0.8, 0.93], "model": "W_A"})
    >>> view = viz.probe_accuracy(table)
    >>> view.series[["series", "x", "y"]].values.tolist()
    [['W_A', 0, 0.55], ['W_A', 1, 0.8], ['W_A', 2, 0.93]]
    >>> view.save("probe.html"); view.save("probe.png")
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PAGE_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;
padding:16px 28px;color:#1d1d1f;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin:.4em 0}
h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.dl-view{margin:12px 0 22px}
.dl-view figcaption,.dl-view .dl-title{font-weight:600;margin:0 0 6px}
.dl-view img{max-width:100%;height:auto;border:1px solid #eee}
.dl-caption{color:#555;font-size:.9em;margin:4px 0}
.dl-table{border-collapse:collapse;font-size:.85em;margin:8px 0}
.dl-table td,.dl-table th{border:1px solid #ddd;padding:3px 8px;text-align:right}
.dl-table th{background:#f5f5f7}.dl-table td:first-child{text-align:left}
.dl-scroll{overflow-x:auto;max-height:520px;overflow-y:auto}
.dl-row{display:flex;flex-wrap:wrap;gap:18px}.dl-col{flex:1 1 420px;min-width:360px}
nav.dl-toc{background:#f8f8fa;border:1px solid #e5e5ea;padding:8px 18px;border-radius:6px}
"""


def content_id(*parts: Any, prefix: str = "dl") -> str:
    """A short deterministic id: ``prefix-`` + the first 12 hex digits of a SHA-256 of ``parts``."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return f"{prefix}-{h.hexdigest()[:12]}"


def esc(text: Any) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(text), quote=True)


def html_page(title: str, body: str, head: str = "") -> str:
    """A complete offline HTML page (inline CSS, no external resources)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{esc(title)}</title>\n'
        f"<style>{PAGE_CSS}</style>\n{head}</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


@dataclass(kw_only=True, repr=False, eq=False)
class View:
    """A visualisation: the data it was drawn from plus an offline HTML rendering.

    Attributes:
        kind: what the view shows (``"attention"``, ``"steering_sweep"`` ...).
        title: heading shown above the view.
        data: what the view was drawn from (usually a tidy ``pandas.DataFrame``).
        caption: a short note under the view (what was averaged, selected ...).
        provenance: ``{model label: provenance dict}`` of every model the view shows; a
            :class:`~deltalens.viz.Report` collects these.
        params: the parameters the view was drawn with.
    """

    kind: str
    title: str
    data: Any = None
    caption: str = ""
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    # -- to be specialised ---------------------------------------------------------------
    def body_html(self, id_suffix: str = "") -> str:
        """The view's HTML without shared assets (scripts a page needs once)."""
        raise NotImplementedError

    def assets(self) -> dict[str, str]:
        """``{asset name: HTML}`` the page must contain once before the body (e.g. a script)."""
        return {}

    @property
    def uid(self) -> str:
        """Deterministic element id of this view."""
        return content_id(self.kind, self.title, self.caption, prefix=f"dl-{self.kind}")

    # -- shared --------------------------------------------------------------------------
    def fragment(self, include_assets: bool = True, id_suffix: str = "") -> str:
        """HTML to embed in a page: assets (if asked) followed by the body."""
        head = "".join(self.assets().values()) if include_assets else ""
        return head + self.body_html(id_suffix=id_suffix)

    def _repr_html_(self) -> str:
        return self.fragment(include_assets=True)

    def to_html(self) -> str:
        """One complete, self-contained HTML page showing this view."""
        return html_page(
            self.title, f"<h1>{esc(self.title)}</h1>\n{self.body_html()}", "".join(self.assets().values())
        )

    def save(self, path: str | Path) -> Path:
        """Write the view to ``path``: ``.html`` (self-contained page) or ``.png`` (picture views).

        Raises:
            ValueError: an unsupported suffix, or ``.png`` for an interactive (HTML-only) view.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".html", ".htm"):
            path.write_text(self.to_html(), encoding="utf-8")
        elif suffix == ".png":
            path.write_bytes(self._png_bytes())
        else:
            raise ValueError(
                f"cannot save a {self.kind} view as {path.name!r}; use a .html or .png file name"
            )
        return path

    def _png_bytes(self) -> bytes:
        raise ValueError(
            f"the {self.kind} view is interactive HTML and has no static picture; save it as .html instead"
        )

    def __repr__(self) -> str:
        shape = getattr(self.data, "shape", None)
        data = f"data={type(self.data).__name__}{tuple(shape) if shape is not None else ''}"
        models = f", models={list(self.provenance)}" if self.provenance else ""
        return f"{type(self).__name__}(kind={self.kind!r}, title={self.title!r}, {data}{models})"


@dataclass(kw_only=True, repr=False, eq=False)
class FigureView(View):
    """A static picture (matplotlib, PNG) with the series that were drawn.

    Attributes:
        png: the picture, PNG bytes.
        series: a tidy ``DataFrame`` of what was drawn, columns ``panel, series, x, y``
            (lines and bars: one row per point; heatmaps: ``series`` is the row label, ``x`` the
            column label and ``y`` the cell value; reference lines have ``x`` = NaN).
    """

    png: bytes = b""
    series: Any = None

    @property
    def uid(self) -> str:
        return content_id(self.kind, self.title, self.caption, self.png, prefix=f"dl-{self.kind}")

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the picture in pixels."""
        return png_size(self.png)

    def body_html(self, id_suffix: str = "") -> str:
        w, h = self.size
        uri = "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")
        cap = f'<p class="dl-caption">{esc(self.caption)}</p>' if self.caption else ""
        return (
            f'<figure class="dl-view dl-figure" id="{self.uid}{id_suffix}" data-kind="{esc(self.kind)}">'
            f"<figcaption>{esc(self.title)}</figcaption>"
            f'<img alt="{esc(self.title)}" width="{w}" height="{h}" style="max-width:100%;height:auto"'
            f' src="{uri}">'
            f"{cap}</figure>\n"
        )

    def _png_bytes(self) -> bytes:
        return self.png


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` read from a PNG header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not PNG data")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# ---------------------------------------------------------------------------------------
# matplotlib helpers (imported lazily)
# ---------------------------------------------------------------------------------------
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


def figure_legend(fig: Figure, axes: Any) -> None:
    """One legend for the whole figure, outside the panels on the right (labels deduplicated)."""
    seen: dict[str, Any] = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=8, frameon=False)


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

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["panel", "series", "x", "y"])


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


# ---------------------------------------------------------------------------------------
# table helpers shared by the plot functions
# ---------------------------------------------------------------------------------------
def require_columns(df: pd.DataFrame, columns: Iterable[str | None], what: str) -> None:
    """Raise a clear ``KeyError`` if ``df`` lacks any of ``columns`` (``None`` entries ignored)."""
    import difflib

    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, [str(x) for x in df.columns], n=2, cutoff=0.5)
            hints.append(f"{c!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise KeyError(
            f"{what}: the table has no column {', '.join(hints)}; its columns are {list(df.columns)}. "
            "Pass the column names as keyword arguments."
        )


def as_frame(table: Any, what: str) -> pd.DataFrame:
    """Accept a DataFrame (or anything ``pandas.DataFrame`` accepts) and check it is non-empty."""
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    if df.empty:
        raise ValueError(f"{what}: the table is empty")
    return df


def apply_select(df: pd.DataFrame, select: Mapping[str, Any] | None, what: str) -> pd.DataFrame:
    """Keep the rows where each ``column == value`` (or ``column in [values]``)."""
    if not select:
        return df
    require_columns(df, select, what)
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


def auto_column(
    df: pd.DataFrame, given: str | None, candidates: Sequence[str], varying: bool = False
) -> str | None:
    """Resolve a column argument: ``"auto"`` picks the first of ``candidates`` present (and, with
    ``varying=True``, taking more than one value); ``None`` means no column; anything else is kept."""
    if given != "auto":
        return given
    for c in candidates:
        if c in df.columns and (not varying or df[c].nunique(dropna=False) > 1):
            return c
    return None


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


def color_map(labels: Sequence[Any]) -> dict[Any, str]:
    """A stable colour per label (tab10)."""
    palette = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
    ]
    return {lab: palette[i % len(palette)] for i, lab in enumerate(labels)}


def pick_subset(values: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` values, evenly spaced, keeping the first and last."""
    values = list(values)
    if len(values) <= limit:
        return values
    idx = sorted({round(i * (len(values) - 1) / (limit - 1)) for i in range(limit)})
    return [values[i] for i in idx]


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


def provenance_of(obj: Any) -> dict[str, Any] | None:
    """The provenance dict of a model (``.provenance.to_dict()``), a cache (``.meta``) or None."""
    prov = getattr(obj, "provenance", None)
    if prov is not None:
        return dict(prov.to_dict()) if hasattr(prov, "to_dict") else dict(prov)
    meta = getattr(obj, "meta", None)
    if isinstance(meta, Mapping) and isinstance(meta.get("provenance"), Mapping):
        return dict(meta["provenance"])
    return None


def dataframe_html(df: pd.DataFrame, max_rows: int = 60, float_format: str = "{:.4g}") -> str:
    """An escaped HTML table of ``df`` (first and last rows if it is long)."""
    shown = df
    note = ""
    if len(df) > max_rows:
        half = max_rows // 2
        import pandas as pd

        shown = pd.concat([df.head(half), df.tail(max_rows - half)])
        note = (
            f'<p class="dl-caption">{len(df)} rows; showing the first {half} and last {max_rows - half}.</p>'
        )
    body = shown.to_html(
        classes="dl-table",
        border=0,
        index=False,
        escape=True,
        float_format=lambda v: float_format.format(v),
        na_rep="",
    )
    return f'<div class="dl-scroll">{body}</div>{note}'


def mapping_html(mapping: Mapping[str, Any]) -> str:
    """A two-column key / value HTML table (nested mappings flattened with dots)."""
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td><code>{esc(v)}</code></td></tr>" for k, v in flatten(mapping).items()
    )
    return f'<table class="dl-table"><tr><th>key</th><th>value</th></tr>{rows}</table>'


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
