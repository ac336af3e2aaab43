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


def by_stage(models: Any, fn: Callable[[HookedModel], pd.DataFrame]) -> pd.DataFrame:
    """``fn`` on each model; with several models the frames are joined with a leading ``stage`` column.

    One model gives ``fn``'s frame unchanged (no ``stage`` column), as TransformerLens users expect.
    """
    import pandas as pd

    single = not isinstance(models, Mapping | Sequence) or isinstance(models, str)
    ms = as_models(models)
    if single:
        return fn(next(iter(ms.values())))
    frames = []
    for stage, m in ms.items():
        df = fn(m)
        df.insert(0, STAGE, stage)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
