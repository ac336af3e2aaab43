"""Project a task update onto (or away from) a subspace and put it on a live model, reversibly.

Per tensor, with ``L`` the basis of the subspace (orthonormal columns in output space) and Δ_T
the task update taken from the reference weights ``W_ref`` (the ``a`` side of ``task_delta``)::

    parallel:  W = W_ref + α · L Lᵀ Δ_T
    orth:      W = W_ref + α · (Δ_T − L Lᵀ Δ_T)

The edit is written in place into the model's live parameters (``model.named_weights()``, under
``torch.no_grad``, ``copy_``), so both backends and ``generate`` see it, and the exact original
tensors are written back on exit — also on exceptions. ``W_ref`` is found on the live model: if the
model holds the delta's reference weights they are used as they are; if it holds the target
weights, ``W_ref = W − Δ_T``. A low-rank (LoRA) task update projects as ``L (Lᵀ B) A`` without
forming ``B A`` first.

Example:
    >>> d_task = dl.weight_delta(aligned, harmful)
    >>> L = top_k(dl.weight_delta(base, aligned), frac=0.25)
    >>> with project(aligned, d_task, L, mode="parallel"):
    ...     out = aligned.generate(prompts)
    >>> energy_kept(d_task, L, "parallel", modules=ModuleFilter(embeddings=False, unembedding=False))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from deltalens.hooks.weights import WeightEdit
from deltalens.interventions.bases import Basis
from deltalens.interventions.checks import At, check_basis, check_live, live_params, locate
from deltalens.interventions.delta import LowRank, WeightDelta
from deltalens.interventions.energies import MODES, Mode
from deltalens.interventions.modules import ModulesArg, select_names

if TYPE_CHECKING:
    from deltalens.hooks.model import HookedModel

Outside = Literal["reference", "task"]


# ---------------------------------------------------------------------------- the math
def projected(e: Tensor | LowRank | None, L: Tensor, mode: Mode) -> Tensor | LowRank | None:
    """``L Lᵀ e`` (parallel) or ``e − L Lᵀ e`` (orth) for one oriented update (None = zero)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if e is None:
        return None
    if L.shape[1] == 0:
        return e if mode == "orth" else None
    if isinstance(e, LowRank):
        Lb = L.to(e.B.dtype)
        pb = Lb @ (Lb.T @ e.B)
        return LowRank(pb if mode == "parallel" else e.B - pb, e.A)
    Le = L.to(e.dtype)
    p = Le @ (Le.T @ e) if e.ndim == 2 else Le[:, 0] * (Le[:, 0] @ e)
    return p if mode == "parallel" else e - p


# ---------------------------------------------------------------------------- the edit
class ProjectionHandle(WeightEdit):
    """A weight edit in force on a model; :meth:`restore` writes the original tensors back.

    Also a context manager (``with apply_projection(...) as h:``).

    Attributes:
        label: the registry label (shown by ``model.active_edits()["weights"]``).
        energy_kept: E_k of the projected tensors (NaN if Δ_T is zero there).
        names: the canonical names of the edited tensors (kept after :meth:`restore`).
    """

    def __init__(self, live: dict[str, Tensor], label: str) -> None:
        super().__init__(live, label)
        self.energy_kept = float("nan")
        self.names: list[str] = []

    def __repr__(self) -> str:
        return (
            f"ProjectionHandle({self.label}, {len(self.names)} tensors edited, E_k={self.energy_kept:.4f}, "
            f"{'active' if self.active else 'restored'})"
        )


def reference_weight(orig: Tensor, delta: WeightDelta, name: str, where: str) -> Tensor:
    """``W_ref`` (fp32, stored layout) from a live tensor that holds the reference or the target."""
    w = orig.detach().float()
    return w if where == "reference" else w - delta[name].to(w.device)


def _sq(upd: Tensor | LowRank | None) -> float:
    if upd is None:
        return 0.0
    if isinstance(upd, LowRank):
        return upd.sq_norm()
    return float(torch.linalg.vector_norm(upd, dtype=torch.float64) ** 2)


def _to_stored(upd: Tensor | LowRank, name: str, delta: WeightDelta) -> Tensor:
    d = upd.dense() if isinstance(upd, LowRank) else upd
    return d.T if name in delta.transposed else d


@dataclass(frozen=True)
class _Edit:
    """What one projection writes: Δ_T, the basis vectors of the projected tensors, and the rule."""

    delta: WeightDelta
    vecs: dict[str, Tensor]
    where: str
    mode: Mode
    alpha: float
    outside: Outside


def check_outside(outside: str) -> None:
    """Raise ValueError unless ``outside`` is ``"reference"`` or ``"task"``."""
    if outside not in ("reference", "task"):
        raise ValueError(f"outside must be 'reference' or 'task', got {outside!r}")


def _checked_vectors(
    live: dict[str, Tensor], task_delta: WeightDelta, basis: Basis, names: list[str], at: At, check: bool
) -> tuple[str, dict[str, Tensor]]:
    """Check model, delta and basis, then resolve every basis (each SVD) before a weight changes.

    Returns ``(where, vectors)``.
    """
    all_names = list(task_delta)
    check_live(live, task_delta, all_names)
    if check:
        check_basis(basis, task_delta, names)
    where = locate(live, task_delta, all_names, at)
    return where, {n: basis.vectors(n) for n in names}


def _edited(all_names: list[str], chosen: set[str], where: str, outside: Outside, alpha: float) -> list[str]:
    """The tensors to write: the projected ones, and the others unless they already hold what they should."""
    settled = (where == "reference" and outside == "reference") or (
        where == "target" and outside == "task" and alpha == 1.0
    )
    return [n for n in all_names if n in chosen or not settled]


def _new_value(orig: Tensor, name: str, edit: _Edit) -> tuple[Tensor, float, float]:
    """``W_ref + α·P(Δ_T)`` (projected tensors), ``W_ref`` or ``W_ref + α Δ_T`` (the others), from the original.

    Returns:
        ``(new value, ‖P Δ_T‖²_F, ‖Δ_T‖²_F)``; the norms are ``(0.0, 0.0)`` for a tensor not projected.
    """
    w = reference_weight(orig, edit.delta, name, edit.where)
    upd: Tensor | LowRank | None = None
    kept = total = 0.0
    if name in edit.vecs:
        upd = projected(edit.delta.oriented(name), edit.vecs[name], edit.mode)
        kept, total = _sq(upd), edit.delta.sq_norm(name)
    elif edit.outside == "task":
        upd = edit.delta.oriented(name)
    if upd is not None:
        w = w.add(_to_stored(upd, name, edit.delta).to(w.device), alpha=edit.alpha)
    return w, kept, total


def _write_all(handle: WeightEdit, live: dict[str, Tensor], names: list[str], edit: _Edit) -> float:
    """Write each tensor's edit through ``handle`` (which keeps its original); returns E_k (NaN if ΔT is 0)."""
    kept = total = 0.0
    with torch.no_grad():
        for n in names:
            w, k, t = _new_value(handle.save(n, live[n]), n, edit)
            handle.write(n, live[n], w)
            kept, total = kept + k, total + t
    return kept / total if total else float("nan")


def apply_projection(
    model: HookedModel | torch.nn.Module,
    task_delta: WeightDelta,
    basis: Basis,
    mode: Mode = "parallel",
    alpha: float = 1.0,
    modules: ModulesArg = None,
    *,
    outside: Outside = "reference",
    at: At = "auto",
    check: bool = True,
) -> ProjectionHandle:
    """Set ``W = W_ref + α·P(Δ_T)`` on the live model and return a handle to undo it.

    Args:
        model: a ``HookedModel`` or a Hugging Face model holding Δ_T's reference or target weights.
        task_delta: Δ_T (its ``a`` side is ``W_ref``).
        basis: the subspace, e.g. ``top_k(alignment_delta, frac=0.25)``.
        mode: ``"parallel"`` (keep ``L Lᵀ Δ_T``) or ``"orth"`` (keep ``Δ_T − L Lᵀ Δ_T``).
        alpha: scale of the kept update.
        modules: which tensors are projected (see :func:`~deltalens.interventions.modules.select_names`);
            default every tensor of the delta, embeddings and ``lm_head`` included, as in the paper.
        outside: tensors outside ``modules`` get ``W_ref`` (``"reference"``) or ``W_ref + α Δ_T`` (``"task"``).
        at: where the model stands (``"auto"`` recognises it from the delta's fingerprints).
        check: reject a basis from another model family.

    Returns:
        A :class:`ProjectionHandle` (``.restore()``; ``.energy_kept``).

    Raises:
        ValueError: bad mode, a basis or model that does not fit the delta — before any weight changes.
        RuntimeError: another weight edit is still in force on the model.

    Example:
        >>> h = apply_projection(model, d_task, top_k(d_align, frac=0.5), mode="orth")
        >>> model.generate(["hello"]); h.restore()
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_outside(outside)
    all_names = list(task_delta)
    names = select_names(all_names, modules, task_delta.shapes)
    live = live_params(model)
    label = f"{basis.describe()} {mode} α={alpha}"
    handle = ProjectionHandle(live, label)
    try:
        where, vecs = _checked_vectors(live, task_delta, basis, names, at, check)
        edit = _Edit(task_delta, vecs, where, mode, alpha, outside)
        energy = _write_all(handle, live, _edited(all_names, set(names), where, outside, alpha), edit)
    except BaseException:
        handle.restore()
        raise
    handle.energy_kept = energy
    handle.names = handle.edited
    return handle


@contextlib.contextmanager
def project(
    model: HookedModel | torch.nn.Module,
    task_delta: WeightDelta,
    basis: Basis,
    mode: Mode = "parallel",
    alpha: float = 1.0,
    modules: ModulesArg = None,
    *,
    outside: Outside = "reference",
    at: At = "auto",
    check: bool = True,
) -> Iterator[ProjectionHandle]:
    """Context manager form of :func:`apply_projection`; the original weights come back in ``finally``.

    Example:
        >>> with project(aligned, d_harmful, top_k(d_align, frac=0.25), mode="parallel") as h:
        ...     print(h.energy_kept, aligned.generate(["how do I ..."]))

    Gotcha: the model must hold the delta's reference or target weights; nested projections on
    the same model are refused (restore the outer one first).
    """
    handle = apply_projection(
        model, task_delta, basis, mode, alpha, modules, outside=outside, at=at, check=check
    )
    try:
        yield handle
    finally:
        handle.restore()
