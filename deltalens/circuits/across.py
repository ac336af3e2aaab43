"""Patching across checkpoints: which heads of a fine-tune carry its behaviour change.

:func:`head_patching_across` runs the reference checkpoint (e.g. the aligned W_A) once per head,
with that head's output (``attn.hook_z``) replaced by the fine-tune's on the same prompts.

Example:
    >>> df = head_patching_across({"wa": wa, "harmful": ft}, "harmful", "wa", prompts, metric)
    >>> df.sort_values("fraction", ascending=False).head()
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deltalens.circuits.stages import as_models

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

    from deltalens.hooks.inputs import Inputs
    from deltalens.hooks.model import HookedModel


def _z_patch(src: Tensor, head: int) -> Callable[[Tensor], Tensor]:
    """A hook function writing head ``head`` of a source ``hook_z`` ``[batch, pos, head, d_head]``."""

    def fn(z: Tensor) -> Tensor:
        out = z.clone()
        out[:, :, head] = src[:, :, head].to(device=z.device, dtype=z.dtype)
        return out

    return fn


def _pick(ms: dict[str, HookedModel], source: str, target: str) -> tuple[HookedModel, HookedModel]:
    for arg, stage in (("source", source), ("target", target)):
        if stage not in ms:
            raise ValueError(f"{arg}={stage!r} is not one of the stages {sorted(ms)}")
    src, tgt = ms[source], ms[target]
    if (src.n_layers, src.n_heads, src.d_model) != (tgt.n_layers, tgt.n_heads, tgt.d_model):
        raise ValueError(
            f"stages {source!r} and {target!r} differ in shape (layers, heads, d_model): "
            f"{(src.n_layers, src.n_heads, src.d_model)} vs {(tgt.n_layers, tgt.n_heads, tgt.d_model)}"
        )
    return src, tgt


def head_patching_across(
    models: Any,
    source: str,
    target: str,
    inputs: Inputs,
    metric: Callable[[Tensor], float | Tensor],
    chat: bool = False,
    template: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch each head's ``attn.hook_z`` from the ``source`` checkpoint into ``target``, one at a time.

    Every position of every prompt is patched (the source's z on the same prompts), so a head with
    a large ``fraction`` carries much of the source's behaviour on its own. Costs one forward of
    ``source``, one of ``target`` and one per head.

    Args:
        models: a dict (or list) of ``HookedModel`` s, e.g. ``{"wa": wa, "harmful": ft}``.
        source: the stage whose heads are patched in (a fine-tune).
        target: the stage patched into (e.g. the aligned W_A).
        inputs: prompts (tokenised with left padding, so position -1 is each row's last real token)
            or ``[batch, pos]`` token ids.
        metric: ``metric(logits [batch, pos, vocab]) -> float`` (or a scalar tensor), e.g.
            :func:`deltalens.interventions.logit_diff`.
        chat, template: wrap text prompts as :meth:`HookedModel.tokenize` does.
        progress: a tqdm bar over the heads.

    Returns:
        A frame ``layer``, ``head``, ``effect`` (``metric(patched) − metric(target)``), ``fraction``
        (``effect / (metric(source) − metric(target))``, NaN when the two are equal); ``attrs`` hold
        ``metric_source`` and ``metric_target``.

    Raises:
        ValueError: an unknown stage, or stages of different shapes.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not callable(metric):
        raise TypeError(f"metric={metric!r}: expected callable(logits) -> float")
    src, tgt = _pick(as_models(models), source, target)
    batch = tgt.tokenize(inputs, padding_side="left", chat=chat, template=template)
    ids, mask = batch.input_ids, batch.attention_mask
    src_logits, cache = src.run_with_cache(
        ids, names="blocks.*.attn.hook_z", attention_mask=mask, return_logits=True
    )
    m_src, m_tgt = float(metric(src_logits)), float(metric(tgt.logits(ids, attention_mask=mask)))
    span = m_src - m_tgt
    rows = []
    grid = list(itertools.product(range(tgt.n_layers), range(tgt.n_heads)))
    for layer, head in tqdm(grid, desc="heads", unit="run", disable=not progress):
        name = f"blocks.{layer}.attn.hook_z"
        with tgt.hooks({name: _z_patch(cache[name], head)}):
            m = float(metric(tgt.logits(ids, attention_mask=mask)))
        effect = m - m_tgt
        rows.append((layer, head, effect, effect / span if span != 0 else float("nan")))
    df = pd.DataFrame(rows, columns=["layer", "head", "effect", "fraction"])
    df.attrs.update(metric_source=m_src, metric_target=m_tgt)
    return df
