"""Activation-space overlap between prompt sets (the paper's Exp 4), for several checkpoints.

For each checkpoint, each prompt set is reduced to last-token activations ``[n, D]`` per layer; each
set's energy-threshold subspace of ``R^D`` is compared with every other set's by MSO, per layer and
averaged over the layer slice, uncentred (as the paper) and centred, next to the random baseline
``max(k_a, k_b) / D``.

Example:
    >>> from deltalens.probes import activation_overlap
    >>> df = activation_overlap({"aligned": wa, "useful_ft": wu},
    ...                         sets={"useful": math_qs, "harmful_1": harm_a, "harmful_2": harm_b})
    >>> mean = df[df.scope == "slice_mean"]
    >>> mean.pivot_table(index=["model", "set_a", "set_b"], columns="eta", values="mso")
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from deltalens.hooks.names import parse_layers
from deltalens.probes.overlap import left_svd, mso_at
from deltalens.schemas import ACTIVATION_OVERLAP

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.data import PromptSet
    from deltalens.hooks.model import HookedModel

DEFAULT_ACTIVATION_ETAS: tuple[float, ...] = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
"""The paper's η sweep for activation MSO (Exp 4)."""


def _centered_flags(centered: bool | Sequence[bool]) -> list[bool]:
    flags = [centered] if isinstance(centered, bool) else list(centered)
    if not flags or not all(isinstance(c, bool) for c in flags):
        raise ValueError(f"centered={centered!r}; expected True, False or a tuple such as (False, True)")
    return flags


def _layered(acts: Mapping[str, Float[Tensor, "n layer d"]]) -> dict[str, Float[Tensor, "n layer d"]]:
    """Each set as a finite ``[n >= 2, layer, d]`` tensor (``[n, d]`` gains a layer axis), all one shape."""
    if len(acts) < 2:
        raise ValueError(f"need at least two activation sets to compare; got {list(acts)}")
    data = {}
    for k, x in acts.items():
        x = torch.as_tensor(x)
        x = x[:, None] if x.ndim == 2 else x
        if x.ndim != 3 or x.shape[0] < 2:
            raise ValueError(f"set {k!r} has shape {tuple(x.shape)}; expected [n >= 2, layer, d]")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"set {k!r} holds non-finite activations")
        data[k] = x
    shapes = {k: tuple(x.shape[1:]) for k, x in data.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"sets differ in [layer, d]: {shapes}; expected the same layers and width")
    return data


def _layer_ids(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    layer_ids = list(range(n_layers)) if layers is None else list(layers)
    if len(layer_ids) != n_layers:
        raise ValueError(f"{len(layer_ids)} layer ids for {n_layers} layers of activations")
    return layer_ids


def _layer_rows(
    data: Mapping[str, Tensor], li: int, layer: int, c: bool, etas: list[float], model: str
) -> list[dict[str, Any]]:
    """``scope == "layer"`` rows of layer column ``li`` (block ``layer``) for every pair of sets."""
    svd = {k: left_svd(x[:, li], centered=c, layout="activation") for k, x in data.items()}
    rows = []
    for a, b in itertools.combinations(data, 2):
        (Ua, Sa), (Ub, Sb) = svd[a], svd[b]
        for eta in etas:
            r = mso_at(Ua, Sa, Ub, Sb, eta)
            rows.append(
                dict(
                    model=model,
                    set_a=a,
                    set_b=b,
                    scope="layer",
                    layer=layer,
                    eta=eta,
                    centered=c,
                    n_a=data[a].shape[0],
                    n_b=data[b].shape[0],
                    k_a=r.k_a,
                    k_b=r.k_b,
                    d=r.d,
                    mso=r.mso,
                    baseline=r.baseline,
                )
            )
    return rows


def _with_slice_mean(df: pd.DataFrame) -> pd.DataFrame:
    """The per-layer rows plus their ``slice_mean`` rows and ``ratio``: an ACTIVATION_OVERLAP table."""
    import pandas as pd

    keys = ["model", "set_a", "set_b", "eta", "centered", "n_a", "n_b", "d"]
    mean = (
        df.groupby(keys, sort=False)
        .agg(k_a=("k_a", "mean"), k_b=("k_b", "mean"), mso=("mso", "mean"), baseline=("baseline", "mean"))
        .reset_index()
    )
    mean["scope"], mean["layer"] = "slice_mean", None
    out = pd.concat([df, mean], ignore_index=True)
    out["ratio"] = out["mso"] / out["baseline"]
    out["layer"] = out["layer"].astype("Int64")
    return ACTIVATION_OVERLAP.frame(out[list(ACTIVATION_OVERLAP.names)])


def overlap_from_activations(
    acts: Mapping[str, Float[Tensor, "n layer d"]],
    *,
    layers: Sequence[int] | None = None,
    etas: float | Sequence[float] = DEFAULT_ACTIVATION_ETAS,
    centered: bool | Sequence[bool] = (False, True),
    model: str = "model",
) -> pd.DataFrame:
    """MSO between every pair of activation sets, per layer and averaged over the layers.

    Args:
        acts: set name -> ``[n_set, layer, d]`` activations (rows are prompts); the same layers
            and ``d`` in every set. ``[n, d]`` is treated as one layer.
        layers: the block index of each layer column, for the table (default ``0..L-1``).
        etas: energy fractions for the subspace ranks.
        centered: False, True, or both (``(False, True)``).
        model: value of the ``model`` column.

    Returns:
        Tidy :data:`~deltalens.schemas.ACTIVATION_OVERLAP` table: ``model, set_a, set_b, scope,
        layer, eta, centered, n_a, n_b, k_a, k_b, d, mso, baseline, ratio``. ``scope == "layer"``
        rows are per layer; ``"slice_mean"`` rows (``layer`` <NA>) average ``mso``, ``baseline``,
        ``k_a`` and ``k_b`` over the layers, and ``ratio = mso / baseline``.

    Example:
        >>> overlap_from_activations({"useful": Xu, "harmful": Xh}, layers=[9, 10, 11], etas=(0.1, 0.5))
    """
    import pandas as pd

    from deltalens.probes.weights import _check_etas

    etas = _check_etas(etas)
    flags = _centered_flags(centered)
    data = _layered(acts)
    layer_ids = _layer_ids(layers, next(iter(data.values())).shape[1])
    rows = []
    for li, layer in enumerate(layer_ids):
        for c in flags:
            rows += _layer_rows(data, li, layer, c, etas, model)
    return _with_slice_mean(pd.DataFrame(rows))


def _models_and_sets(
    model_or_models: HookedModel | Mapping[str, HookedModel], sets: Mapping[str, Sequence[str] | PromptSet]
) -> dict[str, HookedModel]:
    """``name -> model`` (one model is named ``"model"``), after checking there is something to compare."""
    models = dict(model_or_models) if isinstance(model_or_models, Mapping) else {"model": model_or_models}
    if not models:
        raise ValueError("no model given; pass a HookedModel or a dict name -> HookedModel")
    if len(sets) < 2:
        raise ValueError(f"need at least two prompt sets to compare; got {list(sets)}")
    empty = [k for k, v in sets.items() if len(v) == 0]
    if empty:
        raise ValueError(f"prompt sets {empty} are empty")
    return models


def _set_activations(
    model: HookedModel,
    sets: Mapping[str, Sequence[str] | PromptSet],
    names: list[str],
    where: Path | None,
    **kwargs: Any,
) -> dict[str, Float[Tensor, "n layer d"]]:
    """Set name -> ``[n_set, layer, d]`` activations of ``names`` (streamed to ``where/<set>/`` if given)."""
    from deltalens.probes.collect import collect

    acts = {}
    for sname, prompts in sets.items():
        col = collect(model, prompts, names, out=None if where is None else where / sname, **kwargs)
        acts[sname] = col.stack(names)
    return acts


def activation_overlap(
    model_or_models: HookedModel | Mapping[str, HookedModel],
    sets: Mapping[str, Sequence[str] | PromptSet],
    *,
    layers: Any = "65-90%",
    etas: float | Sequence[float] = DEFAULT_ACTIVATION_ETAS,
    centered: bool | Sequence[bool] = (False, True),
    hook: str = "hook_resid_post",
    positions: str | int = "last",
    batch_size: int = 16,
    out: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Activation MSO between every pair of prompt sets, for one or several checkpoints.

    Args:
        model_or_models: a ``HookedModel`` or ``name -> HookedModel`` (compared side by side on
            the same sets and layers).
        sets: set name -> prompts (a list of texts or a ``PromptSet``), e.g.
            ``{"useful": [...], "harmful_1": [...], "harmful_2": [...]}``.
        layers: layer spec (default the paper's ``"65-90%"`` depth slice; see ``parse_layers``).
        etas: energy fractions (default the paper's 0.01, 0.1, ..., 0.6).
        centered: False (the paper), True, or both (default).
        hook: block hook to read (``hook_resid_post`` = the paper's ``hidden_states[l + 1]``).
        positions: ``"last"`` (last real token, as the paper) or ``"mean"``.
        batch_size: prompts per forward pass.
        out: stream activations to ``out/<model>/<set>/`` (resumable) instead of memory.
        progress: show progress bars.

    Returns:
        The :data:`~deltalens.schemas.ACTIVATION_OVERLAP` table of :func:`overlap_from_activations`,
        with one ``model`` value per checkpoint.

    Raises:
        ValueError: fewer than two sets, an empty set, or a layer outside the model.

    Example:
        >>> df = activation_overlap({"base": w0, "aligned": wa}, {"useful": u, "harmful": h}, etas=(0.1, 0.5))
        >>> df.query("scope == 'slice_mean' and not centered")[["model", "set_a", "set_b", "eta", "mso"]]
    """
    import pandas as pd

    models = _models_and_sets(model_or_models, sets)
    frames = []
    for mname, model in models.items():
        ids = parse_layers(layers, model.n_layers)
        names = [f"blocks.{layer}.{hook}" for layer in ids]
        where = None if out is None else Path(out) / mname
        acts = _set_activations(
            model, sets, names, where, positions=positions, batch_size=batch_size, progress=progress
        )
        frames.append(overlap_from_activations(acts, layers=ids, etas=etas, centered=centered, model=mname))
    return pd.concat(frames, ignore_index=True)
