"""Weight-space overlap of fine-tuning updates: MSO per 2-D tensor, aggregated, for every pair.

Each ΔW is an HF ``nn.Linear``-style ``[out, in]`` tensor; its subspace is the left singular space
(``R^out``; for an embedding matrix ``[vocab, d_model]`` that is the vocabulary axis). One
decomposition per (update, tensor) serves every energy threshold η and every pair.

Example:
    >>> import deltalens as dl
    >>> from deltalens.probes import weight_overlap_pairs
    >>> df = weight_overlap_pairs({"alignment": dl.weight_delta(w0, wa), "useful": dl.weight_delta(wa, wu),
    ...                            "harmful": dl.weight_delta(wa, wh)}, etas=(0.1, 0.5, 0.9))
    >>> df.pivot_table(index=["a", "b"], columns="eta", values="mso")
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from deltalens.hooks.weights import is_embedding, layer_pattern, tensor_group, tensor_layer
from deltalens.interventions.delta import LowRank, WeightDelta
from deltalens.probes.overlap import energy_rank, left_svd, mso_at
from deltalens.schemas import WEIGHT_OVERLAP, WEIGHT_OVERLAP_TENSORS

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_WEIGHT_ETAS: tuple[float, ...] = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
"""The paper's η sweep for weight-update MSO (Exp 3)."""

Entry = Tensor | LowRank | None


def _entry(delta: Mapping[str, Any], name: str) -> Entry:
    """The update in ``[out, in]`` orientation: a tensor, a :class:`LowRank` ``B @ A``, or None (zero).

    A :class:`WeightDelta` knows its orientation (GPT-2 ``Conv1D`` weights are stored ``[in, out]``)
    and may keep LoRA updates factored; a plain mapping is taken as given.
    """
    return delta.oriented(name) if isinstance(delta, WeightDelta) else delta[name]


def _shape(delta: Mapping[str, Any], name: str, e: Entry) -> tuple[int, ...]:
    return tuple(delta.oriented_shape(name)) if isinstance(delta, WeightDelta) else tuple(e.shape)


def _selected(delta: Mapping[str, Any], include_embeddings: bool, pattern: str | None) -> list[str]:
    rx = re.compile(pattern) if pattern else None
    out = []
    for name in delta:
        if not include_embeddings and is_embedding(name):
            continue
        if rx is not None and not rx.search(name):
            continue
        out.append(name)
    return out


def _check_etas(etas: float | Sequence[float]) -> list[float]:
    etas = [float(etas)] if isinstance(etas, int | float) else [float(e) for e in etas]
    if not etas:
        raise ValueError("etas is empty; pass energy fractions in (0, 1], e.g. (0.1, 0.5, 0.9)")
    bad = [e for e in etas if not 0 < e <= 1]
    if bad:
        raise ValueError(f"etas {bad} are outside (0, 1]")
    return etas


def _decompose(e: Entry, centered: bool, max_eta: float) -> tuple[Tensor, Tensor] | None:
    """``(U, S)`` with ``U`` cut at the largest energy rank needed, or None for a zero update."""
    if e is None:
        return None
    if isinstance(e, LowRank):  # low rank B @ A: QR of B, SVD of the small R @ A
        Q, R = torch.linalg.qr(e.B.detach().double())
        A = e.A.detach().double()
        Us, S, _ = torch.linalg.svd(R @ (A - A.mean(1, keepdim=True) if centered else A), full_matrices=False)
        U = Q @ Us
    else:
        U, S = left_svd(e, centered=centered)
    if not float(S.square().sum()) > 0:
        return None
    return U[:, : energy_rank(S, max_eta)], S


def _rows(
    name: str, da: tuple[Tensor, Tensor], db: tuple[Tensor, Tensor], etas: list[float]
) -> list[dict[str, Any]]:
    (Ua, Sa), (Ub, Sb) = da, db
    layer, group = tensor_layer(name), tensor_group(name)
    rows = []
    for eta in etas:
        r = mso_at(Ua, Sa, Ub, Sb, eta)
        rows.append(
            dict(
                tensor=name,
                group=group,
                module=layer_pattern(name),
                layer=layer,
                is_embedding=group in ("embedding", "unembedding"),
                eta=eta,
                k_a=r.k_a,
                k_b=r.k_b,
                d=r.d,
                mso=r.mso,
                baseline=r.baseline,
            )
        )
    return rows


def _frame(rows: list[dict[str, Any]], extra: Sequence[str] = ()) -> pd.DataFrame:
    """The per-tensor table (:data:`~deltalens.schemas.WEIGHT_OVERLAP_TENSORS`), ``extra`` columns first."""
    import pandas as pd

    columns = [*extra, *WEIGHT_OVERLAP_TENSORS.names]
    return WEIGHT_OVERLAP_TENSORS.frame(pd.DataFrame(rows, columns=columns))[columns]


def _aggregate(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = (
        df.groupby(keys, dropna=False, sort=True)
        .agg(
            mso=("mso", "mean"),
            baseline=("baseline", "mean"),
            mso_std=("mso", "std"),
            k_a=("k_a", "mean"),
            k_b=("k_b", "mean"),
            n_tensors=("tensor", "nunique"),
        )
        .reset_index()
    )
    out["ratio"] = out["mso"] / out["baseline"]
    return out


@dataclass(kw_only=True)
class WeightOverlap:
    """Per-tensor MSO of two weight updates over an η sweep.

    Attributes:
        table: one row per (tensor, η) (:data:`~deltalens.schemas.WEIGHT_OVERLAP_TENSORS`).
            Columns: ``tensor`` (HF name), ``group``, ``module`` (name with the
            layer index as ``*``), ``layer`` (Int64, <NA> outside blocks), ``is_embedding``,
            ``eta``, ``k_a``, ``k_b``, ``d`` (rows of ΔW), ``mso``, ``baseline`` (max(k_a,k_b)/d).
        skipped: tensor name -> why it was left out (zero update, missing from one side, ...).
    """

    table: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)

    def mean(self) -> pd.DataFrame:
        """Mean over tensors per η: ``eta, mso, baseline, mso_std, k_a, k_b, n_tensors, ratio``."""
        return _aggregate(self.table, ["eta"])

    def by_layer(self) -> pd.DataFrame:
        """Mean over the tensors of each block per η (``layer`` <NA> = embeddings / final norm)."""
        return _aggregate(self.table, ["layer", "eta"])

    def by_module(self) -> pd.DataFrame:
        """Mean over layers per module kind (``model.layers.*.mlp.down_proj.weight``) and η."""
        return _aggregate(self.table, ["module", "eta"])

    def __repr__(self) -> str:
        if self.table.empty:
            return f"WeightOverlap(no tensors; skipped={len(self.skipped)})"
        m = self.mean()
        cells = ", ".join(f"η={r.eta:g}: {r.mso:.3f} vs {r.baseline:.3f}" for r in m.itertuples())
        return (
            f"WeightOverlap({self.table['tensor'].nunique()} tensors, skipped {len(self.skipped)}; "
            f"mean MSO vs random: {cells})"
        )


def weight_overlap(
    delta_a: Mapping[str, Tensor],
    delta_b: Mapping[str, Tensor],
    etas: float | Sequence[float] = DEFAULT_WEIGHT_ETAS,
    *,
    include_embeddings: bool = True,
    pattern: str | None = None,
    centered: bool = False,
) -> WeightOverlap:
    """MSO between two weight updates, per 2-D tensor, for each energy threshold.

    Args:
        delta_a, delta_b: ``name -> ΔW`` mappings (a ``WeightDelta``, a state-dict difference, ...)
            with HF tensor names; only 2-D tensors present in both are compared.
        etas: energy fractions for the ranks ``k_a(η)``, ``k_b(η)``.
        include_embeddings: keep token / position embeddings and ``lm_head`` (see
            :func:`deltalens.hooks.weights.is_embedding`). Report both: the embeddings can dominate the picture.
        pattern: optional regex; only tensor names it matches (``re.search``) are compared.
        centered: centre the columns of each ΔW first.

    Returns:
        :class:`WeightOverlap` with the per-tensor ``table`` and ``mean()`` / ``by_layer()`` views.

    Raises:
        ValueError: no 2-D tensor in common, or bad ``etas``.

    Example:
        >>> wo = weight_overlap(delta_useful, delta_harmful, etas=(0.5, 0.9), include_embeddings=False)
        >>> wo.mean()        # eta, mso, baseline, ...
    """
    etas = _check_etas(etas)
    result = _pairs({"a": delta_a, "b": delta_b}, etas, include_embeddings, pattern, centered)
    table = WEIGHT_OVERLAP_TENSORS.frame(result.table.drop(columns=["a", "b"]).reset_index(drop=True))
    return WeightOverlap(table=table, skipped=result.skipped)


def _common_names(names_per: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """Tensor names selected in every update (first update's order), and why the others are left out."""
    keys = list(names_per)
    sets = {k: set(v) for k, v in names_per.items()}
    common = [n for n in names_per[keys[0]] if all(n in sets[k] for k in keys)]
    skipped: dict[str, str] = {}
    for k in keys:
        for n in names_per[k]:
            if n not in common and n not in skipped:
                skipped[n] = f"missing from {[j for j in keys if n not in sets[j]]}"
    return common, skipped


def _check_finite(key: str, name: str, e: Entry) -> None:
    parts = [] if e is None else [e.B, e.A] if isinstance(e, LowRank) else [e]
    if not all(bool(torch.isfinite(t).all()) for t in parts):
        raise ValueError(f"update {key!r} has non-finite values in tensor {name!r}")


def _tensor_rows(
    deltas: Mapping[str, Mapping[str, Tensor]], name: str, etas: list[float], centered: bool
) -> tuple[list[dict[str, Any]], str | None] | None:
    """Rows ``a, b, <tensor columns>`` of one tensor for every pair of updates.

    Returns:
        None when the tensor is not 2-D in every update; otherwise ``(rows, reason)`` with
        ``reason`` saying why the tensor is skipped (then ``rows`` is empty), or None.
    """
    entries = {k: _entry(delta, name) for k, delta in deltas.items()}
    shapes = {k: _shape(deltas[k], name, e) for k, e in entries.items()}
    if any(len(s) != 2 for s in shapes.values()):
        return None
    if len(set(shapes.values())) > 1:
        return [], f"shapes differ: {shapes}"
    decomp = {}
    for k, e in entries.items():
        _check_finite(k, name, e)
        decomp[k] = _decompose(e, centered, max(etas))
    zero = [k for k, v in decomp.items() if v is None]
    if zero:
        return [], f"zero update in {zero}"
    rows = []
    for a, b in itertools.combinations(deltas, 2):
        rows += [dict(a=a, b=b, **r) for r in _rows(name, decomp[a], decomp[b], etas)]
    return rows, None


def _pairs(
    deltas: Mapping[str, Mapping[str, Tensor]],
    etas: list[float],
    include_embeddings: bool,
    pattern: str | None,
    centered: bool,
) -> WeightOverlap:
    """Per-tensor overlap of every pair of ``deltas``: the tensor table with ``a, b`` columns first."""
    if len(deltas) < 2:
        raise ValueError(f"need at least two updates to compare; got {list(deltas)}")
    names_per = {k: _selected(delta, include_embeddings, pattern) for k, delta in deltas.items()}
    common, skipped = _common_names(names_per)
    rows: list[dict[str, Any]] = []
    n_2d = 0
    for name in common:
        found = _tensor_rows(deltas, name, etas, centered)
        if found is None:
            continue
        n_2d += 1
        rows += found[0]
        if found[1] is not None:
            skipped[name] = found[1]
    if n_2d == 0:
        raise ValueError(
            f"the updates {list(deltas)} share no 2-D tensor (after include_embeddings={include_embeddings}, "
            f"pattern={pattern!r}); expected HF names such as 'model.layers.0.mlp.up_proj.weight'"
        )
    return WeightOverlap(table=_frame(rows, extra=("a", "b")), skipped=skipped)


def weight_overlap_pairs(
    deltas: Mapping[str, Mapping[str, Tensor]],
    etas: float | Sequence[float] = DEFAULT_WEIGHT_ETAS,
    *,
    include_embeddings: bool | Literal["both"] = "both",
    by: Literal["mean", "layer", "module", "tensor"] = "mean",
    pattern: str | None = None,
    centered: bool = False,
) -> pd.DataFrame:
    """Weight-update MSO for every pair of named updates, as one tidy table.

    Args:
        deltas: ``label -> update``, e.g. ``{"alignment": dA, "useful": dU, "harmful": dH,
            "contaminated": dC}``. Pairs are taken in this order (``a`` before ``b``).
        etas: energy fractions.
        include_embeddings: True, False, or ``"both"`` (rows for each, told apart by the
            ``embeddings`` column, ``"included"`` / ``"excluded"``).
        by: aggregate per ``"mean"`` (over tensors), ``"layer"``, ``"module"``, or keep every
            ``"tensor"`` row.
        pattern: optional regex on tensor names.
        centered: centre the columns of each ΔW first.

    Returns:
        DataFrame with ``a, b, embeddings`` and, for ``by="tensor"``, the columns of
        :attr:`WeightOverlap.table` (:data:`~deltalens.schemas.WEIGHT_OVERLAP_TENSORS`); otherwise
        the grouping keys plus ``mso, baseline, mso_std, k_a, k_b, n_tensors, ratio`` (means over
        tensors; ``ratio = mso / baseline``; :data:`~deltalens.schemas.WEIGHT_OVERLAP`).

    Example:
        >>> df = weight_overlap_pairs({"alignment": dA, "useful": dU, "harmful": dH}, etas=(0.5, 0.9))
        >>> df[df.embeddings == "excluded"].pivot_table(index=["a", "b"], columns="eta", values="mso")
    """
    import pandas as pd

    etas = _check_etas(etas)
    if by not in ("mean", "layer", "module", "tensor"):
        raise ValueError(f"by={by!r}; expected 'mean', 'layer', 'module' or 'tensor'")
    if include_embeddings not in (True, False, "both"):
        raise ValueError(f"include_embeddings={include_embeddings!r}; expected True, False or 'both'")
    full = _pairs(deltas, etas, include_embeddings is not False, pattern, centered).table
    variants = {"included": full, "excluded": full[~full["is_embedding"]]}
    if include_embeddings is True:
        variants.pop("excluded")
    elif include_embeddings is False:
        variants.pop("included")
    keys = {"mean": [], "layer": ["layer"], "module": ["module"], "tensor": None}[by]
    frames = []
    for label, df in variants.items():
        out = df.copy() if keys is None else _aggregate(df, ["a", "b", *keys, "eta"])
        out.insert(2, "embeddings", label)
        frames.append(out)
    return _pairs_frame(pd.concat(frames, ignore_index=True), tensors=keys is None)


def _pairs_frame(df: pd.DataFrame, tensors: bool) -> pd.DataFrame:
    """``df`` checked and cast by its schema (per-tensor rows or aggregates), its column order kept."""
    schema = WEIGHT_OVERLAP_TENSORS if tensors else WEIGHT_OVERLAP
    return schema.frame(df)[list(df.columns)]
