"""Linear probes per layer and hook, split by prompt group, with honest baselines.

Each probe is ``StandardScaler -> LogisticRegression`` (scikit-learn, seeded). Train and test are
split **by prompt group** (paraphrases, templates or topics of one prompt stay on one side), and
every row of the table carries two baselines: always predicting the training majority class, and a
logistic regression on the projection onto a random direction of activation space.

Example:
    >>> from deltalens.probes import collect, probe_layers
    >>> acts = collect(model, ps)                          # ps: PromptSet with labels and groups
    >>> res = probe_layers(acts)
    >>> res.summary()[["name", "accuracy", "majority_accuracy", "random_accuracy"]]
    >>> v = res.directions["blocks.5.hook_resid_post"]     # unit vector in R^d_model, for steering
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from deltalens.hooks.names import NamesArg, layer_of, parse_layers
from deltalens.probes.collected import Collected
from deltalens.schemas import PROBES

if TYPE_CHECKING:
    import pandas as pd

Split = tuple[np.ndarray, np.ndarray]


@dataclass(kw_only=True)
class ProbeConfig:
    """How probes are split, fitted and checked.

    Attributes:
        test_size: fraction of *groups* held out (single split; ignored when ``n_splits`` is set).
        n_splits: ``None`` for one ``GroupShuffleSplit``; an int for ``StratifiedGroupKFold``
            cross-validation (the table then has one row per fold).
        C: inverse L2 strength of the logistic regression.
        max_iter: solver iterations.
        n_random: random directions averaged in the random-direction baseline.
        seed: seeds the split, the solver and the random directions.
    """

    test_size: float = 0.25
    n_splits: int | None = None
    C: float = 1.0
    max_iter: int = 2000
    n_random: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size={self.test_size}; expected a fraction in (0, 1)")
        if self.n_splits is not None and self.n_splits < 2:
            raise ValueError(f"n_splits={self.n_splits}; expected None (one split) or >= 2 folds")
        if self.C <= 0 or self.max_iter < 1 or self.n_random < 0:
            raise ValueError(f"C > 0, max_iter >= 1 and n_random >= 0 expected; got {self}")


def _as_labels(labels: Sequence[Any] | None, n: int) -> np.ndarray:
    if labels is None:
        raise ValueError("no labels: pass labels=... (one per prompt) or collect with labels")
    y = np.asarray(list(labels.tolist() if hasattr(labels, "tolist") else labels), dtype=object)
    if len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} prompts; expected one label per prompt")
    if any(v is None for v in y):
        raise ValueError("some labels are None; expected a label for every prompt")
    classes, counts = np.unique(y.astype(str), return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"all {n} prompts have the label {classes[0]!r}; a probe needs at least two classes")
    if counts.min() < 2:
        raise ValueError(f"class {classes[counts.argmin()]!r} has a single prompt; expected >= 2 per class")
    return y


def _as_groups(groups: Sequence[Any] | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray([str(v) for v in (groups.tolist() if hasattr(groups, "tolist") else groups)])
    if len(g) != n:
        raise ValueError(f"got {len(g)} groups for {n} prompts; expected one group id per prompt")
    if len(np.unique(g)) < 2:
        raise ValueError("all prompts are in one group; a group split needs at least two groups")
    return g


def group_splits(
    labels: Sequence[Any], groups: Sequence[Any] | None = None, config: ProbeConfig | None = None
) -> list[Split]:
    """Train / test index splits that never put one group on both sides.

    Args:
        labels: one label per prompt.
        groups: one group id per prompt (None: every prompt is its own group).
        config: ``test_size`` / ``n_splits`` / ``seed``.

    Returns:
        A list of ``(train_idx, test_idx)`` numpy arrays: one split, or ``n_splits`` folds.

    Raises:
        ValueError: one class only, mismatched lengths, a single group, or no seed found within
            50 tries where both sides hold every class.

    Example:
        >>> (train, test), = group_splits(labels, groups)
        >>> assert not set(np.asarray(groups)[train]) & set(np.asarray(groups)[test])
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    cfg = config or ProbeConfig()
    y = _as_labels(labels, len(labels)).astype(str)
    g = _as_groups(groups, len(y))
    n_classes = len(np.unique(y))

    def both(tr: np.ndarray, te: np.ndarray) -> bool:
        return len(np.unique(y[tr])) == n_classes and len(np.unique(y[te])) == n_classes

    if cfg.n_splits is not None:
        if len(np.unique(g)) < cfg.n_splits:
            raise ValueError(f"{len(np.unique(g))} groups cannot fill {cfg.n_splits} folds; lower n_splits")
        folds = StratifiedGroupKFold(cfg.n_splits, shuffle=True, random_state=cfg.seed).split(y, y, g)
        folds = [(np.sort(tr), np.sort(te)) for tr, te in folds]
        if not all(both(tr, te) for tr, te in folds):
            raise ValueError("a fold lacks a class on one side; use fewer folds or more groups per class")
        return folds
    for attempt in range(50):
        splitter = GroupShuffleSplit(n_splits=1, test_size=cfg.test_size, random_state=cfg.seed + attempt)
        tr, te = next(splitter.split(y, y, g))
        if both(tr, te):
            return [(np.sort(tr), np.sort(te))]
    raise ValueError(
        "no group split within 50 seeds has every class on both sides; each class needs prompts in "
        "several groups (are groups nested in labels with too few groups?)"
    )


def _features(
    data: Collected | Mapping[str, Tensor], names: NamesArg, layers: Any
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The chosen hook names and their ``[n_prompts, d]`` float64 activations."""
    from deltalens.hooks.names import resolve_names

    if isinstance(data, Collected):
        chosen = data.select(names, layers)
        return chosen, {n: data[n].double().numpy() for n in chosen}
    if isinstance(data, Mapping):
        chosen = resolve_names(names, list(data))
        if layers is not None:  # the model's depth is not known here: the deepest key stands in
            depth = max((layer_of(n) for n in data if layer_of(n) is not None), default=-1) + 1
            keep = set(parse_layers(layers, depth))
            chosen = [n for n in chosen if layer_of(n) in keep]
        out = {}
        for n in chosen:
            x = torch.as_tensor(data[n])
            if x.ndim != 2:
                raise ValueError(
                    f"{n!r} has shape {tuple(x.shape)}; expected [n_prompts, d] (cache positions='last')"
                )
            out[n] = x.double().numpy()
        return chosen, out
    raise TypeError(f"expected a Collected or a Mapping name -> [n, d] tensor, got {type(data).__name__}")


def _auc(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_true)) < 2:
        return float("nan")
    if len(classes) == 2:
        return float(roc_auc_score(y_true == classes[1], scores[:, 1]))
    return float(roc_auc_score(y_true, scores, multi_class="ovr", labels=classes))


def _pipeline(cfg: ProbeConfig) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)
    )


def probe_direction(pipeline: Any) -> Float[Tensor, "*classes d"]:
    """Unit probe direction(s) in the model's activation space, undoing the standardisation.

    The fitted logit is ``w · (x - μ) / σ + b = (w / σ) · x + const``, so the direction is ``w / σ``
    normalised: it points towards the positive class (``classes_[1]``), ``[d]`` for two classes,
    ``[n_classes, d]`` otherwise.
    """
    scaler, lr = pipeline[0], pipeline[-1]
    w = torch.as_tensor(lr.coef_ / scaler.scale_, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return w[0] if w.shape[0] == 1 else w


def _random_baseline(
    X_tr, y_tr, X_te, y_te, classes, cfg: ProbeConfig, rng: np.random.Generator
) -> tuple[float, float]:
    accs, aucs = [], []
    for _ in range(cfg.n_random):
        v = rng.standard_normal(X_tr.shape[1])
        v /= np.linalg.norm(v)
        p = _pipeline(cfg).fit((X_tr @ v)[:, None], y_tr)
        accs.append(float((p.predict((X_te @ v)[:, None]) == y_te).mean()))
        aucs.append(_auc(y_te, p.predict_proba((X_te @ v)[:, None]), classes))
    return (float(np.mean(accs)), float(np.mean(aucs))) if accs else (float("nan"), float("nan"))


@dataclass(kw_only=True)
class ProbeResult:
    """Probes of one checkpoint.

    Attributes:
        table: one row per (hook, fold) (:data:`~deltalens.schemas.PROBES` plus ``fold`` and the
            group counts). Columns: ``name, hook, layer, fold, n_train, n_test,
            n_groups_train, n_groups_test, accuracy, roc_auc, train_accuracy, majority_accuracy,
            random_accuracy, random_roc_auc``.
        directions: hook name -> unit direction (``[d]``, towards ``classes[1]``) of the fold-0 probe.
        pipelines: hook name -> the fitted fold-0 scikit-learn pipeline.
        splits: the ``(train_idx, test_idx)`` arrays used.
        classes: the sorted class labels (as strings).
        config: the :class:`ProbeConfig` used.
    """

    table: pd.DataFrame
    directions: dict[str, Tensor]
    pipelines: dict[str, Any]
    splits: list[Split]
    classes: list[str]
    config: ProbeConfig = field(default_factory=ProbeConfig)

    def summary(self) -> pd.DataFrame:
        """Mean over folds per hook: the table's metric columns, one row per ``name``."""
        metrics = [c for c in self.table.columns if c not in ("name", "hook", "layer", "fold")]
        out = (
            self.table.groupby(["name", "hook", "layer"], sort=False, dropna=False)[metrics]
            .mean()
            .reset_index()
        )
        return out

    def best(self, hook: str | None = None) -> pd.Series:
        """The summary row with the highest test accuracy (optionally among one hook kind)."""
        s = self.summary()
        if hook is not None:
            s = s[s["hook"] == hook]
        return s.loc[s["accuracy"].idxmax()]

    def directions_tensor(self, names: Sequence[str] | None = None) -> Float[Tensor, "layer d"]:
        """Stack the probe directions of ``names`` (default all, in table order) to ``[layer, d]``."""
        return torch.stack([self.directions[n] for n in (names or list(self.directions))])

    def predict(self, name: str, X: Float[Tensor, "n d"]) -> np.ndarray:
        """Labels predicted by the ``name`` probe for activations ``X``."""
        return self.pipelines[name].predict(torch.as_tensor(X).double().numpy())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (config, classes, best row per hook kind)."""
        s = self.summary()
        best = {
            h: self.best(h)[["name", "accuracy", "roc_auc", "majority_accuracy", "random_accuracy"]].to_dict()
            for h in s["hook"].unique()
        }
        return {"config": asdict(self.config), "classes": self.classes, "n_hooks": len(s), "best": best}

    def __repr__(self) -> str:
        if self.table.empty:
            return "ProbeResult(empty)"
        b = self.best()
        tr, te = self.splits[0]
        return (
            f"ProbeResult({self.table['name'].nunique()} hooks, classes={self.classes}, "
            f"{len(self.splits)} split(s) of {len(tr)}/{len(te)} prompts; best {b['name']}: "
            f"accuracy {b['accuracy']:.3f}, AUC {b['roc_auc']:.3f} (majority {b['majority_accuracy']:.3f}, "
            f"random direction {b['random_accuracy']:.3f}))"
        )


def _check_finite(name: str, X: np.ndarray) -> None:
    if not np.isfinite(X).all():
        bad = int(np.flatnonzero(~np.isfinite(X).all(1))[0])
        raise ValueError(f"activations of {name!r} are not finite at prompt {bad}; expected finite values")


def _fold(
    name: str, X: np.ndarray, y: np.ndarray, g: np.ndarray, split: Split, fold: int, cfg: ProbeConfig
) -> tuple[dict[str, Any], Any]:
    """One table row (test and baseline scores of the ``name`` probe on one fold) and its pipeline."""
    tr, te = split
    classes = np.unique(y)
    pipe = _pipeline(cfg).fit(X[tr], y[tr])
    values, counts = np.unique(y[tr], return_counts=True)
    rng = np.random.default_rng(cfg.seed + 7919 * fold)
    rand_acc, rand_auc = _random_baseline(X[tr], y[tr], X[te], y[te], classes, cfg, rng)
    row = dict(
        name=name,
        hook=name.split(".", 2)[-1] if layer_of(name) is not None else name,
        layer=layer_of(name),
        fold=fold,
        n_train=len(tr),
        n_test=len(te),
        n_groups_train=len(np.unique(g[tr])),
        n_groups_test=len(np.unique(g[te])),
        accuracy=float((pipe.predict(X[te]) == y[te]).mean()),
        roc_auc=_auc(y[te], pipe.predict_proba(X[te]), classes),
        train_accuracy=float((pipe.predict(X[tr]) == y[tr]).mean()),
        majority_accuracy=float((y[te] == values[counts.argmax()]).mean()),
        random_accuracy=rand_acc,
        random_roc_auc=rand_auc,
    )
    return row, pipe


def _probe_hooks(
    feats: dict[str, np.ndarray], y: np.ndarray, g: np.ndarray, splits: list[Split], cfg: ProbeConfig
) -> tuple[list[dict[str, Any]], dict[str, Tensor], dict[str, Any]]:
    """Table rows of every hook and fold, and the fold-0 directions and pipelines per hook."""
    rows, directions, pipelines = [], {}, {}
    for name, X in feats.items():
        _check_finite(name, X)
        for fold, split in enumerate(splits):
            row, pipe = _fold(name, X, y, g, split, fold, cfg)
            rows.append(row)
            if fold == 0:
                directions[name] = probe_direction(pipe)
                pipelines[name] = pipe
    return rows, directions, pipelines


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The :data:`~deltalens.schemas.PROBES` table of ``rows``, in the rows' column order."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    return PROBES.frame(df)[list(df.columns)]


def probe_layers(
    collected: Collected | Mapping[str, Tensor],
    labels: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
    *,
    names: NamesArg = "blocks.*.hook_resid_post",
    layers: Any = None,
    config: ProbeConfig | None = None,
    splits: list[Split] | None = None,
) -> ProbeResult:
    """Fit one logistic-regression probe per hook and evaluate it on held-out prompt groups.

    Args:
        collected: a :class:`~deltalens.probes.collect.Collected`, or a mapping hook name ->
            ``[n_prompts, d]`` (e.g. an ``ActivationCache`` made with ``positions="last"``).
        labels: one per prompt (default: ``collected.labels``). Two or more classes.
        groups: one group id per prompt (default: ``collected.groups``; None: one group each).
            Without groups, paraphrases of one request can sit on both sides and inflate accuracy.
        names: which hooks (glob / list / predicate).
        layers: optional layer spec (``"65-90%"``, ``"2:5"``, ints).
        config: split / fit settings (:class:`ProbeConfig`).
        splits: precomputed ``(train_idx, test_idx)`` list (see :func:`group_splits`); lets several
            checkpoints share one split.

    Returns:
        :class:`ProbeResult` with the tidy ``table`` (:data:`~deltalens.schemas.PROBES`), unit
        ``directions`` and fitted ``pipelines``.

    Raises:
        ValueError: one class only, label / group counts that do not match the prompts, a layer
            outside the model, or non-finite activations.

    Example:
        >>> res = probe_layers(acts, layers="65-90%", config=ProbeConfig(n_splits=5))
        >>> res.best()["accuracy"], res.directions[res.best()["name"]].shape
    """
    cfg = config or ProbeConfig()
    if isinstance(collected, Collected):
        labels = collected.labels if labels is None else labels
        groups = collected.groups if groups is None else groups
    chosen, feats = _features(collected, names, layers)
    if not chosen:
        raise ValueError(f"no hook matches names={names!r} and layers={layers!r}")
    n = next(iter(feats.values())).shape[0]
    y = _as_labels(labels, n).astype(str)
    g = _as_groups(groups, n)
    splits = splits if splits is not None else group_splits(y, None if groups is None else g, cfg)
    rows, directions, pipelines = _probe_hooks(feats, y, g, splits, cfg)
    return ProbeResult(
        table=_table(rows),
        directions=directions,
        pipelines=pipelines,
        splits=splits,
        classes=[str(c) for c in np.unique(y)],
        config=cfg,
    )
