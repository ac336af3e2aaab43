"""Linear probes: accuracy on separable data, chance on shuffled labels, group-safe splits, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from deltalens.probes import ProbeConfig, group_splits, probe_layers


def _synthetic(n_groups: int = 60, per_group: int = 4, d: int = 24, margin: float = 2.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group).astype(str)
    labels = np.repeat(rng.permutation(np.arange(n_groups) % 2), per_group)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    X = rng.standard_normal((len(labels), d)) + margin * np.outer(2 * labels - 1, w) + 3.0
    noise = torch.tensor(rng.standard_normal((len(labels), d)))
    acts = {"blocks.0.hook_resid_post": torch.tensor(X), "blocks.1.hook_resid_post": noise}
    return acts, labels, groups, w


def test_probe_separable_reaches_high_accuracy_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    acts, labels, groups, w = _synthetic()
    res = probe_layers(acts, labels, groups)
    row = res.summary().set_index("name").loc["blocks.0.hook_resid_post"]
    assert row["accuracy"] >= 0.95 and row["roc_auc"] >= 0.98
    assert row["majority_accuracy"] <= 0.6 and row["random_accuracy"] < row["accuracy"] - 0.15
    noise = res.summary().set_index("name").loc["blocks.1.hook_resid_post"]
    assert noise["accuracy"] < 0.75
    # independent reference: the same split fitted by hand
    ((tr, te),) = res.splits
    X, y = acts["blocks.0.hook_resid_post"].numpy(), labels.astype(str)
    sc = StandardScaler().fit(X[tr])
    lr = LogisticRegression(max_iter=2000, random_state=0).fit(sc.transform(X[tr]), y[tr])
    assert row["accuracy"] == pytest.approx((lr.predict(sc.transform(X[te])) == y[te]).mean())
    (top, n_top), (_, n_next) = Counter(y[tr]).most_common(2)
    assert n_top > n_next  # no tie in this split, so the majority class is unambiguous
    assert row["majority_accuracy"] == pytest.approx((y[te] == top).mean())
    # the direction lives in activation space (un-standardised) and points to class "1"
    v = res.directions["blocks.0.hook_resid_post"]
    assert v.shape == (24,) and float(v.norm()) == pytest.approx(1.0)
    assert float(v @ torch.tensor(w)) > 0.9
    score = lr.decision_function(sc.transform(X))
    assert np.corrcoef(score, X @ v.numpy())[0, 1] > 1 - 1e-9
    assert res.directions_tensor().shape == (2, 24)


def test_probe_on_shuffled_labels_stays_near_chance():
    acts, labels, groups, _ = _synthetic(n_groups=100, seed=1)
    rng = np.random.default_rng(5)
    group_label = {g: rng.integers(0, 2) for g in np.unique(groups)}  # shuffled at the group level
    shuffled = np.array([group_label[g] for g in groups])
    res = probe_layers(
        acts, shuffled, groups, names="blocks.0.hook_resid_post", config=ProbeConfig(n_splits=4, n_random=1)
    )
    s = res.summary().iloc[0]
    assert 0.35 <= s["accuracy"] <= 0.65 and 0.3 <= s["roc_auc"] <= 0.7
    assert len(res.table) == 4


@pytest.mark.parametrize("n_splits", [None, 3, 5])
def test_group_split_never_shares_a_group(n_splits):
    _, labels, groups, _ = _synthetic(n_groups=30, per_group=3)
    for seed in range(4):
        splits = group_splits(labels, groups, ProbeConfig(n_splits=n_splits, seed=seed))
        assert len(splits) == (n_splits or 1)
        for tr, te in splits:
            assert not set(groups[tr]) & set(groups[te])
            assert len(tr) + len(te) == len(labels) and not set(tr) & set(te)
            assert set(labels[te]) == set(labels[tr]) == {0, 1}
        if n_splits:
            assert sorted(np.concatenate([te for _, te in splits]).tolist()) == list(range(len(labels)))


def test_multiclass_probe():
    rng = np.random.default_rng(2)
    labels = np.repeat(["a", "b", "c"], 40)
    centers = {k: rng.standard_normal(16) * 4 for k in "abc"}
    X = np.stack([centers[k] for k in labels]) + rng.standard_normal((120, 16))
    res = probe_layers({"blocks.3.hook_resid_post": torch.tensor(X)}, labels, config=ProbeConfig(n_random=1))
    assert res.classes == ["a", "b", "c"]
    assert res.summary().iloc[0]["accuracy"] > 0.9
    assert res.directions["blocks.3.hook_resid_post"].shape == (3, 16)


def test_bad_inputs_raise_clear_errors():
    acts, labels, groups, _ = _synthetic(n_groups=10)
    with pytest.raises(ValueError, match="at least two classes"):
        probe_layers(acts, np.zeros(len(labels)), groups)
    with pytest.raises(ValueError, match="one label per prompt"):
        probe_layers(acts, labels[:-1], groups)
    with pytest.raises(ValueError, match="one group id per prompt"):
        probe_layers(acts, labels, groups[:5])
    with pytest.raises(ValueError, match="one group"):
        probe_layers(acts, labels, ["g"] * len(labels))
    with pytest.raises(ValueError, match="outside"):
        probe_layers(acts, labels, groups, layers=[7])
    with pytest.raises(ValueError, match="no labels"):
        probe_layers(acts)
    bad = dict(acts)
    x = bad["blocks.1.hook_resid_post"].clone()
    x[7, 3] = float("nan")
    bad["blocks.1.hook_resid_post"] = x
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post.*prompt 7"):
        probe_layers(bad, labels, groups)
    with pytest.raises(ValueError, match="test_size"):
        ProbeConfig(test_size=1.5)
    nested = np.repeat([0, 1], 20)
    with pytest.raises(ValueError, match="groups"):  # two groups, each one class: no split has both
        group_splits(nested, np.repeat(["x", "y"], 20))
