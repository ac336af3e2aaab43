"""Declared schemas of the tables that cross module boundaries.

Every table one part of deltalens hands to another (a sweep to its plot and to the verdicts, an
overlap table to its heatmap ...) has one :class:`Schema` here: its columns, their dtypes, what
each means. Producers build their frames with :meth:`Schema.frame`; views and verdicts read the
column names from the schema and call :meth:`Schema.check` on what they are given, so a wrong
table fails at once with the missing columns named — no column guessing.

A schema may allow *extra* columns: a sweep carries one column per metric the user's
``evaluate`` returned, and the study adds labels such as ``task`` or ``stage``.

Example:
    >>> from deltalens.schemas import WEIGHT_OVERLAP
    >>> WEIGHT_OVERLAP.names[:4]
    ('a', 'b', 'eta', 'mso')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ACTIVATION_OVERLAP",
    "DELTA_NORMS",
    "ENERGY",
    "ENERGY_SWEEP",
    "EVALS",
    "PATCHING",
    "PROBES",
    "SCHEMAS",
    "SWEEP",
    "WEIGHT_OVERLAP",
    "WEIGHT_OVERLAP_TENSORS",
    "Schema",
    "SchemaError",
]


class SchemaError(ValueError):
    """A table that lacks columns its schema requires (the message names them)."""


@dataclass(frozen=True)
class Schema:
    """A table's declared columns.

    Attributes:
        name: the table's name (also its file stem in a results folder).
        columns: column name -> pandas dtype (``"str"``, ``"float64"``, ``"Int64"``, ``"int64"``,
            ``"bool"``), in order.
        doc: column name -> what it holds.
        optional: columns a producer may leave out (e.g. ``head`` when patching whole layers).
        extra: whether other columns may follow (metrics, labels).
    """

    name: str
    columns: Mapping[str, str]
    doc: Mapping[str, str] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    extra: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        """The declared column names, in order."""
        return tuple(self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        """The columns every table of this schema must have."""
        return tuple(c for c in self.columns if c not in self.optional)

    def frame(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
        """A DataFrame of ``rows`` with the declared columns first, in order, cast to their dtypes.

        Raises:
            SchemaError: a required column is missing, or an undeclared one appears where
                ``extra`` is False.
        """
        import pandas as pd

        df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if df.empty and not len(df.columns):
            df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in self.columns.items() if c in self.required})
        self.check(df)
        present = [c for c in self.columns if c in df.columns]
        df = df[present + [c for c in df.columns if c not in self.columns]]
        return df.astype({c: self.columns[c] for c in present})

    def check(self, df: pd.DataFrame, where: str | None = None) -> pd.DataFrame:
        """Return ``df`` unchanged if it has this schema's required columns, else raise.

        Raises:
            SchemaError: names the missing (or undeclared) columns and the table they belong to.
        """
        cols = set(getattr(df, "columns", ()))
        missing = [c for c in self.required if c not in cols]
        unknown = [] if self.extra else sorted(cols - set(self.columns))
        if missing or unknown:
            what = f" for {where}" if where else ""
            parts = []
            if missing:
                parts.append(f"missing columns {missing}")
            if unknown:
                parts.append(f"undeclared columns {unknown}")
            raise SchemaError(
                f"a {self.name!r} table was expected{what}: {' and '.join(parts)}; "
                f"it has {sorted(cols)}; the {self.name!r} schema is {list(self.columns)}"
            )
        return df

    def __repr__(self) -> str:
        cols = ", ".join(f"{c}: {t}" for c, t in self.columns.items())
        return f"Schema({self.name!r}, [{cols}]{', extra' if self.extra else ''})"


SWEEP = Schema(
    "sweep",
    {
        "method": "str",
        "mode": "str",
        "frac": "float64",
        "alpha": "float64",
        "k_total": "int64",
        "energy_kept": "float64",
        "energy_kept_no_embed": "float64",
    },
    doc={
        "method": "subspace method: topk, randomk, random, or none (the unedited reference)",
        "mode": "parallel (keep the part of ΔT in the subspace) or orth (remove it)",
        "frac": "rank fraction k / min(m, n) of the subspace",
        "alpha": "scale of the projected update",
        "k_total": "total subspace dimensions over the projected 2-D tensors",
        "energy_kept": "E_k = Σ‖PΔT‖² / Σ‖ΔT‖² over the projected tensors",
        "energy_kept_no_embed": "E_k without (un)embeddings",
    },
)
"""Rows of :func:`deltalens.interventions.subspace_sweep`; one extra column per metric."""

ENERGY = Schema(
    "energy",
    {
        "group": "str",
        "n_tensors": "int64",
        "task_sq_norm": "float64",
        "energy_kept_parallel": "float64",
        "energy_kept_orth": "float64",
    },
)
"""Rows of :func:`deltalens.interventions.energy_table`: E_k per tensor group."""

ENERGY_SWEEP = Schema(
    "energy_sweep",
    {
        "task": "str",
        "method": "str",
        "frac": "float64",
        "group": "str",
        "n_tensors": "int64",
        "k_total": "int64",
        "energy_kept_parallel": "float64",
        "energy_kept_orth": "float64",
        "random_expected": "float64",
    },
)
"""Rows of :func:`deltalens.interventions.energy_sweep`."""

WEIGHT_OVERLAP = Schema(
    "weight_overlap",
    {
        "a": "str",
        "b": "str",
        "eta": "float64",
        "mso": "float64",
        "baseline": "float64",
        "mso_std": "float64",
        "k_a": "float64",
        "k_b": "float64",
        "n_tensors": "int64",
        "ratio": "float64",
    },
    doc={
        "a": "first update",
        "b": "second update",
        "eta": "energy threshold of the ranks",
        "mso": "mean over tensors of MSO = ‖Q_aᵀQ_b‖²_F / min(k_a, k_b)",
        "baseline": "mean random baseline max(k_a, k_b) / d",
        "ratio": "mso / baseline",
    },
)
"""Update-pair overlap by η (:func:`deltalens.probes.weight_overlap_pairs`), which adds ``embeddings``
(``"included"`` / ``"excluded"``) and, by layer or module, ``layer`` / ``module`` as extra columns."""

WEIGHT_OVERLAP_TENSORS = Schema(
    "weight_overlap_tensors",
    {
        "tensor": "str",
        "group": "str",
        "module": "str",
        "layer": "Int64",
        "is_embedding": "bool",
        "eta": "float64",
        "k_a": "int64",
        "k_b": "int64",
        "d": "int64",
        "mso": "float64",
        "baseline": "float64",
    },
)
"""Per-tensor overlap of two updates (:func:`deltalens.probes.weight_overlap`)."""

ACTIVATION_OVERLAP = Schema(
    "activation_overlap",
    {
        "model": "str",
        "set_a": "str",
        "set_b": "str",
        "scope": "str",
        "layer": "Int64",
        "eta": "float64",
        "centered": "bool",
        "n_a": "int64",
        "n_b": "int64",
        "k_a": "float64",
        "k_b": "float64",
        "d": "int64",
        "mso": "float64",
        "baseline": "float64",
        "ratio": "float64",
    },
    optional=("ratio",),
)
"""Prompt-set overlap of activation subspaces (:func:`deltalens.probes.activation_overlap`)."""

PROBES = Schema(
    "probes",
    {
        "name": "str",
        "hook": "str",
        "layer": "Int64",
        "n_train": "float64",
        "n_test": "float64",
        "accuracy": "float64",
        "roc_auc": "float64",
        "train_accuracy": "float64",
        "majority_accuracy": "float64",
        "random_accuracy": "float64",
        "random_roc_auc": "float64",
    },
)
"""Held-out linear probe scores per hook (:func:`deltalens.probes.probe_layers`)."""

PATCHING = Schema(
    "patching",
    {
        "name": "str",
        "layer": "Int64",
        "position": "int64",
        "head": "Int64",
        "metric": "float64",
        "effect": "float64",
    },
    optional=("head",),
    doc={"effect": "(metric − corrupted) / (clean − corrupted): 1 = the patch restores the clean run"},
)
"""Activation patching results (:func:`deltalens.interventions.patching_sweep`)."""

EVALS = Schema(
    "evals",
    {
        "stage": "str",
        "harm": "float64",
        "refusal_harmful": "float64",
        "refusal_harmless": "float64",
        "utility": "float64",
    },
    optional=("refusal_harmless",),
)
"""Evaluation of each model of a family: harmful compliance, refusal rates, task utility."""

DELTA_NORMS = Schema(
    "delta_norms",
    {
        "update": "str",
        "name": "str",
        "layer": "Int64",
        "module": "str",
        "numel": "Int64",
        "norm": "float64",
        "rel_norm": "float64",
    },
    doc={
        "update": "which ΔW (a label such as useful / harmful)",
        "name": "the tensor's name",
        "norm": "‖ΔW‖_F",
        "rel_norm": "‖ΔW‖_F / ‖W‖_F (NaN without a reference)",
    },
    optional=("update", "layer", "module", "numel", "rel_norm"),
)
"""Per-tensor ΔW norms (:func:`deltalens.viz.weights.delta_norm_table`); :func:`deltalens.viz.delta_norms` fills the optional columns."""

SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        SWEEP,
        ENERGY,
        ENERGY_SWEEP,
        WEIGHT_OVERLAP,
        WEIGHT_OVERLAP_TENSORS,
        ACTIVATION_OVERLAP,
        PROBES,
        PATCHING,
        EVALS,
        DELTA_NORMS,
    )
}
"""Every declared schema by table name."""
