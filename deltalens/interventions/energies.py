"""Energy kept by a projection: ``E_k = Σ‖P Δ‖²_F / Σ‖Δ‖²_F``, per group and over a grid.

No model is needed: these work on the deltas alone (low-rank updates without densifying), which
is all the organism's Exp-1 diagnostic needs.

Example:
    >>> d_align = dl.weight_delta(fam["w0"], fam["wa"])
    >>> tasks = {k: dl.weight_delta(fam["wa"], fam[k]) for k in ("useful", "harmful", "contaminated")}
    >>> df = energy_sweep(tasks, d_align, fracs=(0.25,))
    >>> df[df.group == "no_embeddings"].pivot_table(index="task", columns="method", values="energy_kept_parallel")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from deltalens.hooks.weights import GROUPS, is_embedding, tensor_group
from deltalens.interventions.bases import Basis
from deltalens.interventions.checks import check_basis
from deltalens.interventions.delta import LowRank, WeightDelta
from deltalens.interventions.modules import ModulesArg, select_names
from deltalens.schemas import ENERGY, ENERGY_SWEEP

if TYPE_CHECKING:
    import pandas as pd

Mode = Literal["parallel", "orth"]
MODES: tuple[str, ...] = ("parallel", "orth")


def kept_sq(task_delta: WeightDelta, basis: Basis, name: str) -> tuple[float, float]:
    """``(‖L Lᵀ Δ‖²_F, ‖Δ‖²_F)`` of one tensor, in fp64, without densifying low-rank updates."""
    e = task_delta.oriented(name)
    total = task_delta.sq_norm(name)
    L = basis.vectors(name)
    if e is None or L.shape[1] == 0:
        return 0.0, total
    L = L.double()
    if isinstance(e, LowRank):
        c = L.T @ e.B.double()
        a = e.A.double()
        return float(((c.T @ c) * (a @ a.T)).sum()), total
    c = L.T @ e.double()
    return float((c**2).sum()), total


def energy_kept(
    task_delta: WeightDelta,
    basis: Basis,
    mode: Mode = "parallel",
    modules: ModulesArg = None,
    check: bool = True,
) -> float:
    """``E_k = Σ‖P Δ‖²_F / Σ‖Δ‖²_F`` over the selected tensors (P the parallel or orth projector).

    Example:
        >>> energy_kept(d_task, top_k(d_align, frac=0.25), "parallel")
    """
    names = select_names(list(task_delta), modules, task_delta.shapes)
    if check:
        check_basis(basis, task_delta, names)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    par = tot = 0.0
    for n in names:
        p, t = kept_sq(task_delta, basis, n)
        par, tot = par + p, tot + t
    if tot == 0.0:
        return float("nan")
    return par / tot if mode == "parallel" else max(tot - par, 0.0) / tot


def energy_table(
    task_delta: WeightDelta, basis: Basis, modules: ModulesArg = None, check: bool = True
) -> pd.DataFrame:
    """E_k per tensor group, with and without (un)embeddings.

    Returns:
        An :data:`~deltalens.schemas.ENERGY` frame: ``group, n_tensors, task_sq_norm,
        energy_kept_parallel, energy_kept_orth``; rows ``all``, ``no_embeddings`` and each non-empty
        group of :data:`~deltalens.hooks.weights.GROUPS`.
    """
    names = select_names(list(task_delta), modules, task_delta.shapes)
    if check:
        check_basis(basis, task_delta, names)
    per = {n: kept_sq(task_delta, basis, n) for n in names}
    rows = []
    for g, ns in _groups(names, ("all", "no_embeddings", *GROUPS)).items():
        par, tot = sum(per[n][0] for n in ns), sum(per[n][1] for n in ns)
        ek = par / tot if tot else float("nan")
        rows.append(
            dict(
                group=g, n_tensors=len(ns), task_sq_norm=tot, energy_kept_parallel=ek, energy_kept_orth=1 - ek
            )
        )
    return ENERGY.frame(rows)


def _row_energies(u: torch.Tensor, e: torch.Tensor | LowRank) -> torch.Tensor:
    """``‖u_iᵀ Δ‖²`` for every candidate vector ``u_i`` (fp64); Δ low-rank or dense, 1-D or 2-D."""
    u = u.double()
    if isinstance(e, LowRank):
        c = u.T @ e.B.double()
        return ((c @ (e.A.double() @ e.A.double().T)) * c).sum(1)
    c = u.T @ e.double()
    return c**2 if c.ndim == 1 else (c**2).sum(1)


def _groups(names: list[str], groups: Sequence[str]) -> dict[str, list[str]]:
    """The non-empty ones of ``groups`` (``all``, ``no_embeddings`` or a tensor group) -> their tensors."""
    sets = {"all": names, "no_embeddings": [n for n in names if not is_embedding(n)]}
    sets.update({g: [n for n in names if tensor_group(n) == g] for g in GROUPS})
    bad = [g for g in groups if g not in sets]
    if bad:
        raise ValueError(f"unknown groups {bad}; expected any of {list(sets)}")
    return {g: sets[g] for g in groups if sets[g]}


def _cumulative(
    delta: WeightDelta, names: list[str], basis: Basis, cache: dict[tuple[str, int], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per tensor, ``[0, ‖P_1 Δ‖², ‖P_2 Δ‖², ...]``: the energy kept by the method's first k vectors.

    ``cache`` holds each tensor's row energies per vector set, shared by methods with the same vectors.
    """
    cum: dict[str, torch.Tensor] = {}
    for n in names:
        u, order = basis.ordered_parts(n)
        e = delta.oriented(n)
        if e is None or u.shape[1] == 0:
            cum[n] = torch.zeros(1, dtype=torch.float64)
            continue
        key = (n, id(u))
        if key not in cache:
            cache[key] = _row_energies(u, e)
        r = cache[key] if order is None else cache[key][order]
        cum[n] = torch.cat([torch.zeros(1, dtype=torch.float64), r.cumsum(0)])
    return cum


def _sweep_row(
    basis: Basis, ns: list[str], total: dict[str, float], cum: dict[str, torch.Tensor]
) -> dict[str, float | int]:
    """The energies of one basis over one group of tensors ``ns``."""
    tot = sum(total[n] for n in ns)
    kept = sum(float(cum[n][min(basis.k(n), len(cum[n]) - 1)]) for n in ns)
    rand = sum(total[n] * basis.k(n) / basis.shapes[n][0] for n in ns)
    ek = kept / tot if tot else float("nan")
    return dict(
        n_tensors=len(ns),
        k_total=sum(basis.k(n) for n in ns if len(basis.shapes[n]) == 2),
        energy_kept_parallel=ek,
        energy_kept_orth=1 - ek,
        random_expected=rand / tot if tot else float("nan"),
    )


def _task_rows(
    label: str,
    delta: WeightDelta,
    bases: dict[tuple[str, float], Basis],
    grid: tuple[Sequence[str], Sequence[float]],
    modules: ModulesArg,
    groups: Sequence[str],
    check: bool,
) -> list[dict[str, object]]:
    """The :data:`~deltalens.schemas.ENERGY_SWEEP` rows of one task update over the grid ``(methods, fracs)``."""
    methods, fracs = grid
    names = select_names(list(delta), modules, delta.shapes)
    if check:
        check_basis(next(iter(bases.values())), delta, names)
    sets = _groups(names, groups)
    total = {n: delta.sq_norm(n) for n in names}
    cache: dict[tuple[str, int], torch.Tensor] = {}
    rows: list[dict[str, object]] = []
    for method in methods:
        cum = _cumulative(delta, names, bases[(method, fracs[0])], cache)
        for frac in fracs:
            for g, ns in sets.items():
                row = _sweep_row(bases[(method, frac)], ns, total, cum)
                rows.append(dict(task=label, method=method, frac=frac, group=g, **row))
    return rows


def energy_sweep(
    task_deltas: WeightDelta | Mapping[str, WeightDelta],
    subspace_delta: WeightDelta,
    fracs: Sequence[float] = (0.01, 0.25, 0.5, 0.75, 0.99),
    methods: Sequence[str] = ("topk", "randomk", "random"),
    seed: int = 0,
    *,
    modules: ModulesArg = None,
    groups: Sequence[str] = ("all", "no_embeddings"),
    over_rank: Literal["error", "clip"] = "error",
    check: bool = True,
) -> pd.DataFrame:
    """E_k of one or more task updates in the subspaces of ``subspace_delta``, over a grid — no model.

    Each task update is projected once per tensor and vector set (TopK and RandomK share the
    singular vectors); every fraction then reads off a cumulative sum.

    Args:
        task_deltas: one delta or ``{label: delta}`` (e.g. useful / harmful / contaminated).
        subspace_delta: the delta whose subspaces are used (e.g. Δ_A).
        fracs, methods, seed, over_rank: as for :func:`~deltalens.interventions.sweep.subspace_sweep`.
        modules: tensors to include before grouping (default all).
        groups: rows per group: ``"all"``, ``"no_embeddings"`` and any of
            :data:`~deltalens.hooks.weights.GROUPS`; the prototype found the Exp-1
            diagnostic flips when embeddings are included, so the default reports both.
        check: reject a subspace delta from another model family.

    Returns:
        An :data:`~deltalens.schemas.ENERGY_SWEEP` frame: ``task, method, frac, group, n_tensors,
        k_total, energy_kept_parallel, energy_kept_orth, random_expected`` where ``random_expected =
        Σ (k/m)‖Δ‖² / Σ‖Δ‖²`` is the mean E_k of a Haar-random subspace of the same k per tensor
        (1-D tensors: ``1/n``).

    Example:
        >>> energy_sweep({"useful": d_u, "harmful": d_h}, d_align, fracs=(0.25,), groups=("no_embeddings",))
    """
    tasks = {"task": task_deltas} if isinstance(task_deltas, WeightDelta) else dict(task_deltas)
    bases = {
        (m, f): Basis(
            subspace_delta, method=m, frac=f, seed=None if m == "topk" else seed, over_rank=over_rank
        )
        for m in methods
        for f in fracs
    }
    rows = []
    for label, delta in tasks.items():
        rows += _task_rows(label, delta, bases, (methods, fracs), modules, groups, check)
    return ENERGY_SWEEP.frame(rows)
