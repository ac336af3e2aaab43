"""The battery's tables: the library's declared schemas plus the labels the study adds.

* ``evals``: :data:`deltalens.schemas.EVALS`, one row per stage of the family.
* ``sweep``: :data:`deltalens.schemas.SWEEP` rows of one fine-tune's update (``task``) with the
  battery's evaluation metrics (the ``EVALS`` metrics; ``refusal_harmless`` only where the
  evaluation measured it).
* ``weight_overlap``: :data:`deltalens.schemas.WEIGHT_OVERLAP` with ``embeddings``
  (``"included"`` / ``"excluded"``: whether the (un)embedding tensors count).
* ``activation_overlap``: :data:`deltalens.schemas.ACTIVATION_OVERLAP` as the library emits it.
* ``probes``: :data:`deltalens.schemas.PROBES` with the ``model`` (stage) each probe was fitted on.

Example:
    >>> from deltalens.study.tables import BATTERY_SWEEP
    >>> BATTERY_SWEEP.names[:3]
    ('task', 'method', 'mode')
"""

from __future__ import annotations

from deltalens.schemas import EVALS, PROBES, SWEEP, WEIGHT_OVERLAP, Schema, SchemaError

__all__ = [
    "BATTERY_PROBES",
    "BATTERY_SWEEP",
    "BATTERY_WEIGHT_OVERLAP",
    "EMBEDDINGS",
    "MODEL",
    "TASK",
    "columns",
]

TASK = "task"
"""Sweep label: the fine-tune whose update Δ_T is projected (``useful``, ``harmful``, ``contaminated``)."""

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
    {TASK: "str", **SWEEP.columns, **_METRICS},
    doc={TASK: "the fine-tune whose update is projected", **SWEEP.doc, **EVALS.doc},
    optional=(*SWEEP.optional, *EVALS.optional),
)
"""The battery's subspace sweeps: ``task`` + :data:`~deltalens.schemas.SWEEP` + evaluation metrics."""

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
    {MODEL: "str", **PROBES.columns},
    doc={MODEL: "the family stage the probe was fitted on", **PROBES.doc},
    optional=PROBES.optional,
)
"""The battery's probe table: ``model`` + :data:`~deltalens.schemas.PROBES`."""
