"""The view object every ``deltalens.viz`` function returns, and the HTML it is written with.

A view is data plus a way to draw it. It renders in Jupyter through ``_repr_html_`` without
touching the network, saves to one self-contained HTML file with ``.save("x.html")``, and a
picture view (a matplotlib PNG, embedded as a base64 data URI) also saves as ``.save("x.png")``.

Element ids are derived from a hash of the content, so the same input always gives
byte-identical HTML. The table and drawing helpers the plot functions share are in
:mod:`deltalens.viz.plots`.

Example:
    >>> from deltalens import viz
    >>> view = viz.probe_accuracy(probe_result.summary())   # a deltalens.schemas.PROBES table
    >>> view.series[["series", "x", "y"]]                  # each drawn point
    >>> view.save("probe.html"); view.save("probe.png")
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.atomic import write_bytes, write_text
from deltalens.hashing import parts_hash

if TYPE_CHECKING:
    import pandas as pd

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


POSITIVE, NEGATIVE = "#2b6cb0", "#c53030"
"""The colours of a positive and a negative value (circuit edges and bars, attention differences)."""


def js_json(obj: Any) -> str:
    """JSON that is safe inside an inline ``<script>`` (no ``<``, ``>``, ``&`` characters)."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def content_id(*parts: Any, prefix: str = "dl") -> str:
    """A short deterministic id: ``prefix-`` + the first 12 hex digits of a SHA-256 of ``parts``."""
    return f"{prefix}-{parts_hash(*parts)[:12]}"


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
            write_text(path, self.to_html())
        elif suffix == ".png":
            write_bytes(path, self._png_bytes())
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
