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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from deltalens.hooks.weights import is_embedding
from deltalens.interventions.bases import Basis, OverRank
from deltalens.interventions.checks import At, check_basis, check_live, claim, live_params, locate, release
from deltalens.interventions.delta import LowRank, WeightDelta
from deltalens.interventions.energies import MODES
from deltalens.interventions.modules import ModulesArg, select_names
from deltalens.interventions.project import Outside, reference_weight

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.hooks.model import HookedModel

SWEEP_METHODS: tuple[str, ...] = ("topk", "randomk", "random")
"""The paper's fraction sweep (``scripts/projection.py``)."""


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


def subspace_sweep(
    reference: HookedModel | torch.nn.Module,
    task_delta: WeightDelta,
    subspace_delta: WeightDelta,
    fracs: Sequence[float],
    methods: Sequence[str] = SWEEP_METHODS,
    modes: Sequence[str] = MODES,
    evaluate: Callable[[Any], dict[str, Any] | float] | None = None,
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
            weights; its original weights are restored at the end, also on errors.
        task_delta: Δ_T, e.g. ``weight_delta(aligned, harmful)``.
        subspace_delta: the delta whose subspaces are swept, e.g. Δ_A = ``weight_delta(base, aligned)``.
        fracs: fractions of each tensor's rank, each in (0, 1].
        methods: any of ``"topk"``, ``"randomk"``, ``"random"`` (Random = Gaussian of the same shape).
        modes: any of ``"parallel"``, ``"orth"``.
        evaluate: ``evaluate(model) -> dict`` of metrics (a bare number becomes ``metric``); None
            records energies only and leaves the weights alone.
        seed: seeds RandomK's permutations and Random's Gaussians (per tensor).
        alpha: scale of the kept update.
        modules: which tensors are projected (default all, embeddings and ``lm_head`` included).
        outside: tensors outside ``modules`` get ``W_ref`` or the whole update (``"task"``).
        at: where the model stands; ``"auto"`` recognises it.
        baselines: add ``method="none"`` rows for ``W_ref`` (``mode="reference"``) and the
            un-projected ``W_ref + α Δ_T`` (``mode="full"``).
        over_rank, dtype: as for :func:`~deltalens.interventions.bases.top_k`.
        check: reject a subspace delta from another model family.
        progress: show a tqdm progress bar.

    Returns:
        A tidy DataFrame, one row per configuration: ``method, mode, frac, alpha, k_total,
        energy_kept, energy_kept_no_embed, edit_s, eval_s`` and the keys ``evaluate`` returned.
        ``energy_kept`` is over the projected tensors, ``energy_kept_no_embed`` over those that are
        not embeddings / ``lm_head`` (the prototype found the two can rank updates differently).

    Raises:
        ValueError: a fraction outside (0, 1], an unknown method or mode, or a basis / model that
            does not fit — all before any weight changes.

    Example:
        >>> df = subspace_sweep(aligned, d_harm, d_align, fracs=(0.25, 0.5), evaluate=lambda m: {"nll": nll(m)})
    """
    import pandas as pd
    from tqdm.auto import tqdm

    bad = [m for m in methods if m not in SWEEP_METHODS]
    if bad or not methods:
        raise ValueError(f"unknown sweep methods {bad or methods}; expected a subset of {SWEEP_METHODS}")
    badm = [m for m in modes if m not in MODES]
    if badm or not modes:
        raise ValueError(f"unknown modes {badm or modes}; expected a subset of {MODES}")
    if outside not in ("reference", "task"):
        raise ValueError(f"outside must be 'reference' or 'task', got {outside!r}")
    fracs = [float(f) for f in fracs]
    bases = {
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
    }  # validates every frac and k before anything else
    all_names = list(task_delta)
    names = select_names(all_names, modules, task_delta.shapes)
    if check:
        check_basis(next(iter(bases.values())), task_delta, names)
    live = live_params(reference) if evaluate is not None else {}
    chosen = set(names)
    order = sorted(set(fracs))
    n_points = len(methods) * len(order) * len(modes) + (2 if baselines else 0)
    rows: list[dict[str, Any]] = []
    originals: dict[str, Tensor] = {}
    claim_key = claim(live, "subspace_sweep") if evaluate is not None else None
    bar = tqdm(total=n_points, desc="subspace sweep", unit="point", disable=not progress)
    try:
        if evaluate is not None:
            check_live(live, task_delta, all_names)
            where = locate(live, task_delta, all_names, at)
        states: dict[str, _Tensor] = {}
        with torch.no_grad():
            for n in all_names:
                if evaluate is None:
                    if n in chosen:
                        states[n] = _Tensor(n, task_delta, torch.zeros(0), alpha, need_full=False)
                    continue
                originals[n] = live[n].detach().clone()
                w_ref = reference_weight(originals[n], task_delta, n, where)
                if n in chosen:
                    states[n] = _Tensor(n, task_delta, w_ref, alpha, need_full="orth" in modes or baselines)
                else:  # fixed for the whole sweep
                    w = w_ref if outside == "reference" else w_ref + alpha * task_delta[n]
                    live[n].copy_(w)
        sel = [states[n] for n in names]
        no_emb = [states[n] for n in names if not is_embedding(n)]

        def run(label: dict[str, Any], write: Callable[[], None] | None, ek: tuple[float, float]) -> None:
            t0 = time.perf_counter()
            metrics: dict[str, Any] = {}
            t1 = t0
            if evaluate is not None:
                with torch.no_grad():
                    if write is not None:
                        write()
                t1 = time.perf_counter()
                metrics = _metrics(evaluate(reference))
            t2 = time.perf_counter()
            grow = label.pop("_grow_s", 0.0)
            rows.append(
                {
                    **label,
                    "energy_kept": ek[0],
                    "energy_kept_no_embed": ek[1],
                    "edit_s": grow + t1 - t0,
                    "eval_s": t2 - t1,
                    **metrics,
                }
            )
            bar.update(1)

        if baselines:
            k0 = {"method": "none", "frac": float("nan"), "alpha": alpha, "k_total": 0}
            for mode, ek in (("reference", 0.0), ("full", 1.0)):

                def write_base(mode: str = mode) -> None:
                    for s in sel:
                        if s.e is not None:
                            s.reset()
                            s.write(live[s.name], "parallel" if mode == "reference" else "orth")

                run({**k0, "mode": mode}, write_base, (ek, ek))
        two_d = [n for n in names if len(task_delta.shapes[n]) == 2]
        # uᵀΔ per (tensor, vector set), computed once: TopK and RandomK share their vectors
        coeffs: dict[tuple[str, int], Tensor | None] = {}
        for method in methods:
            for s in sel:
                s.reset()
            parts = {n: bases[(method, order[0])].ordered_parts(n) for n in names}
            wanted = {(n, id(u)) for n, (u, _) in parts.items()}
            coeffs = {key: c for key, c in coeffs.items() if key in wanted}
            for frac in order:
                basis = bases[(method, frac)]
                t0 = time.perf_counter()
                for s in sel:
                    u, perm = parts[s.name]
                    key = (s.name, id(u))
                    if key not in coeffs:
                        coeffs[key] = s.coefficients(u)
                    s.grow(u, perm, coeffs[key], basis.k(s.name))
                grow_s = time.perf_counter() - t0
                k_total = sum(basis.k(n) for n in two_d)
                for mode in modes:

                    def write(mode: str = mode) -> None:
                        for s in sel:
                            s.write(live[s.name], mode)

                    ek = (_energy(sel, mode), _energy(no_emb, mode))
                    label = {
                        "method": method,
                        "mode": mode,
                        "frac": frac,
                        "alpha": alpha,
                        "k_total": k_total,
                        "_grow_s": grow_s,
                    }
                    grow_s = 0.0
                    run(label, write, ek)
    finally:
        bar.close()
        with torch.no_grad():
            for n, orig in originals.items():
                live[n].copy_(orig)
        if claim_key is not None:
            release(claim_key)
    df = pd.DataFrame(rows)
    rank = {f: i for i, f in enumerate(fracs)}
    df["_o"] = [(-1 if m == "none" else rank[f]) for m, f in zip(df["method"], df["frac"])]
    df["_m"] = [(-1 if m == "none" else list(methods).index(m)) for m in df["method"]]
    df = df.sort_values(["_m", "_o"], kind="stable").drop(columns=["_o", "_m"]).reset_index(drop=True)
    df.attrs.update(
        task=task_delta.reference.to_dict(),
        subspace=subspace_delta.reference.to_dict(),
        seed=seed,
        modules=repr(modules),
        outside=outside,
    )
    return df
