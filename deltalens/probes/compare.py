"""The same probes and the same overlaps across checkpoints (base, aligned, fine-tuned ...).

Example:
    >>> from deltalens.probes import compare_checkpoints
    >>> cmp = compare_checkpoints({"aligned": wa, "harmful_ft": wh}, ps.texts, ps.labels, ps.groups)
    >>> cmp.transfer.pivot_table(index=["source", "target"], columns="layer", values="accuracy")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from deltalens.hooks.names import NamesArg, layer_of
from deltalens.probes.linear import (
    ProbeConfig,
    ProbeResult,
    Split,
    _as_groups,
    _as_labels,
    _auc,
    group_splits,
    probe_layers,
)
from deltalens.probes.overlap import cosine, diff_of_means, linear_cka

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.data import PromptSet
    from deltalens.hooks.model import HookedModel
    from deltalens.probes.collected import Collected

Features = dict[str, dict[str, Tensor]]
"""Checkpoint name -> hook name -> ``[n_prompts, d]`` float64 activations."""


@dataclass(kw_only=True)
class CheckpointComparison:
    """Probes and overlaps of several checkpoints on one labelled prompt set.

    Attributes:
        probes: checkpoint name -> :class:`~deltalens.probes.linear.ProbeResult` (all share one split).
        probe_table: every probe table stacked, with a ``model`` column.
        transfer: ``source, target, name, layer, accuracy, roc_auc``: the fold-0 probe trained on
            ``source`` applied to ``target``'s held-out prompts (``source == target`` is the usual
            test accuracy).
        similarity: ``a, b, name, layer, probe_cosine, diff_of_means_cosine, linear_cka`` between
            each pair of checkpoints (directions and representations of the same prompts; the
            difference of means points from the first sorted class to the last).
        overlap: class-vs-class activation MSO per checkpoint (the tidy table of
            :func:`~deltalens.probes.activation.overlap_from_activations`; sets are the classes).
        collected: checkpoint name -> its :class:`~deltalens.probes.collect.Collected`.
    """

    probes: dict[str, ProbeResult]
    probe_table: pd.DataFrame
    transfer: pd.DataFrame
    similarity: pd.DataFrame
    overlap: pd.DataFrame
    collected: dict[str, Collected]

    def __repr__(self) -> str:
        accs = ", ".join(f"{k}: {v.best()['accuracy']:.3f}" for k, v in self.probes.items())
        return (
            f"CheckpointComparison({len(self.probes)} checkpoints, {self.probe_table['name'].nunique()} hooks; "
            f"best probe accuracy {accs})"
        )


def _collect_all(
    models: Mapping[str, HookedModel],
    prompts: Sequence[str] | PromptSet,
    out: str | Path | None,
    **kwargs: Any,
) -> dict[str, Collected]:
    """Checkpoint name -> its activations of ``prompts`` (streamed to ``out/<name>/`` if given)."""
    from deltalens.probes.collect import collect

    collected = {}
    for mname, model in models.items():
        where = None if out is None else Path(out) / mname
        collected[mname] = collect(model, prompts, out=where, **kwargs)
    return collected


def _shared_split(first: Collected, cfg: ProbeConfig) -> tuple[np.ndarray, np.ndarray | None, list[Split]]:
    """Labels (as strings), groups and the group split of the first checkpoint's collection."""
    y = _as_labels(first.labels, len(first)).astype(str)
    g = None if first.groups is None else _as_groups(first.groups, len(first))
    return y, g, group_splits(y, g, cfg)


def _int_layer(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    return df


def _transfer(
    probes: Mapping[str, ProbeResult], feats: Features, chosen: list[str], y: np.ndarray, test: np.ndarray
) -> pd.DataFrame:
    """The fold-0 probe of each checkpoint scored on every checkpoint's held-out prompts."""
    classes = np.unique(y)
    rows = []
    for src, res in probes.items():
        for tgt in probes:
            for h in chosen:
                X = feats[tgt][h][test].numpy()
                pipe = res.pipelines[h]
                rows.append(
                    dict(
                        source=src,
                        target=tgt,
                        name=h,
                        layer=layer_of(h),
                        accuracy=float((pipe.predict(X) == y[test]).mean()),
                        roc_auc=_auc(y[test], pipe.predict_proba(X), classes),
                    )
                )
    return _int_layer(rows)


def _similarity(
    probes: Mapping[str, ProbeResult], feats: Features, chosen: list[str], y: np.ndarray
) -> pd.DataFrame:
    """Probe-direction cosine, difference-of-means cosine and linear CKA of each pair of checkpoints."""
    classes = np.unique(y)
    pos, neg = torch.from_numpy(y == classes[-1]), torch.from_numpy(y == classes[0])
    rows = []
    for i, a in enumerate(probes):
        for b in list(probes)[i + 1 :]:
            for h in chosen:
                Xa, Xb = feats[a][h], feats[b][h]
                dom = cosine(diff_of_means(Xa[pos], Xa[neg]), diff_of_means(Xb[pos], Xb[neg]))
                rows.append(
                    dict(
                        a=a,
                        b=b,
                        name=h,
                        layer=layer_of(h),
                        probe_cosine=float(cosine(probes[a].directions[h], probes[b].directions[h])),
                        diff_of_means_cosine=float(dom),
                        linear_cka=linear_cka(Xa, Xb),
                    )
                )
    return _int_layer(rows)


def _class_overlap(
    feats: Features,
    chosen: list[str],
    y: np.ndarray,
    etas: float | Sequence[float],
    centered: bool | Sequence[bool],
) -> pd.DataFrame:
    """Class-vs-class activation MSO per checkpoint (the classes are the sets)."""
    import pandas as pd

    from deltalens.probes.activation import overlap_from_activations

    ids = [layer_of(h) if layer_of(h) is not None else i for i, h in enumerate(chosen)]
    frames = []
    for m, by_hook in feats.items():
        by_class = {
            str(c): torch.stack([by_hook[h][torch.from_numpy(y == c)] for h in chosen], 1)
            for c in np.unique(y)
        }
        frames.append(overlap_from_activations(by_class, layers=ids, etas=etas, centered=centered, model=m))
    return pd.concat(frames, ignore_index=True)


def compare_checkpoints(
    models: Mapping[str, HookedModel],
    prompts: Sequence[str] | PromptSet,
    labels: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
    *,
    names: NamesArg = "blocks.*.hook_resid_post",
    layers: Any = None,
    config: ProbeConfig | None = None,
    etas: float | Sequence[float] = (0.1, 0.5),
    centered: bool | Sequence[bool] = (False, True),
    positions: str | int = "last",
    batch_size: int = 16,
    out: str | Path | None = None,
    progress: bool = True,
) -> CheckpointComparison:
    """Probe several checkpoints on the same prompts with one shared group split and compare them.

    Args:
        models: checkpoint name -> ``HookedModel`` (same architecture and width).
        prompts: texts or a ``PromptSet`` (whose labels / groups are used unless given).
        labels, groups: one per prompt.
        names, layers: hooks to collect and probe.
        config: probe settings (:class:`~deltalens.probes.linear.ProbeConfig`).
        etas, centered: for the class-vs-class activation MSO.
        positions, batch_size: as in :func:`~deltalens.probes.collect.collect`.
        out: stream activations to ``out/<model>/`` (resumable).
        progress: show progress bars.

    Returns:
        :class:`CheckpointComparison` (``probe_table``, ``transfer``, ``similarity``, ``overlap``).

    Example:
        >>> cmp = compare_checkpoints({"base": w0, "aligned": wa}, texts, labels, groups, layers="65-90%")
        >>> cmp.similarity[["a", "b", "layer", "probe_cosine", "linear_cka"]]
    """
    import pandas as pd

    if not models:
        raise ValueError("no checkpoints given; pass a dict name -> HookedModel")
    cfg = config or ProbeConfig()
    collected = _collect_all(
        models, prompts, out, names=names, positions=positions, batch_size=batch_size,
        labels=labels, groups=groups, progress=progress,
    )  # fmt: skip
    y, g, splits = _shared_split(next(iter(collected.values())), cfg)
    probes = {
        m: probe_layers(c, y, g, names=names, layers=layers, config=cfg, splits=splits)
        for m, c in collected.items()
    }
    chosen = list(next(iter(probes.values())).directions)
    feats = {m: {h: c[h].double() for h in chosen} for m, c in collected.items()}
    return CheckpointComparison(
        probes=probes,
        probe_table=pd.concat([r.table.assign(model=m) for m, r in probes.items()], ignore_index=True),
        transfer=_transfer(probes, feats, chosen, y, splits[0][1]),
        similarity=_similarity(probes, feats, chosen, y),
        overlap=_class_overlap(feats, chosen, y, etas, centered),
        collected=collected,
    )
