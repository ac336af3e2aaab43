"""The report's views of the battery's ``circuits`` tables (see :mod:`deltalens.study.battery.circuits`).

* ``circuit_edges``: the interactive circuit graph (:func:`deltalens.viz.circuit_graph`) with a
  switch between the stages and their difference (first and last stage: W_A and the fine-tune).
* ``circuit_heads``: layer × head heatmaps of attribution patching and of DLA per stage and their
  difference, and DLA bars of the largest components.
* ``faithfulness``: :func:`faithfulness_curve`; ``refusal_directions``: :func:`direction_cosines`.

Example:
    >>> [view() for view in report_views("faithfulness", pd.read_parquet("results/faithfulness.parquet"))]
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

GRAPH_EDGES = 60
"""Edges drawn by the report's circuit graph (those among the largest |score| of either stage)."""


def faithfulness_curve(df: pd.DataFrame) -> Any:
    """The faithfulness curve: the fraction of clean − corrupted recovered against the circuit's edges."""
    from deltalens.viz.plots import check_columns, line_view

    check_columns(df, "faithfulness", n_edges="n_edges", fraction="fraction", stage="stage")
    return line_view(
        "faithfulness", df, x="n_edges", y="fraction", hue="stage", col=None, row=None, band=None,
        baseline=None, chance=None, title="Circuit faithfulness", ylabel="fraction of clean − corrupted",
        ylim=None, headline="top-n edges kept, the rest from the harmless run",
    )  # fmt: skip


def direction_cosines(df: pd.DataFrame, value: str = "cosine") -> Any:
    """The refusal direction's ``cosine`` (or ``norm_ratio``) to W_A's per layer, one line per stage."""
    from deltalens.viz.plots import check_columns, line_view

    check_columns(df, "refusal_directions", layer="layer", value=value, stage="stage")
    return line_view(
        "refusal_directions", df, x="layer", y=value, hue="stage", col=None, row=None, band=None,
        baseline=None, chance=None, title=f"Refusal direction {value} to W_A's", ylabel=value, ylim=None,
    )  # fmt: skip


def report_views(kind: str, df: pd.DataFrame) -> list[Any]:
    """The views of a circuits table as zero-argument callables (``[]`` for any other kind)."""
    from deltalens import viz

    views: dict[str, list[Any]] = {
        "circuit_edges": [partial(viz.circuit_graph, df, top=GRAPH_EDGES)],
        "circuit_heads": [
            partial(viz.head_heatmap, df, "attribution", title="Attribution patching per head"),
            partial(viz.head_heatmap, df, "dla", title="Direct logit attribution per head"),
            partial(
                viz.dla_bars, df, top=15, value="dla", title="Direct logit attribution (mean over prompts)"
            ),
        ],
        "faithfulness": [partial(faithfulness_curve, df)],
        "refusal_directions": [partial(direction_cosines, df), partial(direction_cosines, df, "norm_ratio")],
    }
    return views.get(kind, [])
