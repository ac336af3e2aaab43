"""Checks that a model, a delta and a basis fit together, and bookkeeping of live weight edits.

* :func:`check_basis`: a basis must come from the same architecture and the same model family as
  the task delta (the two deltas share an endpoint, e.g. Δ_A = W_A − W_0 and Δ_T = W_T − W_A).
* :func:`locate`: does a live model hold the delta's reference or its target weights?
* :func:`claim` / :func:`release`: at most one weight edit in force per model.

Endpoints are recognised from a few sampled weight values per tensor
(:attr:`~deltalens.interventions.delta.DeltaReference.samples_a`), so no full copy of any model is kept.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from deltalens.hooks.model import HookedModel
from deltalens.hooks.weights import claim_weights, live_weights, release_weights
from deltalens.interventions.bases import Basis
from deltalens.interventions.delta import DeltaReference, WeightDelta, sample_index

At = Literal["auto", "reference", "target"]


def check_basis(basis: Basis, task_delta: WeightDelta, names: list[str]) -> None:
    """Reject a basis whose shapes or model family do not fit ``task_delta``.

    The basis's delta and the task delta must share an endpoint (e.g. Δ_A = W_A − W_0 and
    Δ_T = W_T − W_A share W_A), judged from sampled weight values.

    Raises:
        ValueError: a missing tensor, a shape mismatch, or no shared endpoint.
    """
    if not isinstance(basis, Basis):
        raise TypeError(
            f"basis must be a Basis (from top_k, energy, random_k, random_like), got {type(basis).__name__}"
        )
    for n in names:
        if n not in basis:
            raise ValueError(
                f"the basis has no tensor {n!r}: it was built from a delta of another architecture"
            )
        if basis.shapes[n] != task_delta.oriented_shape(n):
            raise ValueError(
                f"basis tensor {n!r} has shape {basis.shapes[n]} but the task delta's is "
                f"{task_delta.oriented_shape(n)}: the basis comes from another model"
            )
    if not shares_endpoint(basis.source, task_delta.reference, names):
        raise ValueError(
            f"the basis was built from a delta of another model: its endpoints ({basis.source.a!r}, "
            f"{basis.source.b!r}) share no weights with the task delta's ({task_delta.reference.a!r}, "
            f"{task_delta.reference.b!r}). Expected e.g. Δ_A = W_A − W_0 with Δ_T = W_T − W_A; pass check=False "
            "to project anyway"
        )


def _d2(x: dict[str, Tensor], y: dict[str, Tensor], names: list[str]) -> float:
    return sum(float(((x[n].double() - y[n].double()) ** 2).sum()) for n in names if n in x and n in y)


def shares_endpoint(r1: DeltaReference, r2: DeltaReference, names: list[str]) -> bool:
    """True if two deltas share an endpoint (or if either lacks samples to tell)."""
    ends1 = [s for s in (r1.samples_a, r1.samples_b) if s is not None]
    ends2 = [s for s in (r2.samples_a, r2.samples_b) if s is not None]
    if len(ends1) < 2 or len(ends2) < 2:
        return True
    gap = min(_d2(*ends1, names), _d2(*ends2, names))
    scale = _d2(ends1[0], {n: torch.zeros_like(t) for n, t in ends1[0].items()}, names)
    tol = max(0.25 * gap, 1e-12 * scale)
    return any(_d2(x, y, names) <= tol for x in ends1 for y in ends2)


def live_params(model: HookedModel | torch.nn.Module) -> dict[str, Tensor]:
    """The live parameters of a ``HookedModel`` or a Hugging Face module, keyed by canonical names."""
    if isinstance(model, HookedModel):
        return model.named_weights()
    if isinstance(model, torch.nn.Module):
        return live_weights(model)
    raise TypeError(f"expected a HookedModel or a Hugging Face model, got {type(model).__name__}")


def check_live(live: dict[str, Tensor], delta: WeightDelta, names: list[str]) -> None:
    """The model holds every tensor of ``names`` with the delta's shape."""
    missing = [n for n in names if n not in live]
    if missing:
        raise ValueError(
            f"{len(missing)} tensors of the delta are not parameters of this model (first {missing[:3]}); "
            "expected a model of the delta's architecture"
        )
    bad = [n for n in names if tuple(live[n].shape) != delta.shapes[n]]
    if bad:
        n = bad[0]
        raise ValueError(f"{n!r} is {tuple(live[n].shape)} on the model but {delta.shapes[n]} in the delta")


def locate(
    live: dict[str, Tensor], delta: WeightDelta, names: list[str], at: At = "auto"
) -> Literal["reference", "target"]:
    """Whether the live model holds the delta's reference (``a``) or target (``b``) weights."""
    if at in ("reference", "target"):
        return at
    if at != "auto":
        raise ValueError(f"at must be 'auto', 'reference' or 'target', got {at!r}")
    ref = delta.reference
    if ref.samples_a is None or ref.samples_b is None:
        raise ValueError("this delta has no endpoint fingerprints; pass at='reference' or at='target'")
    names = [n for n in names if n in ref.samples_a]
    cur = {
        n: live[n].detach().reshape(-1)[sample_index(delta.shapes[n]).to(live[n].device)].float().cpu()
        for n in names
    }
    da, db, dab = (
        _d2(cur, ref.samples_a, names),
        _d2(cur, ref.samples_b, names),
        _d2(ref.samples_a, ref.samples_b, names),
    )
    scale = _d2(ref.samples_a, {n: torch.zeros(1) for n in names}, names)
    if dab == 0.0:
        if da <= 1e-10 * scale:
            return "reference"
    elif min(da, db) <= 0.1 * dab:
        return "reference" if da <= db else "target"
    raise ValueError(
        f"the model's weights match neither endpoint of the delta (squared sample distance to the reference "
        f"{ref.a!r}: {da:.3g}, to the target {ref.b!r}: {db:.3g}, between them: {dab:.3g}). Expected the model the "
        "delta was computed from (restore any active edit first), or pass at='reference' / at='target'"
    )


def claim(live: dict[str, Tensor], label: str) -> int:
    """Mark a model as being edited; refuse if another weight edit is already in force on it."""
    return claim_weights(live, label)


def release(key: int) -> None:
    """End the weight edit registered under ``key``."""
    release_weights(key)
