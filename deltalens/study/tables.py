"""The battery's tables: the library's declared schemas plus the labels the study adds.

* ``evals``: :data:`deltalens.schemas.EVALS`, one row per stage of the family.
* ``sweep``: :data:`deltalens.schemas.SWEEP` rows of one fine-tune's update (``task``) projected
  onto a ``subspace`` (``alignment`` Δ_A or ``safety`` Δ_S) within a projection ``scope``
  (``all`` tensors or the transformer ``blocks`` only), with the battery's evaluation metrics
  (the ``EVALS`` metrics; ``refusal_harmless`` only where the evaluation measured it; NaN where a
  point did not evaluate a metric).
* ``weight_overlap``: :data:`deltalens.schemas.WEIGHT_OVERLAP` with ``embeddings``
  (``"included"`` / ``"excluded"``: whether the (un)embedding tensors count).
* ``activation_overlap``: :data:`deltalens.schemas.ACTIVATION_OVERLAP` with ``prompts`` (``raw``:
  the prompt text as is, the paper's protocol; ``templated``: in the family's prompt template).
* ``probes``: :data:`deltalens.schemas.PROBES` with the ``model`` (stage) each probe was fitted on,
  and a control: ``shuffled_accuracy`` (the same probe on labels shuffled across prompt groups)
  and ``selectivity`` (accuracy − shuffled_accuracy).
* ``circuit_heads``, ``circuit_dla``, ``circuit_edges``, ``circuit_diff``, ``faithfulness``,
  ``refusal_directions``: the ``circuits`` experiment (:mod:`deltalens.study.battery.circuits`).

Example:
    >>> from deltalens.study.tables import BATTERY_SWEEP
    >>> BATTERY_SWEEP.names[:3]
    ('task', 'method', 'mode')
"""

from __future__ import annotations

from deltalens.schemas import ACTIVATION_OVERLAP, EVALS, PROBES, SWEEP, WEIGHT_OVERLAP, Schema, SchemaError

__all__ = [
    "BATTERY_ACTIVATION_OVERLAP",
    "BATTERY_PROBES",
    "BATTERY_SWEEP",
    "BATTERY_WEIGHT_OVERLAP",
    "CIRCUIT_DIFF",
    "CIRCUIT_DLA",
    "CIRCUIT_EDGES",
    "CIRCUIT_HEADS",
    "EMBEDDINGS",
    "FAITHFULNESS",
    "MODEL",
    "PROMPTS",
    "REFUSAL_DIRECTIONS",
    "SCOPE",
    "SUBSPACE",
    "TASK",
    "columns",
]

TASK = "task"
"""Sweep label: the fine-tune whose update Δ_T is projected (``useful``, ``harmful``, ``contaminated``)."""

SUBSPACE = "subspace"
"""Sweep label: whose singular vectors define the projector (``alignment``: Δ_A = W_A − W_0,
``safety``: Δ_S = W_S − W_0)."""

SCOPE = "scope"
"""Sweep label: ``all`` (every tensor projected, (un)embeddings included, as the paper) or
``blocks`` (transformer-block tensors only; the (un)embeddings keep their whole task update)."""

PROMPTS = "prompts"
"""Activation-overlap label: ``raw`` (the prompt text, the paper's protocol) or ``templated``."""

EMBEDDINGS = "embeddings"
"""Weight-overlap label: ``"included"`` / ``"excluded"`` (the (un)embedding tensors)."""

MODEL = "model"
"""Probe label: the family stage the probe was fitted on (``w0``, ``wa``, ``harmful``)."""


def columns(schema: Schema, *names: str) -> tuple[str, ...]:
    """``names``, each checked to be a column ``schema`` declares (a renamed column fails loudly).

    Raises:
        SchemaError: ``schema`` declares no column of that name.
    """
    unknown = [n for n in names if n not in schema.columns]
    if unknown:
        raise SchemaError(
            f"the {schema.name!r} schema declares no column {unknown}; it has {list(schema.columns)}"
        )
    return names


_METRICS = {c: t for c, t in EVALS.columns.items() if c != "stage"}

BATTERY_SWEEP = Schema(
    SWEEP.name,
    {TASK: "str", SUBSPACE: "str", SCOPE: "str", **SWEEP.columns, **_METRICS},
    doc={
        TASK: "the fine-tune whose update is projected",
        SUBSPACE: "alignment (Δ_A) or safety (Δ_S): whose singular vectors define P_k",
        SCOPE: "all (every tensor, as the paper) or blocks (transformer blocks only)",
        **SWEEP.doc,
        **EVALS.doc,
    },
    optional=(*SWEEP.optional, *EVALS.optional),
)
"""The battery's subspace sweeps: ``task, subspace, scope`` + :data:`~deltalens.schemas.SWEEP` + evaluation metrics."""

BATTERY_WEIGHT_OVERLAP = Schema(
    WEIGHT_OVERLAP.name,
    {
        **dict(list(WEIGHT_OVERLAP.columns.items())[:2]),
        EMBEDDINGS: "str",
        **dict(list(WEIGHT_OVERLAP.columns.items())[2:]),
    },
    doc={**WEIGHT_OVERLAP.doc, EMBEDDINGS: "whether the (un)embedding tensors count: included / excluded"},
    optional=WEIGHT_OVERLAP.optional,
)
"""The battery's weight-update overlap (``include_embeddings="both"``: ``embeddings`` after ``a, b``)."""

BATTERY_PROBES = Schema(
    PROBES.name,
    {MODEL: "str", **PROBES.columns, "shuffled_accuracy": "float64", "selectivity": "float64"},
    doc={
        MODEL: "the family stage the probe was fitted on",
        **PROBES.doc,
        "shuffled_accuracy": "the same probe on a control task: labels shuffled across prompt groups",
        "selectivity": "accuracy − shuffled_accuracy",
    },
    optional=(*PROBES.optional, "shuffled_accuracy", "selectivity"),
)
"""The battery's probe table: ``model`` + :data:`~deltalens.schemas.PROBES` + the shuffled-label control."""

BATTERY_ACTIVATION_OVERLAP = Schema(
    ACTIVATION_OVERLAP.name,
    {PROMPTS: "str", **ACTIVATION_OVERLAP.columns},
    doc={PROMPTS: "raw (the prompt text, as the paper) or templated", **ACTIVATION_OVERLAP.doc},
    optional=ACTIVATION_OVERLAP.optional,
)
"""The battery's activation overlap: ``prompts`` + :data:`~deltalens.schemas.ACTIVATION_OVERLAP`."""

# ---------------------------------------------------------------- the circuits experiment
_STAGE_DOC = "the family stage (wa: aligned, harmful: the harmful fine-tune, ...)"
_COMPONENT_DOC = "embed, a{L}.h{H} (head H of layer L), m{L} (MLP of layer L) or bias"

CIRCUIT_HEADS = Schema(
    "circuit_heads",
    {"stage": "str", "component": "str", "layer": "Int64", "head": "Int64", "dla": "float64", "attribution": "float64"},
    doc={
        "stage": _STAGE_DOC,
        "component": _COMPONENT_DOC,
        "layer": "the component's layer (null for embed / bias)",
        "head": "the head (null except heads)",
        "dla": "mean over the clean prompts of the component's direct logit attribution of the refusal logit difference",
        "attribution": "attribution patching: first-order change of the mean metric when the component's output "
        "comes from the corrupted (harmless) run, summed over positions (null for embed / bias)",
    },
)
"""Per stage and component: mean DLA and attribution patching of the refusal logit difference."""

CIRCUIT_DLA = Schema(
    "circuit_dla",
    {"stage": "str", "prompt": "int64", "component": "str", "layer": "Int64", "head": "Int64",
     "attribution": "float64", "metric": "float64"},  # fmt: skip
    doc={
        "stage": _STAGE_DOC,
        "prompt": "index of the clean prompt",
        "component": _COMPONENT_DOC,
        "layer": "the component's layer (null for embed / bias)",
        "head": "the head (null except heads)",
        "attribution": "direct logit attribution; per prompt the rows sum to the metric",
        "metric": "the model's refusal logit difference on the prompt, from its logits",
    },
)
"""Per stage, clean prompt and component: DLA of the refusal logit difference (exact split)."""

CIRCUIT_EDGES = Schema(
    "circuit_edges",
    {"stage": "str", "source": "str", "target": "str", "score": "float64", "source_layer": "int64",
     "target_layer": "int64"},  # fmt: skip
    doc={
        "stage": _STAGE_DOC,
        "source": "embed, a{L}.h{H} or m{L}",
        "target": "a{L}.h{H}, m{L} or logits",
        "score": "EAP-IG: first-order change of the metric when the edge carries its corrupted value",
        "source_layer": "layer of the source (embed -1)",
        "target_layer": "layer of the target (logits = n_layers)",
    },
)
"""Every edge's EAP-IG score per stage."""

CIRCUIT_DIFF = Schema(
    "circuit_diff",
    {"a": "str", "b": "str", "source": "str", "target": "str", "status": "str", "score_a": "float64",
     "score_b": "float64", "delta": "float64", "source_layer": "int64", "target_layer": "int64"},  # fmt: skip
    doc={
        "a": "the first stage (W_A)",
        "b": "the second stage (the harmful fine-tune)",
        "status": "gained (in b's top edges only), lost (in a's only) or changed (in both)",
        "score_a": "the edge's score in a (NaN: not among a's top edges)",
        "score_b": "the edge's score in b (NaN: not among b's top edges)",
        "delta": "score_b − score_a (absent counts as 0)",
    },
)
"""``circuits.diff`` of two stages' top edges."""

FAITHFULNESS = Schema(
    "faithfulness",
    {"stage": "str", "n_edges": "int64", "metric": "float64", "fraction": "float64", "metric_clean": "float64",
     "metric_corrupted": "float64"},  # fmt: skip
    doc={
        "stage": _STAGE_DOC,
        "n_edges": "top edges (by |score|) kept; every other edge is patched from the corrupted run",
        "metric": "the mean refusal logit difference of that run",
        "fraction": "(metric − metric_corrupted) / (metric_clean − metric_corrupted)",
        "metric_clean": "the full model on the clean (harmful) prompts",
        "metric_corrupted": "the full model on the corrupted (harmless) prompts",
    },
)
"""Each stage's circuit faithfulness curve."""

REFUSAL_DIRECTIONS = Schema(
    "refusal_directions",
    {"stage": "str", "layer": "int64", "norm": "float64", "norm_ratio": "float64", "cosine": "float64"},
    doc={
        "stage": _STAGE_DOC,
        "layer": "block whose hook_resid_pre is read (last prompt token)",
        "norm": "‖mean(harmful) − mean(harmless)‖",
        "norm_ratio": "norm / W_A's norm at the layer",
        "cosine": "cosine to W_A's direction at the layer",
    },
)
"""Difference-in-means refusal directions per stage and layer, compared with W_A's."""
