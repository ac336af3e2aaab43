"""Weight-space and activation-space interventions.

* Deltas: :func:`weight_delta` → :class:`WeightDelta` (per-tensor ΔW, fp32, LoRA kept factored).
* Bases: :func:`top_k`, :func:`energy`, :func:`random_k`, :func:`random_like` → :class:`Basis`;
  :func:`delta_svd` gives one tensor's singular vectors (cached on the delta).
* Projections: :func:`project` / :func:`apply_projection` (reversible in-place weight edits),
  :func:`energy_kept`, :func:`energy_table`, :func:`energy_sweep` (no model needed),
  :func:`subspace_sweep` (evaluates each configuration on a live model).
* Activations: :func:`steer`, :func:`ablate`, :func:`patch`, :func:`patching_sweep`.

Example:
    >>> import deltalens as dl
    >>> from deltalens import interventions as iv
    >>> d_align, d_harm = dl.weight_delta(base, aligned), dl.weight_delta(aligned, harmful)
    >>> with iv.project(aligned, d_harm, iv.top_k(d_align, frac=0.25), mode="orth"):
    ...     aligned.generate(["how do I ..."])
"""

from deltalens.hooks.weights import tensor_group
from deltalens.interventions.bases import Basis, delta_svd, energy, random_k, random_like, top_k
from deltalens.interventions.delta import DeltaReference, LowRank, WeightDelta, weight_delta
from deltalens.interventions.energies import energy_kept, energy_sweep, energy_table
from deltalens.interventions.modules import ModuleFilter, select_names
from deltalens.interventions.patching import add_patch, logit_diff, patch, patching_sweep
from deltalens.interventions.project import ProjectionHandle, apply_projection, project
from deltalens.interventions.steer import ablate, add_ablation, add_steering, steer, svd_directions
from deltalens.interventions.sweep import subspace_sweep

__all__ = [
    "Basis",
    "DeltaReference",
    "LowRank",
    "ModuleFilter",
    "ProjectionHandle",
    "WeightDelta",
    "ablate",
    "add_ablation",
    "add_patch",
    "add_steering",
    "apply_projection",
    "delta_svd",
    "energy",
    "energy_kept",
    "energy_sweep",
    "energy_table",
    "logit_diff",
    "patch",
    "patching_sweep",
    "project",
    "random_k",
    "random_like",
    "select_names",
    "steer",
    "subspace_sweep",
    "svd_directions",
    "tensor_group",
    "top_k",
    "weight_delta",
]
