"""One model or several: every circuits entry point accepts a model, a list or a dict of models."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.hooks.model import HookedModel

STAGE = "stage"


def as_models(models: Any) -> dict[str, HookedModel]:
    """``{stage: model}`` from one model, a list (stages named by checkpoint / adapter folder) or a dict.

    Raises:
        TypeError: ``models`` is none of those, or holds something that is not a ``HookedModel``.
    """
    from deltalens.hooks.model import HookedModel

    if isinstance(models, HookedModel):
        out = {_label(models, 0): models}
    elif isinstance(models, Mapping):
        out = {str(k): v for k, v in models.items()}
    elif isinstance(models, Sequence) and not isinstance(models, str):
        out = {}
        for i, m in enumerate(models):
            name = _label(m, i) if isinstance(m, HookedModel) else str(i)
            out[name if name not in out else f"{name}#{i}"] = m
    else:
        raise TypeError(
            f"models={type(models).__name__}: expected a HookedModel, a list of them or a dict stage -> HookedModel"
        )
    if not out:
        raise ValueError("models is empty: give at least one HookedModel")
    for k, m in out.items():
        if not isinstance(m, HookedModel):
            raise TypeError(f"models[{k!r}] is a {type(m).__name__}, not a HookedModel (load it with dl.load)")
    return out


def _label(model: HookedModel, i: int) -> str:
    from pathlib import PurePath

    p = model.provenance
    source = p.adapter or p.checkpoint or p.base
    return PurePath(str(source)).name or f"model{i}" if source else f"model{i}"


def is_single(models: Any) -> bool:
    """True if ``models`` is one model rather than a list or dict of them (a string counts as one).

    Entry points give one model's table without a ``stage`` column and several models' tables
    joined with one (:func:`join_stages`).
    """
    return not isinstance(models, Mapping | Sequence) or isinstance(models, str)


def join_stages(models: Any, frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One table from per-stage ``frames`` (``{stage: frame}``, as :func:`as_models` names the stages).

    For one model (:func:`is_single` of the ``models`` the caller was given) its frame unchanged;
    otherwise the frames joined, each with a leading ``stage`` column.
    """
    import pandas as pd

    if is_single(models):
        return next(iter(frames.values()))
    out = []
    for stage, df in frames.items():
        df.insert(0, STAGE, stage)
        out.append(df)
    return pd.concat(out, ignore_index=True)


def by_stage(models: Any, fn: Callable[[HookedModel], pd.DataFrame]) -> pd.DataFrame:
    """``fn`` on each model; with several models the frames are joined with a leading ``stage`` column.

    One model gives ``fn``'s frame unchanged (no ``stage`` column), as TransformerLens users expect.
    """
    return join_stages(models, {stage: fn(m) for stage, m in as_models(models).items()})
