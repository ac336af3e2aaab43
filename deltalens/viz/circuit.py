"""Circuit views: an interactive edge graph across checkpoints, layer × head heatmaps, DLA bars.

:func:`circuit_graph` draws a circuit edge table (``source, target, score, source_layer,
target_layer`` and optionally ``stage``; or a ``deltalens.circuits.Circuit``, or
``{stage: circuit}``) as an inline SVG: layers are rows (``embed`` at the bottom, ``logits`` at
the top, each layer an attention row of heads ``a{L}.h{H}`` under its MLP ``m{L}``), edges are
coloured by the sign of their score and as wide as its size. A small inline script (no CDN, no
request) switches between checkpoints and the difference ``score_b − score_a`` of a chosen pair,
and shows each edge's scores on hover. Without JavaScript the first checkpoint is still drawn.

:func:`head_heatmap` and :func:`dla_bars` are pictures (matplotlib PNG, like the other plots).

Example:
    >>> from deltalens import circuits, viz
    >>> view = viz.circuit_graph({"wa": circuit_wa, "harmful": circuit_ft}, top=60)
    >>> view.difference("wa", "harmful").head()     # the numbers the difference view draws
    >>> view.save("circuit.html")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deltalens.circuits.graph import COLUMNS, STAGE, node_key, node_parts
from deltalens.viz.base import NEGATIVE, POSITIVE, FigureView, View, content_id, esc, js_json, provenance_of
from deltalens.viz.plots import (
    SeriesLog,
    check_columns,
    color_map,
    figure_view,
    heatmap,
    mpl_text,
    new_figure,
    ordered,
    style_axes,
)

if TYPE_CHECKING:
    import pandas as pd

_ROW_GAP, _PAD_TOP, _PAD_BOTTOM, _LEFT = 46.0, 26.0, 26.0, 96.0


# ------------------------------------------------------------------------------------ input
def _one_frame(obj: Any, what: str) -> pd.DataFrame:
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return obj
    if hasattr(obj, "to_frame"):
        return obj.to_frame()
    raise TypeError(
        f"{what}: expected a circuit edge DataFrame, an object with .to_frame() (a Circuit) or a dict "
        f"stage -> circuit; got {type(obj).__name__}"
    )


def circuit_frame(circuits: Any, what: str = "circuit_graph") -> pd.DataFrame:
    """One tidy edge table with a ``stage`` column from a frame, a ``Circuit`` or ``{stage: circuit}``.

    A single circuit without a ``stage`` column gets its ``meta["stage"]`` (a ``Circuit`` of one
    checkpoint) or ``"circuit"``. Scores are floats.

    Raises:
        ValueError: a missing column, an empty table, a non-finite score, a node name that is
            not ``embed``, ``logits``, ``a{L}.h{H}`` or ``m{L}``, a layer column that disagrees
            with the node's name, or an edge listed twice for one stage.
    """
    import pandas as pd

    if isinstance(circuits, Mapping):
        if not circuits:
            raise ValueError(f"{what}: circuits is an empty dict; give {{stage: circuit}}")
        parts = []
        for stage, c in circuits.items():
            part = _one_frame(c, f"{what}: circuits[{stage!r}]").drop(columns=STAGE, errors="ignore")
            parts.append(part.assign(**{STAGE: str(stage)}))
        df = pd.concat(parts, ignore_index=True)
    else:
        df = _one_frame(circuits, what)
        if STAGE not in df.columns:
            meta = getattr(circuits, "meta", None)
            label = meta.get("stage") if isinstance(meta, Mapping) else None
            df = df.assign(**{STAGE: str(label) if isinstance(label, str) and label else "circuit"})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: the circuit table lacks column(s) {missing}; a circuit edge table has columns "
            f"{list(COLUMNS)} (+ 'stage'); its columns are {list(df.columns)}"
        )
    if df.empty:
        raise ValueError(f"{what}: the circuit table has no edge")
    df = df[[STAGE, *COLUMNS]].copy()
    df[STAGE] = df[STAGE].astype(str)
    df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")
    _check_edges(df, what)
    return df.reset_index(drop=True)


def _check_edges(df: pd.DataFrame, what: str) -> None:
    bad = df[~df["score"].map(math.isfinite)]
    if len(bad):
        row = bad.iloc[0]
        raise ValueError(
            f"{what}: score must be a finite number; edge {row['source']} -> {row['target']} "
            f"(stage {row[STAGE]!r}) has {row['score']!r} ({len(bad)} such rows)"
        )
    for end in ("source", "target"):
        for name, layer in df[[end, f"{end}_layer"]].drop_duplicates().itertuples(index=False):
            try:  # logits' layer is not checked (not used here)
                expect, _, kind = node_parts(name, -1)
            except ValueError as err:
                raise ValueError(f"{what}: {end} {err}") from None
            if kind != "logits" and int(layer) != expect:
                raise ValueError(
                    f"{what}: {end}_layer of {name!r} is {layer}, but its name says layer {expect}"
                )
    dup = df.duplicated([STAGE, "source", "target"])
    if dup.any():
        row = df[dup].iloc[0]
        raise ValueError(
            f"{what}: edge {row['source']} -> {row['target']} appears more than once in stage "
            f"{row[STAGE]!r}; give one row per (stage, source, target)"
        )


def _top_edges(df: pd.DataFrame, top: int | None) -> tuple[pd.DataFrame, str]:
    """The rows of the edges among the ``top`` largest ``|score|`` of any stage (all when None)."""
    if top is None:
        return df, ""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"circuit_graph: top={top!r}; give a positive int, or None for every edge")
    keys = set()
    for _, part in df.groupby(STAGE, sort=False):
        best = part.loc[part["score"].abs().sort_values(ascending=False, kind="stable").index[:top]]
        keys.update(zip(best["source"], best["target"]))
    keep = [(s, t) in keys for s, t in zip(df["source"], df["target"])]
    n_all = len(df[["source", "target"]].drop_duplicates())
    note = f"The {top} largest |score| edges of each stage ({len(keys)} of {n_all} edges)."
    return df[keep].reset_index(drop=True), note


def _shape(df: pd.DataFrame) -> tuple[int, int]:
    """``(n_layers, n_heads)`` read from the node names and the logits' ``target_layer``."""
    layers, heads = [-1], [-1]
    for name in set(df["source"]) | set(df["target"]):
        layer, head, kind = node_parts(name, -1)  # logits' layer is not used here
        if kind in ("head", "mlp"):
            layers.append(layer)
        if head is not None:
            heads.append(head)
    n_layers = max(layers) + 1
    logits = df.loc[df["target"] == "logits", "target_layer"]
    if len(logits):
        n_layers = max(n_layers, int(logits.max()))
    return n_layers, max(heads) + 1


# ------------------------------------------------------------------------------------ layout
def _layout(
    nodes: Sequence[str], n_layers: int, n_heads: int
) -> tuple[dict[str, tuple[float, float]], float, float]:
    """``({node: (x, y)}, width, height)``: rows embed, attn0, mlp0, ..., logits from bottom to top."""
    width = max(620.0, min(1500.0, _LEFT + 34 + 64.0 * max(n_heads, 1)))
    n_rows = 2 * n_layers + 2
    height = _PAD_TOP + _PAD_BOTTOM + (n_rows - 1) * _ROW_GAP

    def y(row: int) -> float:
        return _row_y(row, n_layers)

    x0, x1 = _LEFT + 10, width - 24
    mid = (x0 + x1) / 2
    pos = {}
    for name in nodes:
        layer, head, kind = node_parts(name, n_layers)
        if kind == "embed":
            pos[name] = (mid, y(0))
        elif kind == "logits":
            pos[name] = (mid, y(n_rows - 1))
        elif kind == "mlp":
            pos[name] = (mid, y(2 * layer + 2))
        else:
            pos[name] = (x0 + (head + 0.5) * (x1 - x0) / max(n_heads, 1), y(2 * layer + 1))
    return pos, width, height


def _row_y(row: int, n_layers: int) -> float:
    """The y of grid row ``row`` (0 = embed at the bottom, ``2 n_layers + 1`` = logits at the top)."""
    return _PAD_TOP + (2 * n_layers + 1 - row) * _ROW_GAP


def _row_labels(n_layers: int) -> list[tuple[str, float]]:
    names = ["embed"] + [f"L{L} {part}" for L in range(n_layers) for part in ("attn", "mlp")] + ["logits"]
    return [(name, _row_y(r, n_layers)) for r, name in enumerate(names)]


def edge_style(value: float, largest: float) -> dict[str, str]:
    """SVG stroke attributes of an edge: colour by sign, width and opacity by ``|value| / largest``."""
    r = abs(value) / largest if largest > 0 else 0.0
    return {
        "stroke": NEGATIVE if value < 0 else POSITIVE,
        "stroke-width": f"{0.75 + 5.25 * r:.2f}",
        "stroke-opacity": f"{0.25 + 0.7 * r:.3f}",
    }


# ------------------------------------------------------------------------------------ the view
@dataclass(kw_only=True, repr=False, eq=False)
class CircuitView(View):
    """A circuit edge graph across checkpoints, drawn as inline SVG with a small inline script.

    Attributes:
        data: the tidy edge table drawn: ``stage, source, target, score, source_layer, target_layer``.
        stages: the checkpoints, in order.
        nodes: every node drawn (a node of at least one edge of ``data``).
        n_layers, n_heads: the grid the nodes are placed on (read from the node names).
        pair: the ``(a, b)`` stages the difference view starts with (``score_b − score_a``).
    """

    stages: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    n_layers: int = 0
    n_heads: int = 0
    pair: tuple[str, str] | None = None

    @property
    def scores(self) -> pd.DataFrame:
        """``[edge, stage]`` scores: index ``(source, target)``, one column per stage (NaN: absent)."""
        wide = self.data.pivot(index=["source", "target"], columns=STAGE, values="score")
        return wide.reindex(columns=self.stages).reindex(self._edge_keys())

    def _edge_keys(self) -> list[tuple[str, str]]:
        keys = self.data[["source", "target"]].drop_duplicates()
        return list(keys.itertuples(index=False, name=None))

    def difference(self, a: str, b: str) -> pd.DataFrame:
        """``source, target, score_a, score_b, difference`` = ``score_b − score_a`` (absent counts as 0)
        for every edge present in ``a`` or ``b``.

        Raises:
            ValueError: ``a`` or ``b`` is not one of :attr:`stages`.
        """
        for arg, stage in (("a", a), ("b", b)):
            if stage not in self.stages:
                raise ValueError(f"difference: {arg}={stage!r} is not a stage; the stages are {self.stages}")
        wide = self.scores[[a, b]].dropna(how="all")
        out = wide.reset_index()
        out.columns = ["source", "target", "score_a", "score_b"]
        out["difference"] = out["score_b"].fillna(0.0) - out["score_a"].fillna(0.0)
        return out

    def payload(self) -> dict[str, Any]:
        """What the page's script reads: stages, nodes and ``[source index, target index, [score per
        stage or None]]`` per edge."""
        index = {n: i for i, n in enumerate(self.nodes)}
        wide = self.scores
        edges = [
            [index[s], index[t], [None if math.isnan(v) else float(v) for v in row]]
            for (s, t), row in zip(wide.index, wide.to_numpy())
        ]
        pair = [self.stages.index(p) for p in self.pair] if self.pair else None
        return {"stages": self.stages, "nodes": self.nodes, "edges": edges, "pair": pair}

    @property
    def uid(self) -> str:
        """The element id: a hash of the kind, title, caption and payload (equal views share it)."""
        return self._uid(js_json(self.payload()))

    def _uid(self, payload_json: str) -> str:
        return content_id(self.kind, self.title, self.caption, payload_json, prefix="dl-circuit")

    def assets(self) -> dict[str, str]:
        """The graph's CSS and script, keyed so a report that holds several graphs carries them once."""
        return {
            "circuit-graph": f'<style data-dl-asset="circuit-graph">{_CSS}</style><script>{_SCRIPT}</script>'
        }

    def body_html(self, id_suffix: str = "") -> str:
        """The view's own HTML (SVG, toolbar, JSON payload and its start-up script), without the assets."""
        payload = self.payload()
        data = js_json(payload)
        uid = self._uid(data) + id_suffix
        cap = f'<p class="dl-caption">{esc(self.caption)}</p>' if self.caption else ""
        return (
            f'<div class="dl-view dl-circuit" id="{uid}" data-kind="circuit_graph" data-mode="s0">'
            f'<div class="dl-title">{esc(self.title)}</div>{self._toolbar()}'
            f'<div class="dl-circuit-box">{self._svg(payload)}<div class="dl-tip" hidden></div></div>{cap}'
            f'<script type="application/json" data-dl-circuit>{data}</script>'
            "<script>(function(){var s=document.currentScript,b=s&&s.parentNode;"
            f"if(!b||!b.classList||!b.classList.contains('dl-circuit'))b=document.getElementById('{uid}');"
            "if(window.dlCircuitGraph&&b)window.dlCircuitGraph(b);})();</script></div>\n"
        )

    def _toolbar(self) -> str:
        on = ' class="dl-on"'
        buttons = "".join(
            f'<button type="button" data-mode="s{i}"{on if i == 0 else ""}>{esc(s)}</button>'
            for i, s in enumerate(self.stages)
        )
        pair = ""
        if self.pair:
            a, b = (self.stages.index(p) for p in self.pair)
            opts = [
                "".join(
                    f'<option value="{i}"{" selected" if i == sel else ""}>{esc(s)}</option>'
                    for i, s in enumerate(self.stages)
                )
                for sel in (b, a)
            ]
            buttons += '<button type="button" data-mode="diff">difference</button>'
            pair = (
                f'<span data-role="pair" style="display:none"><select data-role="b">{opts[0]}</select> − '
                f'<select data-role="a">{opts[1]}</select></span>'
            )
        legend = (
            f'<span class="dl-legend"><i style="background:{POSITIVE}"></i>positive '
            f'<i style="background:{NEGATIVE}"></i>negative; width ∝ |score| '
            '<span data-role="scale"></span></span>'
        )
        return f'<div class="dl-circuit-bar">{buttons}{pair}{legend}</div>'

    def _svg(self, payload: dict[str, Any]) -> str:
        pos, width, height = _layout(self.nodes, self.n_layers, self.n_heads)
        first = [e[2][0] for e in payload["edges"]]
        largest = max((abs(v) for v in first if v is not None), default=0.0)
        order = sorted(range(len(first)), key=lambda i: -1.0 if first[i] is None else abs(first[i]))
        parts = [self._grid(pos, width, height)]
        for i in order:
            s, t, _ = payload["edges"][i]
            (sx, sy), (tx, ty) = pos[self.nodes[s]], pos[self.nodes[t]]
            d = _edge_path(sx, sy, tx, ty, bow=1 if i % 2 else -1)
            value = first[i]
            style = edge_style(value, largest) if value is not None else {"stroke": POSITIVE}
            attrs = " ".join(f'{k}="{v}"' for k, v in style.items())
            extra = f' data-score="{value!r}"' if value is not None else ' style="display:none"'
            parts.append(f'<path class="dl-edge" data-e="{i}" d="{d}" fill="none" {attrs}{extra}></path>')
        parts.extend(_node_svg(name, *pos[name], self.n_heads, width) for name in self.nodes)
        return (
            f'<svg class="dl-circuit-svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
            f'height="{height:.0f}" role="img" aria-label="{esc(self.title)}">{"".join(parts)}</svg>'
        )

    def _grid(self, pos: dict[str, tuple[float, float]], width: float, height: float) -> str:
        """Row labels and faint dots where heads and MLPs without an edge would sit."""
        out = []
        for label, y in _row_labels(self.n_layers):
            out.append(
                f'<text class="dl-row-label" x="8" y="{y + 4:.1f}">{esc(label)}</text>'
                f'<line x1="{_LEFT:.0f}" x2="{width - 12:.0f}" y1="{y:.1f}" y2="{y:.1f}" class="dl-rule"></line>'
            )
        slots = [f"a{L}.h{h}" for L in range(self.n_layers) for h in range(self.n_heads)]
        slots += [f"m{L}" for L in range(self.n_layers)] + ["embed", "logits"]
        spots, _, _ = _layout([s for s in slots if s not in pos], self.n_layers, self.n_heads)
        out.extend(
            f'<circle class="dl-slot" cx="{x:.1f}" cy="{y:.1f}" r="2.5"></circle>' for x, y in spots.values()
        )
        return "".join(out)


def _edge_path(sx: float, sy: float, tx: float, ty: float, bow: int) -> str:
    """An SVG cubic curve from source to target; a long edge that would run straight up through
    the nodes between its ends bows sideways (left or right by ``bow``)."""
    mid = (sy + ty) / 2
    rows = abs(sy - ty) / _ROW_GAP
    c = bow * min(140.0, 22.0 * rows) if abs(sx - tx) < 40 and rows > 1.5 else 0.0
    return f"M{sx:.1f} {sy:.1f}C{sx + c:.1f} {mid:.1f} {tx + c:.1f} {mid:.1f} {tx:.1f} {ty:.1f}"


def _node_svg(name: str, x: float, y: float, n_heads: int, width: float) -> str:
    _, head, kind = node_parts(name, -1)  # logits' layer is not used here
    if kind == "head":
        r = max(5.0, min(12.0, 0.3 * (width - _LEFT - 34) / max(n_heads, 1)))
        shape = f'<circle r="{r:.1f}"></circle>'
        text = str(head)
    else:
        w = 44 if kind == "mlp" else 64
        shape = f'<rect x="{-w / 2}" y="-10" width="{w}" height="20" rx="5"></rect>'
        text = name
    return (
        f'<g class="dl-node dl-{kind}" data-node="{esc(name)}" transform="translate({x:.1f},{y:.1f})">'
        f'{shape}<text text-anchor="middle" y="4">{esc(text)}</text></g>'
    )


def _provenance(circuits: Any) -> dict[str, dict[str, Any]]:
    """``{stage: provenance}`` from a dict of circuits / models or a Circuit's ``meta["provenance"]``."""
    if isinstance(circuits, Mapping):
        return {str(k): p for k, c in circuits.items() if (p := provenance_of(c))}
    meta = getattr(circuits, "meta", None)
    prov = meta.get("provenance") if isinstance(meta, Mapping) else None
    if isinstance(prov, Mapping):
        return {str(k): dict(v) for k, v in prov.items() if isinstance(v, Mapping)}
    return {}


def _graph_pair(pair: Any, stages: list[str]) -> tuple[str, str] | None:
    """The checked ``(a, b)`` of the difference view (default first and last; None for one stage)."""
    return _stage_pair(
        pair,
        stages,
        off=False,
        shape_error=f"circuit_graph: pair={pair!r}; give two stages (a, b) to draw score_b − score_a",
        stage_error=lambda p: f"circuit_graph: pair stage {p!r} is not in the table; its stages are {stages}",
    )


def circuit_graph(
    circuits: Any,
    *,
    top: int | None = None,
    title: str | None = None,
    pair: tuple[str, str] | None = None,
) -> CircuitView:
    """An interactive circuit graph: nodes on a layer grid, edges by score, one view per checkpoint.

    Args:
        circuits: a circuit edge table (columns ``source, target, score, source_layer,
            target_layer``, optionally ``stage`` for several checkpoints), a
            ``deltalens.circuits.Circuit`` (anything with ``.to_frame()``), or ``{stage: circuit}``.
        top: keep the edges that are among the ``top`` largest ``|score|`` of any stage (None: all).
        title: heading (default ``"Circuit"`` / ``"Circuit across a, b, ..."``).
        pair: the ``(a, b)`` stages the difference view starts with (default first and last); the
            page lets the reader choose any pair.

    Returns:
        A :class:`CircuitView`: ``.data`` is the edge table drawn, ``.scores`` the ``[edge, stage]``
        matrix, ``.difference(a, b)`` the numbers of the difference view; ``.save("x.html")``.

    Raises:
        ValueError: a missing column, a bad node name or score, a ``pair`` stage that is not in
            the table, or a ``top`` that is not a positive int (one line, before any drawing).

    Example:
        >>> view = viz.circuit_graph(circuit_frame_with_stage, top=80, pair=("wa", "harmful"))
        >>> view.save("circuit.html")
    """
    df = circuit_frame(circuits, "circuit_graph")
    stages = [str(s) for s in dict.fromkeys(df[STAGE])]
    pair = _graph_pair(pair, stages)
    df, note = _top_edges(df, top)
    n_layers, n_heads = _shape(df)
    nodes = sorted(set(df["source"]) | set(df["target"]), key=lambda n: node_key(n, n_layers))
    prov = _provenance(circuits)
    head = f"Circuit across {', '.join(stages)}" if len(stages) > 1 else "Circuit"
    return CircuitView(
        kind="circuit_graph",
        title=title or head,
        data=df,
        caption=(note + " Hover an edge for its score at every stage.").strip(),
        provenance=prov,
        params={"top": top, "pair": pair},
        stages=stages,
        nodes=nodes,
        n_layers=n_layers,
        n_heads=n_heads,
        pair=pair,
    )


# ------------------------------------------------------------------------------------ pictures
def _component_frame(table: Any, what: str, value: str) -> pd.DataFrame:
    """A non-empty frame with ``layer``, ``head`` (parsed from ``component`` names when absent) and
    a ``stage`` column (``""`` for one checkpoint); ``value`` must be a column."""
    from deltalens.viz.plots import as_frame

    df = as_frame(table, what).copy()
    check_columns(df, what, value=value)
    if ("layer" not in df.columns or "head" not in df.columns) and "component" in df.columns:
        parsed = [_head_of(c) for c in df["component"]]
        df["layer"] = [layer for layer, _ in parsed]
        df["head"] = [head for _, head in parsed]
    if STAGE not in df.columns:
        df[STAGE] = ""
    df[STAGE] = df[STAGE].astype(str)
    return df


def _head_of(component: Any) -> tuple[float, float]:
    """``(layer, head)`` of a head name ``a{L}.h{H}``; NaN, NaN for any other component."""
    try:
        layer, head, _ = node_parts(component, -1)
    except ValueError:
        return math.nan, math.nan
    return (layer, head) if head is not None else (math.nan, math.nan)


def _pick_stages(df: pd.DataFrame, stages: Sequence[str] | None, what: str) -> list[str]:
    have = [str(s) for s in dict.fromkeys(df[STAGE])]
    if stages is None:
        return have
    if isinstance(stages, str):
        stages = [stages]
    unknown = [s for s in stages if str(s) not in have]
    if unknown or not stages:
        raise ValueError(f"{what}: stages={list(stages)!r} are not all in the table; its stages are {have}")
    return [str(s) for s in stages]


def _stage_pair(
    pair: Any, stages: list[str], *, off: bool, shape_error: str, stage_error: Callable[[Any], str]
) -> tuple[str, str] | None:
    """The checked ``(a, b)`` pair of ``stages``: ``pair``, else first and last (None for one stage).

    Args:
        pair: two stages, or None for the default; ``False`` means no pair when ``off``.
        stages: the stages to choose from.
        off: whether ``pair=False`` is allowed (no pair).
        shape_error: the message when ``pair`` is not two items.
        stage_error: the message for an item that is not in ``stages``.
    """
    if pair is None:
        return (stages[0], stages[-1]) if len(stages) > 1 else None
    if off and pair is False:
        return None
    if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ValueError(shape_error)
    for p in pair:
        if str(p) not in stages:
            raise ValueError(stage_error(p))
    return str(pair[0]), str(pair[1])


def _diff_pair(diff: Any, stages: list[str], what: str) -> tuple[str, str] | None:
    """The checked ``(a, b)`` of a difference panel (default first and last; None for one stage)."""
    return _stage_pair(
        diff,
        stages,
        off=True,
        shape_error=f"{what}: diff={diff!r}; give two stages (a, b) to draw b − a, or False for none",
        stage_error=lambda d: f"{what}: diff stage {d!r} is not among the stages shown {stages}",
    )


def head_grids(
    df: pd.DataFrame, value: str, stages: list[str], pair: tuple[str, str] | None
) -> dict[str, Any]:
    """``{panel: numpy [layer, head]}`` of the mean ``value`` per stage, plus ``"b − a"`` for ``pair``.

    Every grid spans layers ``0..max`` and heads ``0..max`` of the table (NaN where no row).
    """
    import numpy as np

    mean = df.groupby([STAGE, "layer", "head"])[value].mean()
    layers = range(int(df["layer"].max()) + 1)
    heads = range(int(df["head"].max()) + 1)
    grids = {}
    for s in stages:
        part = mean.xs(s, level=STAGE).unstack("head")
        grids[s] = part.reindex(index=layers, columns=heads).to_numpy(dtype=np.float64)
    if pair:
        a, b = pair
        grids[f"{b} − {a}"] = grids[b] - grids[a]
    return grids


def head_heatmap(
    df: Any,
    value: str = "attribution",
    stages: Sequence[str] | None = None,
    *,
    diff: tuple[str, str] | bool | None = None,
    title: str | None = None,
) -> FigureView:
    """Layer × head heatmaps of a per-head score, one panel per checkpoint plus their difference.

    Args:
        df: a table with ``layer``, ``head`` (or ``component`` names ``a{L}.h{H}``), the ``value``
            column and optionally ``stage`` (e.g. ``circuits.dla(..., by="head")`` or
            ``circuits.attribution_patching``); other rows (MLPs, embed) are left out and repeated
            rows (prompts, positions) are averaged.
        value: the column drawn.
        stages: the checkpoints to show, in order (default: all, in table order).
        diff: the ``(a, b)`` pair drawn as ``b − a`` (default: first and last stage shown;
            ``False``: no difference panel).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` holds each cell (``panel`` = stage or ``"b − a"``,
        ``series`` = layer, ``x`` = head, ``y`` = mean value).

    Raises:
        ValueError: a missing column, an unknown stage, or no per-head row.

    Example:
        >>> viz.head_heatmap(circuits.dla({"wa": wa, "harmful": ft}, prompts, by="head"), "attribution")
    """
    what = "head_heatmap"
    df = _component_frame(df, what, value)
    check_columns(df, what, layer="layer", head="head")
    shown = _pick_stages(df, stages, what)
    pair = _diff_pair(diff, shown, what)
    heads_only = df[df["head"].notna() & df["layer"].notna() & df[STAGE].isin(shown)]
    if heads_only.empty:
        raise ValueError(f"{what}: the table has no per-head row (layer and head both set)")
    grids = head_grids(heads_only, value, shown, pair)
    fig, log = _draw_grids(grids, shown, value)
    repeats = heads_only.groupby([STAGE, "layer", "head"]).size()
    note = f"Mean of {value} over {int(repeats.max())} rows per head." if repeats.max() > 1 else ""
    if len(heads_only) < len(df[df[STAGE].isin(shown)]):
        note = (note + " Rows that are not heads (MLP, embed) are left out.").strip()
    return figure_view(
        "head_heatmap", title or f"{value} per head", heads_only, note, fig, log,
        {"value": value, "stages": shown, "diff": pair},
    )  # fmt: skip


def _draw_grids(grids: dict[str, Any], stages: list[str], value: str) -> tuple[Any, SeriesLog]:
    import numpy as np

    n = len(grids)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    n_layers, n_heads = next(iter(grids.values())).shape
    size = (max(2.8, 0.42 * n_heads + 1.6), max(2.4, 0.36 * n_layers + 1.2))
    fig, axes = new_figure(rows, cols, size)
    log = SeriesLog()
    shared = max(float(np.nanmax(np.abs(grids[s]))) if np.isfinite(grids[s]).any() else 0.0 for s in stages)
    annotate = n_layers * n_heads <= 144
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.set_visible(False)
            continue
        name, grid = list(grids.items())[k]
        lim = shared if name in stages else float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
        lim = lim or 1.0
        annot = [[f"{v:.2g}" if math.isfinite(v) else "" for v in row] for row in grid] if annotate else None
        im = heatmap(ax, grid, list(range(n_layers)), list(range(n_heads)), cmap="RdBu_r", vmin=-lim, vmax=lim,
                     annot=annot, rotate=False, origin="lower")  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_title(mpl_text(name or value, 40), fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        log.add_rows(name, list(range(n_layers)), list(range(n_heads)), grid)
    return fig, log


def dla_bars(
    df: Any,
    top: int = 20,
    *,
    value: str = "attribution",
    component: str = "component",
    title: str | None = None,
) -> FigureView:
    """Direct logit attribution per component as horizontal bars (checkpoints side by side).

    Args:
        df: a table with a ``component`` column (``embed``, ``a{L}.h{H}``, ``m{L}`` ...; built from
            ``layer`` / ``head`` when absent), the ``value`` column and optionally ``stage``;
            repeated rows (prompts, positions) are averaged.
        top: the number of components shown: the largest ``|mean value|`` at any stage.
        value: the column drawn.
        component: the column naming the component.
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` has one row per bar (``series`` = stage, ``x`` =
        component, ``y`` = mean value).

    Raises:
        ValueError: a missing column or a ``top`` that is not a positive int.

    Example:
        >>> viz.dla_bars(circuits.dla({"wa": wa, "harmful": ft}, prompts, by="head"), top=15)
    """
    what = "dla_bars"
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"{what}: top={top!r}; give a positive int (the number of components shown)")
    df = _component_frame(df, what, value)
    if component not in df.columns and {"layer", "head"} <= set(df.columns):
        df = df[df["layer"].notna() & df["head"].notna()].copy()  # per-head rows only
        df[component] = [f"a{int(L)}.h{int(h)}" for L, h in zip(df["layer"], df["head"])]
    check_columns(df, what, component=component)
    mean = df.groupby([STAGE, component], sort=False)[value].mean().unstack(STAGE)
    stages = [str(s) for s in dict.fromkeys(df[STAGE])]
    mean = mean.reindex(columns=stages)
    keep = mean.abs().max(axis=1).sort_values(ascending=False, kind="stable").index[:top]
    mean = mean.loc[list(keep)[::-1]]  # largest at the top of the chart
    fig, log = _draw_bars(mean, stages, value)
    note = f"The {len(keep)} largest |{value}| of {len(df[component].unique())} components."
    if df.groupby([STAGE, component]).size().max() > 1:
        note += " Mean over repeated rows (prompts, positions)."
    return figure_view("dla_bars", title or f"{value} per component", df, note, fig, log,
                       {"top": top, "value": value, "component": component})  # fmt: skip


def _draw_bars(mean: pd.DataFrame, stages: list[str], value: str) -> tuple[Any, SeriesLog]:
    import numpy as np

    n, k = len(mean), len(stages)
    fig, axes = new_figure(1, 1, (6.4, 0.9 + 0.22 * n * max(1.0, 0.55 * k)))
    ax = axes[0, 0]
    log = SeriesLog()
    colors = color_map(ordered(stages)) if k > 1 else {}
    height = 0.8 / k
    ys = np.arange(n)
    for j, s in enumerate(stages):
        vals = mean[s].to_numpy(dtype=np.float64)
        color = colors.get(s) or [NEGATIVE if v < 0 else POSITIVE for v in vals]
        ax.barh(ys + 0.4 - height * (j + 0.5), np.nan_to_num(vals), height=height, color=color,
                label=mpl_text(s, 30) if k > 1 else None)  # fmt: skip
        log.add("", s, list(mean.index), vals)
    ax.set_yticks(ys, [mpl_text(c, 16) for c in mean.index], fontsize=8)
    ax.axvline(0, color="#444", lw=0.8)
    style_axes(ax, None, value, None)
    if k > 1:
        ax.legend(fontsize=8, frameon=False, loc="best")
    return fig, log


_CSS = """
.dl-circuit-bar{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:4px 0 6px;font-size:.85em}
.dl-circuit-bar button{border:1px solid #bbb;background:#f5f5f7;border-radius:4px;padding:2px 9px;cursor:pointer}
.dl-circuit-bar button.dl-on{background:#1d1d1f;color:#fff;border-color:#1d1d1f}
.dl-legend{color:#555;margin-left:8px}.dl-legend i{display:inline-block;width:18px;height:4px;margin:0 4px 2px 6px}
.dl-circuit-box{position:relative;overflow-x:auto}
.dl-circuit-svg{max-width:100%;height:auto;font:11px -apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
.dl-circuit .dl-row-label{fill:#666}.dl-circuit .dl-rule{stroke:#eee}.dl-circuit .dl-slot{fill:#ddd}
.dl-circuit .dl-node circle,.dl-circuit .dl-node rect{fill:#fff;stroke:#333;stroke-width:1.2}
.dl-circuit .dl-node text{fill:#111;pointer-events:none}.dl-circuit .dl-node{cursor:default}
.dl-circuit .dl-edge{stroke-linecap:round}.dl-circuit .dl-edge:hover{stroke-opacity:1}
.dl-circuit .dl-tip{position:absolute;pointer-events:none;background:rgba(255,255,255,.96);border:1px solid #999;
border-radius:4px;padding:4px 7px;font-size:12px;white-space:pre;box-shadow:0 1px 4px rgba(0,0,0,.2)}
"""

# The page script: reads the view's JSON, restyles the edges for a stage or a difference, hover
# details. Kept ES5, no element creation, no request.
_SCRIPT = r"""
window.dlCircuitGraph=window.dlCircuitGraph||function(box){
if(!box||box.getAttribute('data-ready'))return;box.setAttribute('data-ready','1');
var POS='%POS%',NEG='%NEG%',q=function(s){return box.querySelector(s);};
var D=JSON.parse(q('script[data-dl-circuit]').textContent);
var paths=[].slice.call(box.querySelectorAll('path.dl-edge')),nodes={};
[].forEach.call(box.querySelectorAll('.dl-node'),function(g){nodes[g.getAttribute('data-node')]=g;});
var buttons=[].slice.call(box.querySelectorAll('button[data-mode]'));
var tip=q('.dl-tip'),scale=q('[data-role=scale]'),pairBox=q('[data-role=pair]');
var selA=q('select[data-role=a]'),selB=q('select[data-role=b]'),mode='s0';
function value(i){var s=D.edges[i][2];
if(mode!=='diff')return s[+mode.slice(1)];
var a=s[+selA.value],b=s[+selB.value];if(a===null&&b===null)return null;
return (b===null?0:b)-(a===null?0:a);}
function fmt(v){return v===null?'absent':(v===0?'0':Number(v.toPrecision(4)).toString());}
function show(m){mode=m;box.setAttribute('data-mode',m);
var vals=paths.map(function(p){return value(+p.getAttribute('data-e'));}),mx=0,used={};
vals.forEach(function(v){if(v!==null&&Math.abs(v)>mx)mx=Math.abs(v);});
paths.forEach(function(p,k){var v=vals[k],e=D.edges[+p.getAttribute('data-e')];
if(v===null){p.style.display='none';p.removeAttribute('data-score');return;}
var r=mx>0?Math.abs(v)/mx:0;p.style.display='';p.setAttribute('data-score',String(v));
p.setAttribute('stroke',v<0?NEG:POS);p.setAttribute('stroke-width',(0.75+5.25*r).toFixed(2));
p.setAttribute('stroke-opacity',(0.25+0.7*r).toFixed(3));used[D.nodes[e[0]]]=1;used[D.nodes[e[1]]]=1;});
for(var n in nodes)nodes[n].style.opacity=used[n]?'':'0.3';
buttons.forEach(function(b){b.className=b.getAttribute('data-mode')===m?'dl-on':'';});
if(pairBox)pairBox.style.display=m==='diff'?'':'none';
if(scale)scale.textContent='(largest |'+(m==='diff'?'difference':'score')+'| '+fmt(mx)+')';}
buttons.forEach(function(b){b.addEventListener('click',function(){show(b.getAttribute('data-mode'));});});
[selA,selB].forEach(function(s){if(s)s.addEventListener('change',function(){show('diff');});});
function place(ev,text){var r=box.querySelector('.dl-circuit-box').getBoundingClientRect();
tip.textContent=text;tip.hidden=false;tip.style.left=(ev.clientX-r.left+14)+'px';tip.style.top=(ev.clientY-r.top+10)+'px';}
function edgeText(i){var e=D.edges[i],t=[D.nodes[e[0]]+' \u2192 '+D.nodes[e[1]]];
D.stages.forEach(function(s,k){t.push(s+': '+fmt(e[2][k]));});
if(mode==='diff')t.push(D.stages[+selB.value]+' \u2212 '+D.stages[+selA.value]+': '+fmt(value(i)));
return t.join('\n');}
box.addEventListener('mouseover',function(ev){var p=ev.target.closest?ev.target.closest('.dl-edge,.dl-node'):null;
if(!p){tip.hidden=true;return;}
if(p.classList.contains('dl-edge')){place(ev,edgeText(+p.getAttribute('data-e')));return;}
var name=p.getAttribute('data-node'),k=D.nodes.indexOf(name),ins=0,outs=0;
paths.forEach(function(q2){var e=D.edges[+q2.getAttribute('data-e')],on=e[0]===k||e[1]===k;
if(on&&q2.style.display!=='none'){if(e[1]===k)ins++;else outs++;}q2.style.strokeOpacity=on?'1':'0.08';});
place(ev,name+'\n'+ins+' edges in, '+outs+' out (this view)');});
box.addEventListener('mouseout',function(ev){var p=ev.target.closest?ev.target.closest('.dl-node'):null;
if(p)paths.forEach(function(q2){q2.style.strokeOpacity='';});tip.hidden=true;});
show('s0');};
""".replace("%POS%", POSITIVE).replace("%NEG%", NEGATIVE)
