"""Report: views and tables assembled into one offline HTML page with a table of contents."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltalens.atomic import write_text
from deltalens.viz.base import View, dataframe_html, esc, html_page, mapping_html, provenance_of

_PROV_ORDER = ("base", "checkpoint", "adapter", "content_hash", "backend", "dtype", "arch")


@dataclass(kw_only=True)
class Section:
    """One titled part of a report: views, tables, text."""

    title: str
    items: list[Any] = field(default_factory=list)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = f"sec-{base}", 2
    while slug in used:
        slug, n = f"sec-{base}-{n}", n + 1
    used.add(slug)
    return slug


class Report:
    """An offline HTML report: sections of views, tables and text, and the models' provenance.

    Every asset is inline (CSS, the CircuitsVis script once, PNG pictures as data URIs), so the
    saved file opens anywhere without a network.

    Args:
        title: the page title.
        description: an optional paragraph under the title.
        max_rows: tables longer than this show their head and tail only.

    Example:
        >>> rep = Report("Organism family")
        >>> rep.add_section("Steering", viz.steering_sweep(sweep_df), sweep_df)
        >>> rep.add_provenance({"base": "organism/W_0", "content_hash": "ab12..."}, name="W_0")
        >>> rep.save("report.html")

    Gotcha: items may be views, DataFrames, strings (paragraphs) or mappings (key/value tables);
    other objects' own ``_repr_html_`` is never called, since it may reach the network.
    """

    def __init__(self, title: str, description: str = "", max_rows: int = 60) -> None:
        self.title = title
        self.description = description
        self.max_rows = max_rows
        self.sections: list[Section] = []
        self.provenance: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        n_items = sum(len(s.items) for s in self.sections)
        return (
            f"Report({self.title!r}, {len(self.sections)} sections, {n_items} items, "
            f"{len(self.all_provenance())} models)"
        )

    # -- building ------------------------------------------------------------------------
    def add_section(self, title: str, *items: Any) -> Report:
        """Append a section; items are views, DataFrames, strings or mappings. Returns ``self``.

        Raises:
            TypeError: an item of another type (convert it to one of these first).
        """
        import pandas as pd

        for it in items:
            if not isinstance(it, View | pd.DataFrame | str | Mapping):
                raise TypeError(
                    f"Report items must be a view, a DataFrame, a str or a mapping; got {type(it).__name__}"
                )
        self.sections.append(Section(title=str(title), items=list(items)))
        return self

    def add_provenance(self, provenance: Any, name: str | None = None) -> Report:
        """Record a model's provenance. Returns ``self``.

        Args:
            provenance: a provenance dict, an object with ``.to_dict()``, a model (its
                ``.provenance``), or ``{model name: provenance dict}`` for several models.
            name: the model's label (default: its ``checkpoint`` or ``base`` entry).
        """
        if isinstance(provenance, Mapping):
            if name is None and provenance and all(isinstance(v, Mapping) for v in provenance.values()):
                for k, v in provenance.items():
                    self.provenance[str(k)] = dict(v)
                return self
            prov = dict(provenance)
        else:
            prov = provenance_of(provenance)
            if prov is None and hasattr(provenance, "to_dict"):
                prov = dict(provenance.to_dict())
        if prov is None:
            raise TypeError(f"cannot read a provenance from {type(provenance).__name__}")
        label = name or str(
            prov.get("name")
            or prov.get("checkpoint")
            or prov.get("base")
            or f"model {len(self.provenance) + 1}"
        )
        self.provenance[label] = prov
        return self

    def all_provenance(self) -> dict[str, dict[str, Any]]:
        """Provenance added explicitly plus that carried by the views, by model label."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.sections:
            for it in s.items:
                if isinstance(it, View):
                    for k, v in it.provenance.items():
                        out.setdefault(k, v)
        out.update(self.provenance)
        return out

    @property
    def views(self) -> list[View]:
        return [it for s in self.sections for it in s.items if isinstance(it, View)]

    # -- rendering -----------------------------------------------------------------------
    def _item_html(self, item: Any, used_ids: dict[str, int]) -> str:
        import pandas as pd

        if isinstance(item, View):
            n = used_ids.get(item.uid, 0)
            used_ids[item.uid] = n + 1
            return item.body_html(id_suffix=f"-{n}" if n else "")
        if isinstance(item, pd.DataFrame):
            return dataframe_html(item, max_rows=self.max_rows)
        if isinstance(item, Mapping):
            return mapping_html(item)
        paras = [p.strip() for p in str(item).split("\n\n") if p.strip()]
        return "".join(f"<p>{esc(p)}</p>" for p in paras)

    def _provenance_html(self) -> str:
        prov = self.all_provenance()
        if not prov:
            return "<p>No model provenance was recorded.</p>"
        keys = [k for k in _PROV_ORDER if any(k in p for p in prov.values())]
        keys += sorted({k for p in prov.values() for k in p} - set(keys))
        head = "".join(f"<th>{esc(k)}</th>" for k in ["model", *keys])
        rows = "".join(
            "<tr><td>"
            + esc(label)
            + "</td>"
            + "".join(f"<td><code>{esc(p.get(k, ''))}</code></td>" for k in keys)
            + "</tr>"
            for label, p in prov.items()
        )
        table = f'<table class="dl-table dl-provenance"><tr>{head}</tr>{rows}</table>'
        return f'<div class="dl-scroll">{table}</div>'

    def body_html(self) -> tuple[str, str]:
        """``(head assets, body)`` of the page."""
        used: set[str] = set()
        slugs = [_slug(s.title, used) for s in self.sections]
        prov_slug = _slug("Provenance", used)
        toc = "".join(
            f'<li><a href="#{slug}">{esc(s.title)}</a></li>' for slug, s in zip(slugs, self.sections)
        )
        toc += f'<li><a href="#{prov_slug}">Provenance</a></li>'
        assets: dict[str, str] = {}
        for v in self.views:
            assets.update(v.assets())
        used_ids: dict[str, int] = {}
        parts = [f'<h1 id="dl-report-title">{esc(self.title)}</h1>']
        if self.description:
            parts.append(f"<p>{esc(self.description)}</p>")
        parts.append(f'<nav class="dl-toc" id="dl-toc"><b>Contents</b><ol>{toc}</ol></nav>')
        for slug, s in zip(slugs, self.sections):
            parts.append(f'<section id="{slug}"><h2>{esc(s.title)}</h2>')
            parts.extend(self._item_html(it, used_ids) for it in s.items)
            parts.append("</section>")
        parts.append(f'<section id="{prov_slug}"><h2>Provenance</h2>{self._provenance_html()}</section>')
        return "".join(assets.values()), "\n".join(parts)

    def to_html(self) -> str:
        """The whole report as one self-contained HTML page."""
        head, body = self.body_html()
        return html_page(self.title, body, head)

    def _repr_html_(self) -> str:
        head, body = self.body_html()
        return head + body

    def save(self, path: str | Path) -> Path:
        """Write the report to ``path`` (an ``.html`` file); returns the path.

        Raises:
            ValueError: ``path`` does not end in ``.html`` / ``.htm``.
        """
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"a report is saved as one HTML file; got {path.name!r} (use a .html name)")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, self.to_html())
        return path
