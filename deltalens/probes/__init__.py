"""Activation collection, linear probes, directions and subspace overlap metrics.

Shapes: activations are ``[n_prompts, d]`` per hook (``[n_prompts, layer, d]`` stacked), rows are
prompts; weights and ΔW are HF ``[out, in]`` and their subspace is the left singular space.

Example:
    >>> import deltalens as dl
    >>> from deltalens import probes
    >>> acts = probes.collect(model, ps, "blocks.*.hook_resid_post", out="runs/acts")
    >>> res = probes.probe_layers(acts)                       # labels / groups from the PromptSet
    >>> df = probes.activation_overlap({"aligned": wa, "useful": wu}, {"useful": u, "harmful": h})
    >>> probes.weight_overlap_pairs({"alignment": dA, "useful": dU, "harmful": dH})

scikit-learn and pandas are imported on first use.
"""

from deltalens.probes.activation import DEFAULT_ACTIVATION_ETAS, activation_overlap, overlap_from_activations
from deltalens.probes.collect import NonFiniteActivationError, ShardInfo, collect
from deltalens.probes.collected import Collected
from deltalens.probes.compare import CheckpointComparison, compare_checkpoints
from deltalens.probes.linear import ProbeConfig, ProbeResult, group_splits, probe_direction, probe_layers
from deltalens.probes.overlap import (
    MSOResult,
    cosine,
    diff_of_means,
    energy_rank,
    left_basis,
    left_svd,
    linear_cka,
    mso,
    mso_at,
    mso_from_bases,
    principal_angles,
)
from deltalens.probes.weights import (
    DEFAULT_WEIGHT_ETAS,
    WeightOverlap,
    weight_overlap,
    weight_overlap_pairs,
)

__all__ = [
    "DEFAULT_ACTIVATION_ETAS",
    "DEFAULT_WEIGHT_ETAS",
    "CheckpointComparison",
    "Collected",
    "MSOResult",
    "NonFiniteActivationError",
    "ProbeConfig",
    "ProbeResult",
    "ShardInfo",
    "WeightOverlap",
    "activation_overlap",
    "collect",
    "compare_checkpoints",
    "cosine",
    "diff_of_means",
    "energy_rank",
    "group_splits",
    "left_basis",
    "left_svd",
    "linear_cka",
    "mso",
    "mso_at",
    "mso_from_bases",
    "overlap_from_activations",
    "principal_angles",
    "probe_direction",
    "probe_layers",
    "weight_overlap",
    "weight_overlap_pairs",
]
