"""Sweep subspace projections (method × fraction × mode) on one live model, in place.

The paper's Exps 1–2: for each method (TopK, RandomK, Random), fraction of the rank and mode
(parallel / orthogonal), put ``W_ref + α·P(Δ_T)`` on the model, call ``evaluate(model)`` and
record E_k. Nothing is written to disk: each configuration is written into the live weights and
the originals come back at the end. Every SVD is computed once, and because each method's bases
are nested in k, the projection for a larger fraction is the previous one plus the new directions
only — a whole frac sweep costs about one full projection per method and tensor.

Example:
    >>> df = subspace_sweep(aligned, dl.weight_delta(aligned, harmful), dl.weight_delta(base, aligned),
    ...                     fracs=(0.01, 0.25, 0.5, 0.75, 0.99), evaluate=lambda m: {"refusal": refusal(m)})
    >>> df.pivot_table(index="frac", columns=["method", "mode"], values="refusal")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from deltalens.hooks.weights import is_embedding
from deltalens.interventions.bases import Basis, OverRank
from deltalens.interventions.checks import At, check_basis, check_live, claim, live_params, locate, release
from deltalens.interventions.delta import LowRank, WeightDelta
from deltalens.interventions.energies import MODES
from deltalens.interventions.modules import ModulesArg, select_names
from deltalens.interventions.project import Outside, check_outside, reference_weight
from deltalens.schemas import SWEEP

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.hooks.model import HookedModel

SWEEP_METHODS: tuple[str, ...] = ("topk", "randomk", "random")
"""The paper's fraction sweep (``scripts/projection.py``)."""

BASELINE_MODES: tuple[str, ...] = ("reference", "full")
"""Modes of the ``method="none"`` rows: ``W_ref`` and the un-projected ``W_ref + α Δ_T``."""

Evaluate = Callable[[Any], dict[str, Any] | float | None]
"""``evaluate(model)``: a dict of metrics, a bare number (``metric``), or None (no metrics)."""


class _Tensor:
    """Per-tensor sweep state: the task update, its nested projection so far, and the writes."""

    def __init__(self, name: str, delta: WeightDelta, w_ref: Tensor, alpha: float, need_full: bool) -> None:
        self.name, self.alpha = name, alpha
        self.device = w_ref.device
        e = delta.oriented(name)
        if isinstance(e, LowRank):
            e = LowRank(e.B.to(self.device), e.A.to(self.device))
        self.e = e.to(self.device) if isinstance(e, Tensor) else e
        self.total = delta.sq_norm(name)
        self.transposed = name in delta.transposed
        self.w_ref = w_ref
        self.w_full: Tensor | None = None
        if need_full and self.e is not None:
            self.w_full = w_ref + alpha * delta[name].to(w_ref.device)
        self.reset()

    def reset(self) -> None:
        self.k = 0
        self.kept = 0.0
        e = self.e
        self.p = None if e is None else torch.zeros_like(e.B if isinstance(e, LowRank) else e)

    def coefficients(self, u: Tensor) -> Tensor | None:
        """``uᵀ Δ`` (``uᵀ B`` for a low-rank Δ): one row per candidate vector."""
        e = self.e
        if e is None:
            return None
        u = u.to(device=self.device, dtype=self.p.dtype)
        if isinstance(e, LowRank):
            return u.T @ e.B
        return u.T @ e

    def grow(self, u: Tensor, order: Tensor | None, c: Tensor | None, k: int) -> None:
        """Extend the projection to the first ``k`` vectors of ``u[:, order]`` (nested bases)."""
        if self.e is None or c is None or k <= self.k:
            return
        idx = slice(self.k, k) if order is None else order[self.k : k].to(u.device)
        qs, cs = u[:, idx].to(device=self.device, dtype=self.p.dtype), c[idx]
        if self.p.ndim == 1:  # 1-D: span of one direction
            self.p = qs[:, 0] * cs[0]
            self.kept = float(cs[0]) ** 2
        elif isinstance(self.e, LowRank):
            self.p.addmm_(qs, cs)
            self.kept = LowRank(self.p, self.e.A).sq_norm()
        else:
            self.p.addmm_(qs, cs)
            self.kept += float(torch.linalg.vector_norm(cs)) ** 2
        self.k = k

    def write(self, param: Tensor, mode: str) -> None:
        if self.e is None:
            return
        p = self.p @ self.e.A if isinstance(self.e, LowRank) else self.p
        p = p.T if self.transposed else p
        base, sign = (self.w_ref, 1.0) if mode == "parallel" else (self.w_full, -1.0)
        if param.dtype == base.dtype and param.device == base.device and param.is_contiguous():
            torch.add(base, p, alpha=sign * self.alpha, out=param)
        else:
            param.copy_(torch.add(base, p, alpha=sign * self.alpha))


def _energy(states: list[_Tensor], mode: str) -> float:
    kept, tot = sum(s.kept for s in states), sum(s.total for s in states)
    if tot == 0:
        return float("nan")
    return kept / tot if mode == "parallel" else max(tot - kept, 0.0) / tot


def _metrics(out: Any) -> dict[str, Any]:
    if out is None:
        return {}
    if isinstance(out, dict):
        return dict(out)
    return {"metric": out}


def _check_choices(methods: Sequence[str], modes: Sequence[str], outside: str) -> None:
    """Raise ValueError on an unknown method, mode or ``outside``."""
    bad = [m for m in methods if m not in SWEEP_METHODS]
    if bad or not methods:
        raise ValueError(f"unknown sweep methods {bad or methods}; expected a subset of {SWEEP_METHODS}")
    badm = [m for m in modes if m not in MODES]
    if badm or not modes:
        raise ValueError(f"unknown modes {badm or modes}; expected a subset of {MODES}")
    check_outside(outside)


def _sweep_bases(
    subspace_delta: WeightDelta,
    methods: Sequence[str],
    fracs: list[float],
    seed: int,
    dtype: torch.dtype,
    over_rank: OverRank,
) -> dict[tuple[str, float], Basis]:
    """One basis per (method, frac); building them validates every frac and k."""
    return {
        (m, f): Basis(
            subspace_delta,
            method=m,
            frac=f,
            seed=seed if m != "topk" else None,
            dtype=dtype,
            over_rank=over_rank,
        )
        for m in methods
        for f in fracs
    }


@dataclass(frozen=True)
class _Plan:
    """The grid and the rules of one sweep."""

    methods: Sequence[str]
    modes: Sequence[str]
    order: list[float]  # the fractions, ascending and distinct (the projections grow with k)
    alpha: float
    outside: Outside
    at: At
    baselines: bool
    progress: bool


class _Sweep:
    """One sweep in progress: the live weights and their originals, per-tensor states, rows so far."""

    def __init__(
        self,
        reference: HookedModel | torch.nn.Module,
        task_delta: WeightDelta,
        names: list[str],
        evaluate: Evaluate | None,
        plan: _Plan,
    ) -> None:
        self.reference, self.delta, self.names = reference, task_delta, names
        self.evaluate, self.plan = evaluate, plan
        self.live = live_params(reference) if evaluate is not None else {}
        self.two_d = [n for n in names if len(task_delta.shapes[n]) == 2]
        self.rows: list[dict[str, Any]] = []
        self.originals: dict[str, Tensor] = {}
        self.sel: list[_Tensor] = []
        self.no_emb: list[_Tensor] = []
        self.bar: Any = None  # the tqdm bar, while run() runs

    def run(self, bases: dict[tuple[str, float], Basis]) -> list[dict[str, Any]]:
        """Every point of the grid (baselines first); the original weights come back in ``finally``."""
        from tqdm.auto import tqdm

        plan = self.plan
        n_points = len(plan.methods) * len(plan.order) * len(plan.modes) + (2 if plan.baselines else 0)
        claim_key = claim(self.live, "subspace_sweep") if self.evaluate is not None else None
        self.bar = tqdm(total=n_points, desc="subspace sweep", unit="point", disable=not plan.progress)
        try:
            self._setup()
            if plan.baselines:
                self._baselines()
            # uᵀΔ per (tensor, vector set), computed once: TopK and RandomK share their vectors
            coeffs: dict[tuple[str, int], Tensor | None] = {}
            for method in plan.methods:
                coeffs = self._method(method, bases, coeffs)
        finally:
            self.bar.close()
            with torch.no_grad():
                for n, orig in self.originals.items():
                    self.live[n].copy_(orig)
            if claim_key is not None:
                release(claim_key)
        return self.rows

    def _setup(self) -> None:
        """Check the live model, keep its originals, fix the tensors outside ``modules``, build states."""
        d, plan, chosen = self.delta, self.plan, set(self.names)
        all_names = list(d)
        states: dict[str, _Tensor] = {}
        if self.evaluate is not None:
            check_live(self.live, d, all_names)
            where = locate(self.live, d, all_names, plan.at)
        with torch.no_grad():
            for n in all_names:
                if self.evaluate is None:
                    if n in chosen:
                        states[n] = _Tensor(n, d, torch.zeros(0), plan.alpha, need_full=False)
                    continue
                self.originals[n] = self.live[n].detach().clone()
                w_ref = reference_weight(self.originals[n], d, n, where)
                if n in chosen:
                    need_full = "orth" in plan.modes or plan.baselines
                    states[n] = _Tensor(n, d, w_ref, plan.alpha, need_full=need_full)
                else:  # fixed for the whole sweep
                    w = w_ref if plan.outside == "reference" else w_ref + plan.alpha * d[n]
                    self.live[n].copy_(w)
        self.sel = [states[n] for n in self.names]
        self.no_emb = [states[n] for n in self.names if not is_embedding(n)]

    def _write(self, mode: str) -> None:
        """Put the current configuration on the model; baseline modes: ``W_ref`` or ``W_ref + α Δ_T``."""
        for s in self.sel:
            if mode in BASELINE_MODES:
                if s.e is not None:
                    s.reset()
                    s.write(self.live[s.name], "parallel" if mode == "reference" else "orth")
            else:
                s.write(self.live[s.name], mode)

    def _point(self, label: dict[str, Any], mode: str, ek: tuple[float, float], grow_s: float = 0.0) -> None:
        """Write one configuration, evaluate it, and record its row."""
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {}
        t1 = t0
        if self.evaluate is not None:
            with torch.no_grad():
                self._write(mode)
            t1 = time.perf_counter()
            metrics = _metrics(self.evaluate(self.reference))
        t2 = time.perf_counter()
        self.rows.append(
            {
                **label,
                "energy_kept": ek[0],
                "energy_kept_no_embed": ek[1],
                "edit_s": grow_s + t1 - t0,
                "eval_s": t2 - t1,
                **metrics,
            }
        )
        self.bar.update(1)

    def _baselines(self) -> None:
        k0 = {"method": "none", "frac": float("nan"), "alpha": self.plan.alpha, "k_total": 0}
        for mode, ek in zip(BASELINE_MODES, (0.0, 1.0)):
            self._point({**k0, "mode": mode}, mode, (ek, ek))

    def _method(
        self,
        method: str,
        bases: dict[tuple[str, float], Basis],
        coeffs: dict[tuple[str, int], Tensor | None],
    ) -> dict[tuple[str, int], Tensor | None]:
        """All fractions and modes of one method; returns the coefficients worth keeping for the next."""
        plan = self.plan
        for s in self.sel:
            s.reset()
        parts = {n: bases[(method, plan.order[0])].ordered_parts(n) for n in self.names}
        wanted = {(n, id(u)) for n, (u, _) in parts.items()}
        coeffs = {key: c for key, c in coeffs.items() if key in wanted}
        for frac in plan.order:
            basis = bases[(method, frac)]
            grow_s = self._grow(parts, coeffs, basis)
            k_total = sum(basis.k(n) for n in self.two_d)
            for mode in plan.modes:
                ek = (_energy(self.sel, mode), _energy(self.no_emb, mode))
                label = {"method": method, "mode": mode, "frac": frac, "alpha": plan.alpha, "k_total": k_total}
                self._point(label, mode, ek, grow_s)
                grow_s = 0.0
        return coeffs

    def _grow(
        self,
        parts: dict[str, tuple[Tensor, Tensor | None]],
        coeffs: dict[tuple[str, int], Tensor | None],
        basis: Basis,
    ) -> float:
        """Extend every tensor's nested projection to ``basis``'s k; returns the seconds it took."""
        t0 = time.perf_counter()
        for s in self.sel:
            u, perm = parts[s.name]
            key = (s.name, id(u))
            if key not in coeffs:
                coeffs[key] = s.coefficients(u)
            s.grow(u, perm, coeffs[key], basis.k(s.name))
        return time.perf_counter() - t0


def _tidy(rows: list[dict[str, Any]], fracs: list[float], methods: Sequence[str]) -> pd.DataFrame:
    """The rows as a :data:`~deltalens.schemas.SWEEP` frame: baselines first, then methods and
    fractions in the caller's order."""
    import pandas as pd

    df = pd.DataFrame(rows)
    rank = {f: i for i, f in enumerate(fracs)}
    df["_o"] = [(-1 if m == "none" else rank[f]) for m, f in zip(df["method"], df["frac"])]
    df["_m"] = [(-1 if m == "none" else list(methods).index(m)) for m in df["method"]]
    df = df.sort_values(["_m", "_o"], kind="stable").drop(columns=["_o", "_m"]).reset_index(drop=True)
    return SWEEP.frame(df)


def subspace_sweep(
    reference: HookedModel | torch.nn.Module,
    task_delta: WeightDelta,
    subspace_delta: WeightDelta,
    fracs: Sequence[float],
    methods: Sequence[str] = SWEEP_METHODS,
    modes: Sequence[str] = MODES,
    evaluate: Evaluate | None = None,
    seed: int = 0,
    *,
    alpha: float = 1.0,
    modules: ModulesArg = None,
    outside: Outside = "reference",
    at: At = "auto",
    baselines: bool = True,
    over_rank: OverRank = "error",
    dtype: torch.dtype = torch.float32,
    check: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate ``W_ref + α·P(Δ_T)`` for every method × fraction × mode, in place on ``reference``.

    Args:
        reference: the live model (``HookedModel`` or HF model) holding Δ_T's reference (or target)
            weights; they are restored at the end, also on errors.
        task_delta, subspace_delta: Δ_T (e.g. ``weight_delta(aligned, harmful)``) and the delta whose
            subspaces are swept (e.g. Δ_A = ``weight_delta(base, aligned)``).
        fracs: fractions of each tensor's rank, each in (0, 1] (no default: the grid is the caller's).
        methods, modes: subsets of ``"topk", "randomk", "random"`` (Random = Gaussian of the same
            shape) and of ``"parallel", "orth"``.
        evaluate: ``evaluate(model) -> dict`` of metrics (a bare number becomes ``metric``); None
            records energies only and leaves the weights alone.
        seed: seeds RandomK's permutations and Random's Gaussians (per tensor).
        alpha, modules, outside, at: as for :func:`~deltalens.interventions.project.apply_projection`.
        baselines: add ``method="none"`` rows for ``W_ref`` (``mode="reference"``) and ``W_ref + α Δ_T`` (``"full"``).
        over_rank, dtype: as for :func:`~deltalens.interventions.bases.top_k`.
        check: reject a subspace delta from another model family. progress: a tqdm progress bar.

    Returns:
        A :data:`~deltalens.schemas.SWEEP` frame, one row per configuration (``energy_kept_no_embed``
        leaves out embeddings and ``lm_head``), then ``edit_s, eval_s`` and the keys ``evaluate`` returned.

    Raises:
        ValueError: a fraction outside (0, 1], an unknown method or mode, or a basis / model that
            does not fit — all before any weight changes.
    """
    _check_choices(methods, modes, outside)
    fracs = [float(f) for f in fracs]
    bases = _sweep_bases(subspace_delta, methods, fracs, seed, dtype, over_rank)
    names = select_names(list(task_delta), modules, task_delta.shapes)
    if check:
        check_basis(next(iter(bases.values())), task_delta, names)
    plan = _Plan(methods, modes, sorted(set(fracs)), alpha, outside, at, baselines, progress)
    df = _tidy(_Sweep(reference, task_delta, names, evaluate, plan).run(bases), fracs, methods)
    df.attrs.update(task=task_delta.reference.to_dict(), subspace=subspace_delta.reference.to_dict())
    df.attrs.update(seed=seed, modules=repr(modules), outside=outside)
    return df
