"""Attribution patching (Nanda 2023): a first-order estimate of every activation patch at once.

Activation patching runs the model once per patched site. Attribution patching replaces each of
those runs by the linear term of a Taylor expansion around the clean run:

    metric(clean with act := act_corrupted) − metric(clean) ≈ (act_corrupted − act_clean) · ∂metric/∂act |clean

so that every head, neuron and residual position is scored from two forward passes (the clean one
with its backward pass, and the corrupted one) — see :func:`attribution_patching`.

Example:
    >>> metric = logit_diff_metric(tok(" I").input_ids[-1], tok(" Sure").input_ids[-1])
    >>> df = attribution_patching(model, harmful_prompts, harmless_prompts, metric, names=("heads",))
    >>> df.pivot_table(index="layer", columns="head", values="attribution", aggfunc="sum")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from deltalens.circuits.stages import by_stage

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from torch import Tensor

    from deltalens.hooks.inputs import Inputs
    from deltalens.hooks.model import HookedModel

GROUPS: dict[str, str] = {
    "heads": "blocks.*.attn.hook_z",
    "resid": "blocks.*.hook_resid_pre",
    "neurons": "blocks.*.mlp.hook_post",
}
"""Shorthands for ``names``: per head (``attn.hook_z``), per residual position, per MLP neuron."""

_HEADED = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_rot_q", "hook_rot_k", "hook_result")
_PATTERN = ("hook_pattern", "hook_attn_scores")
_NEURON = ("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post")
POSITIONS: tuple[str, ...] = ("each", "sum")


def logit_diff_metric(
    good: int | Sequence[int], bad: int | Sequence[int], position: int = -1
) -> Callable[[Tensor], Tensor]:
    """A differentiable metric: mean over the batch of ``logit[good] − logit[bad]`` at ``position``.

    Maps logits ``[batch, pos, vocab]`` to a scalar tensor with the logits' graph.
    :func:`deltalens.interventions.patching.logit_diff_metric` (the tensor-valued twin of
    :func:`deltalens.interventions.logit_diff`, which returns a float). With left padding (what
    :func:`attribution_patching` uses) ``position=-1`` is each row's last real token. ``good`` /
    ``bad`` may be one id or one id per row.
    """
    from deltalens.interventions.patching import logit_diff_metric as tensor_logit_diff

    return tensor_logit_diff(good, bad, position)


def _names(model: HookedModel, names: str | Sequence[str]) -> list[str]:
    from deltalens.hooks.names import resolve_names

    pats = [names] if isinstance(names, str) else list(names)
    if not pats:
        raise ValueError(f"names=[]: give hook globs or groups among {sorted(GROUPS)}")
    return resolve_names([GROUPS.get(p, p) for p in pats], model.hook_names)


def _checked(metric: Callable[[Tensor], Any]) -> Callable[[Tensor], Tensor]:
    import torch

    def run(logits: Tensor) -> Tensor:
        value = metric(logits)
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"metric returned {type(value).__name__}; attribution patching differentiates it, so it must return "
                "a scalar tensor (e.g. circuits.attribution.logit_diff_metric(good, bad))"
            )
        return value

    return run


def _reduce(name: str, x: Tensor, each: bool) -> tuple[np.ndarray, str | None]:
    """``[n_pos (1 when summed), n_unit]`` scores of one hook and the unit (``head`` / ``neuron`` / None)."""
    unit: str | None = None
    if name.endswith(_PATTERN):  # [batch, head, q, k] -> [batch, q, head]
        x, unit = x.sum(-1).transpose(1, 2), "head"
    elif name.endswith(_HEADED) and x.ndim == 4:  # [batch, pos, head, d_head]
        x, unit = x.sum(-1), "head"
    elif name.endswith(_NEURON):  # [batch, pos, d_mlp]
        unit = "neuron"
    else:
        x = x.reshape(x.shape[0], x.shape[1], -1).sum(-1, keepdim=True)
    x = x.sum(0)
    if not each:
        x = x.sum(0, keepdim=True)
    return x.double().numpy(), unit


def _hook_frame(name: str, scores: np.ndarray, unit: str | None, each: bool) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    from deltalens.hooks.names import layer_of

    n_pos, n_unit = scores.shape
    pos = np.repeat(np.arange(n_pos) if each else np.array([-1]), n_unit)
    units = np.tile(np.arange(n_unit), n_pos)
    none = pd.array([None] * scores.size, dtype="Int64")
    return pd.DataFrame(
        {
            "name": name,
            "layer": pd.array([layer_of(name)] * scores.size, dtype="Int64"),
            "head": pd.array(units, dtype="Int64") if unit == "head" else none,
            "neuron": pd.array(units, dtype="Int64") if unit == "neuron" else none,
            "position": pos,
            "attribution": scores.reshape(-1),
        }
    )


def _attribute_one(
    model: HookedModel, clean: Inputs, corrupted: Inputs, metric: Callable, names: Any, opts: dict
) -> pd.DataFrame:
    import pandas as pd

    from deltalens.interventions.patching import paired_batches

    chosen = _names(model, names)
    c, t = paired_batches(
        model, clean, corrupted, "attribution patching", chat=opts["chat"], template=opts["template"]
    )
    acts, grads = model.gradients(
        c.input_ids, _checked(metric), chosen, attention_mask=c.attention_mask, return_activations=True
    )
    corr_logits, corr = model.run_with_cache(
        t.input_ids, names=chosen, attention_mask=t.attention_mask, return_logits=True
    )
    each = opts["positions"] == "each"
    frames = []
    for n in chosen:
        scores, unit = _reduce(n, (corr[n].to(acts[n].dtype) - acts[n]) * grads[n], each)
        frames.append(_hook_frame(n, scores, unit, each))
    df = pd.concat(frames, ignore_index=True)
    df.attrs.update(metric_clean=acts.meta["metric"], metric_corrupted=float(metric(corr_logits)))
    return df


def attribution_patching(
    models: Any,
    clean: Inputs,
    corrupted: Inputs,
    metric: Callable[[Tensor], Tensor],
    names: str | Sequence[str] = ("heads", "resid", "neurons"),
    positions: str = "each",
    chat: bool = False,
    template: str | None = None,
) -> pd.DataFrame:
    """Attribution patching: ``(act_corrupted − act_clean) · ∂metric/∂act``, the gradient on the clean run.

    Each score estimates ``metric(clean run with that activation patched from the corrupted run) −
    metric(clean)`` — the effect of *corrupting* one site (TransformerLens's "denoising" counterpart
    is the same formula with the roles of the two runs swapped: pass them the other way round).
    Cost: one forward and backward on ``clean``, one forward on ``corrupted``, whatever the number
    of sites. The scores are summed over the batch, so with a batch-mean metric they estimate the
    change of that mean when every row is patched.

    Args:
        models: a ``HookedModel``, or a list / dict of them (a ``stage`` column per model).
        clean, corrupted: prompts (tokenised with left padding, so position ``-1`` is each row's last
            real token) or ``[batch, pos]`` token ids; both must tokenise to the same shape.
        metric: ``metric(logits [batch, pos, vocab]) -> scalar tensor``, differentiable (e.g.
            :func:`logit_diff_metric`).
        names: groups ``"heads"`` (``attn.hook_z``, summed over ``d_head``), ``"resid"``
            (``hook_resid_pre``), ``"neurons"`` (``mlp.hook_post``), and/or hook names or globs. Other
            hooks are scored per head when they have a head axis (q / k / v / z / result, pattern and
            scores by query position), per neuron for MLP hooks, else per position.
        positions: ``"each"`` (one row per position) or ``"sum"`` (summed over positions; ``position``
            is then -1, as in :func:`~deltalens.interventions.patching_sweep`).
        chat, template: wrap text prompts as :meth:`HookedModel.tokenize` does.

    Returns:
        A frame ``name``, ``layer``, ``head`` (Int64, heads only), ``neuron`` (Int64, neurons only),
        ``position``, ``attribution`` (+ a leading ``stage`` with several models); ``attrs`` hold
        ``metric_clean`` and ``metric_corrupted``. Neurons × positions can be many rows on a large
        model: use ``positions="sum"`` or fewer names there.

    Raises:
        ValueError: unknown names or positions, inputs of different shapes.
        TypeError: a metric that does not return a tensor.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r}: expected 'each' (one row per position) or 'sum'")
    if not callable(metric):
        raise TypeError(f"metric={metric!r}: expected callable(logits) -> scalar tensor")
    opts = {"positions": positions, "chat": chat, "template": template}
    return by_stage(models, lambda m: _attribute_one(m, clean, corrupted, metric, names, opts))
