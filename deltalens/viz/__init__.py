"""Offline visualisations: attention, circuits, residual-stream views, steering plots, one HTML report.

Every function is pure and returns a view with ``_repr_html_`` (renders in Jupyter with no
network access), ``.save("x.html")`` (one self-contained file) and, for pictures,
``.save("x.png")``. Views keep what they were drawn from in ``.data`` (and ``.series``).

Example:
    >>> from deltalens import viz
    >>> viz.attention(model, "The cat sat", layer=0).save("attn.html")
    >>> rep = viz.Report("Family").add_section("Steering", viz.steering_sweep(sweep_df), sweep_df)
    >>> rep.save("report.html")
"""

from deltalens.viz.attention import AttentionView, attention, attention_compare
from deltalens.viz.base import FigureView, View
from deltalens.viz.circuit import CircuitView, circuit_graph, dla_bars, head_heatmap
from deltalens.viz.report import Report
from deltalens.viz.residual import activation_overlap, logit_lens, probe_accuracy
from deltalens.viz.steering import energy_kept, patching, steering_sweep
from deltalens.viz.weights import delta_norms, weight_overlap

__all__ = [
    "AttentionView",
    "CircuitView",
    "FigureView",
    "Report",
    "View",
    "activation_overlap",
    "attention",
    "attention_compare",
    "circuit_graph",
    "delta_norms",
    "dla_bars",
    "energy_kept",
    "head_heatmap",
    "logit_lens",
    "patching",
    "probe_accuracy",
    "steering_sweep",
    "weight_overlap",
]
