"""Overlap metrics against independent references (scipy, numpy) and known distributions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from deltalens.probes import (
    cosine,
    diff_of_means,
    energy_rank,
    left_basis,
    left_svd,
    linear_cka,
    mso,
    principal_angles,
    weight_overlap,
    weight_overlap_pairs,
)


def _proj(Q: torch.Tensor) -> torch.Tensor:
    return Q @ Q.T


@pytest.mark.parametrize("shape_a,shape_b", [((40, 5), (40, 9)), ((30, 12), (30, 3)), ((8, 8), (8, 20))])
def test_principal_angles_match_scipy(shape_a, shape_b):
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(*shape_a, generator=g), torch.randn(*shape_b, generator=g)
    ours = principal_angles(A, B).numpy()
    ref = scipy.linalg.subspace_angles(A.double().numpy(), B.double().numpy())
    np.testing.assert_allclose(ours, np.sort(ref), atol=1e-10)
    assert np.all(np.diff(ours) >= 0), "angles are returned ascending"


def test_principal_angles_small_angles_and_activation_layout():
    g = torch.Generator().manual_seed(2)
    Q = torch.linalg.qr(torch.randn(30, 4, generator=g, dtype=torch.float64)).Q
    tilt = 1e-7 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    theta = principal_angles(Q, Q + tilt)
    ref = np.sort(scipy.linalg.subspace_angles(Q.numpy(), (Q + tilt).numpy()))
    assert theta.max() < 1e-6 and np.allclose(theta.numpy(), ref, atol=1e-9)
    # activations: rows are samples, so the row spaces are compared
    X, Y = torch.randn(6, 20, generator=g), torch.randn(9, 20, generator=g)
    np.testing.assert_allclose(
        principal_angles(X, Y, layout="activation").numpy(), principal_angles(X.T, Y.T).numpy(), atol=1e-12
    )


def test_mso_is_mean_squared_cosine_of_principal_angles():
    g = torch.Generator().manual_seed(3)
    A, B = (
        torch.randn(50, 30, generator=g),
        torch.randn(50, 20, generator=g) + 0.5 * torch.randn(50, 1, generator=g),
    )
    for kw in (dict(k=6), dict(eta=0.4), dict(eta=0.9)):
        r = mso(A, B, **kw)
        Qa, Qb = left_basis(A, **kw), left_basis(B, **kw)
        theta = principal_angles(Qa, Qb)
        assert len(theta) == min(r.k_a, r.k_b)
        assert r.mso == pytest.approx(float((theta.cos() ** 2).mean()), abs=1e-10)
        assert r.baseline == max(r.k_a, r.k_b) / 50

        # independent reference: numpy SVD and the energy rule written out
        def ref_basis(M, kw=kw):
            U, S, _ = np.linalg.svd(M.double().numpy(), full_matrices=False)
            if "k" in kw:
                return U[:, : kw["k"]]
            k = int(np.searchsorted(np.cumsum(S**2), kw["eta"] * np.sum(S**2)) + 1)
            return U[:, :k]

        Ua, Ub = ref_basis(A), ref_basis(B)
        ref = np.sum((Ua.T @ Ub) ** 2) / min(Ua.shape[1], Ub.shape[1])
        assert r.mso == pytest.approx(ref, abs=1e-9)
        assert (r.k_a, r.k_b) == (Ua.shape[1], Ub.shape[1])


def test_mso_of_independent_random_subspaces_matches_baseline():
    d, ka, kb, reps = 64, 5, 12, 300
    g = torch.Generator().manual_seed(4)
    values = np.array(
        [
            mso(torch.randn(d, ka, generator=g), torch.randn(d, kb, generator=g), k=max(ka, kb)).mso
            for _ in range(reps)
        ]
    )
    se = values.std(ddof=1) / np.sqrt(reps)
    baseline = max(ka, kb) / d
    assert abs(values.mean() - baseline) < 4 * se
    wrong = min(ka, kb) / d  # the test would catch the other normalisation
    assert abs(values.mean() - wrong) > 10 * se


def test_energy_rank():
    S = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(S, 9 / 14) == 1
    assert energy_rank(S, 9 / 14 + 1e-6) == 2
    assert energy_rank(S, 0.99) == 3
    assert energy_rank(S, 1.0) == 3
    assert energy_rank(S.flip(0), 0.5) == 1  # order does not matter
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        energy_rank(S, 0.0)
    with pytest.raises(ValueError, match="zero"):
        energy_rank(torch.zeros(3), 0.5)


@pytest.mark.parametrize("shape", [(20, 200), (200, 20), (33, 33)])
@pytest.mark.parametrize("centered", [False, True])
def test_gram_basis_equals_svd_basis(shape, centered):
    g = torch.Generator().manual_seed(5)
    M = torch.randn(*shape, generator=g) @ torch.diag(torch.linspace(0.1, 3, shape[1]))
    for k in (1, 4, 15):
        Qg = left_basis(M, k=k, centered=centered, method="gram")
        Qs = left_basis(M, k=k, centered=centered, method="svd")
        assert Qg.shape == Qs.shape
        torch.testing.assert_close(_proj(Qg), _proj(Qs), atol=1e-8, rtol=0)
        torch.testing.assert_close(Qg.T @ Qg, torch.eye(Qg.shape[1], dtype=torch.float64), atol=1e-8, rtol=0)
    Ug, Sg = left_svd(M, centered=centered, method="gram")
    Us, Ss = left_svd(M, centered=centered, method="svd")
    r = min(len(Sg), len(Ss))
    # the Gram route is accurate in the energies σ² (what energy_rank uses); a σ that is zero in exact
    # arithmetic (centring removes a rank) comes out as sqrt(eps·σ_0²) ~ 1e-7, so σ² is compared
    torch.testing.assert_close(Sg[:r].square(), Ss[:r].square(), atol=1e-8, rtol=1e-8)


def test_activation_layout_is_row_space_and_centering():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(500, 24, generator=g) + 10.0  # big shared mean
    Y = torch.randn(400, 24, generator=g) + 10.0
    Q = left_basis(X, k=3, layout="activation")
    assert Q.shape == (24, 3)
    _, _, Vt = np.linalg.svd(X.double().numpy(), full_matrices=False)  # right singular vectors of X
    np.testing.assert_allclose(_proj(Q).numpy(), Vt[:3].T @ Vt[:3], atol=1e-8)
    unc = mso(X, Y, eta=0.5, layout="activation")
    cen = mso(X, Y, eta=0.5, layout="activation", centered=True)
    assert unc.k_a == 1 and unc.mso > 0.99  # both dominated by the mean direction
    assert cen.mso < 0.6 and cen.k_a > 5
    with pytest.raises(ValueError, match="layout='activation'"):
        mso(X, torch.randn(300, 24), eta=0.5)  # [n, D] passed as weights: row dims differ


def test_linear_cka_reference_and_invariances():
    g = torch.Generator().manual_seed(7)
    X = torch.randn(60, 10, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(10, 8, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        60, 8, generator=g, dtype=torch.float64
    )

    def ref(a, b):  # HSIC form with the centring matrix
        a, b = a.numpy(), b.numpy()
        H = np.eye(len(a)) - 1 / len(a)
        K, L = H @ a @ a.T @ H, H @ b @ b.T @ H
        return np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L))

    c = linear_cka(X, Y)
    assert c == pytest.approx(ref(X, Y), abs=1e-10)
    assert linear_cka(X[:5], Y[:5]) == pytest.approx(ref(X[:5], Y[:5]), abs=1e-10)  # sample-Gram branch
    Q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64)).Q
    assert linear_cka(X, Y @ Q) == pytest.approx(c, abs=1e-10)
    assert linear_cka(3.7 * X, Y) == pytest.approx(c, abs=1e-10)
    assert linear_cka(X + 5.0, Y) == pytest.approx(c, abs=1e-10)
    aniso = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert abs(linear_cka(X, Y @ aniso) - c) > 1e-2
    assert linear_cka(X, X) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(X, Y[:10])


def test_diff_of_means_and_cosine():
    g = torch.Generator().manual_seed(8)
    pos, neg = torch.randn(30, 3, 16, generator=g) + 1.0, torch.randn(20, 3, 16, generator=g)
    v = diff_of_means(pos, neg)
    ref = pos.double().numpy().mean(0) - neg.double().numpy().mean(0)
    np.testing.assert_allclose(v.numpy(), ref / np.linalg.norm(ref, axis=-1, keepdims=True), atol=1e-12)
    c = cosine(v, torch.as_tensor(ref))
    np.testing.assert_allclose(c.numpy(), np.ones(3), atol=1e-12)
    u, w = torch.randn(16, generator=g), torch.randn(16, generator=g)
    expect = float(u.double() @ w.double() / (u.double().norm() * w.double().norm()))
    assert float(cosine(u, w)) == pytest.approx(expect, abs=1e-12)
    with pytest.raises(ValueError, match="zero"):
        cosine(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="coincide"):
        diff_of_means(pos, pos)


def _deltas(seed: int, shared: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=g),
        "lm_head.weight": torch.randn(50, 16, generator=g),
    }
    for i in range(3):
        low = torch.randn(24, 3, generator=g) @ torch.randn(3, 16, generator=g)
        out[f"model.layers.{i}.mlp.down_proj.weight"] = low + (shared if shared is not None else 0)
        out[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(16, generator=g)
    return out


def test_weight_overlap_per_tensor_and_aggregates():
    a, b = _deltas(0), _deltas(1)
    b["model.layers.2.mlp.down_proj.weight"] = torch.zeros(24, 16)
    wo = weight_overlap(a, b, etas=(0.5, 0.9))
    assert set(wo.table["tensor"]) == {"model.embed_tokens.weight", "lm_head.weight"} | {
        f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)
    }
    assert "zero update" in wo.skipped["model.layers.2.mlp.down_proj.weight"]
    for row in wo.table.itertuples():
        r = mso(a[row.tensor], b[row.tensor], eta=row.eta)
        assert (row.mso, row.k_a, row.k_b, row.d, row.baseline) == pytest.approx(
            (r.mso, r.k_a, r.k_b, r.d, r.baseline)
        )
    m = wo.mean().set_index("eta")
    assert m.loc[0.9, "mso"] == pytest.approx(wo.table[wo.table.eta == 0.9]["mso"].mean())
    assert m.loc[0.9, "n_tensors"] == 4
    by_layer = wo.by_layer()
    assert set(by_layer["layer"].dropna()) == {0, 1}
    no_emb = weight_overlap(a, b, etas=0.5, include_embeddings=False)
    assert not no_emb.table["is_embedding"].any() and len(no_emb.table) == 2
    same = weight_overlap(a, a, etas=(0.3, 0.99))
    assert np.allclose(same.table["mso"], 1.0)


def test_weight_overlap_pairs_tidy_table():
    shared = torch.randn(24, 1) @ torch.randn(1, 16) * 5
    deltas = {
        "alignment": _deltas(0),
        "useful": _deltas(1, shared),
        "harmful": _deltas(2, shared),
        "contaminated": _deltas(3),
    }
    df = weight_overlap_pairs(deltas, etas=(0.1, 0.5))
    assert set(df["embeddings"]) == {"included", "excluded"}
    pairs = set(zip(df["a"], df["b"]))
    assert len(pairs) == 6 and ("alignment", "useful") in pairs
    assert len(df) == 6 * 2 * 2
    ex = df[(df.embeddings == "excluded") & (df.eta == 0.1)].set_index(["a", "b"])
    # the shared rank-1 direction makes useful/harmful overlap far above any other pair
    assert ex.loc[("useful", "harmful"), "mso"] > 0.9
    assert ex.drop(index=("useful", "harmful"))["mso"].max() < 0.5
    per_tensor = weight_overlap_pairs(deltas, etas=0.5, by="tensor", include_embeddings=False)
    assert len(per_tensor) == 6 * 3 and not per_tensor["is_embedding"].any()
    with pytest.raises(ValueError, match="share no 2-D tensor"):
        weight_overlap_pairs({"a": {"x.weight": torch.ones(3)}, "b": {"x.weight": torch.ones(3)}})
    with pytest.raises(ValueError, match="at least two"):
        weight_overlap_pairs({"a": deltas["useful"]})


def test_weight_overlap_on_weight_delta_uses_out_in_orientation():
    """GPT-2 stores Conv1D weights [in, out]; the subspace must still live in the output space."""
    from transformers import AutoModelForCausalLM

    import deltalens as dl
    from deltalens.testing import tiny_config

    cfg = tiny_config("gpt2", vocab_size=96, n_layers=1, d_model=32)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(cfg).eval())
    da, db = dl.weight_delta(models[0], models[1]), dl.weight_delta(models[0], models[2])
    name = "transformer.h.0.mlp.c_fc.weight"  # stored [32, 128], acts as Linear(32 -> 128)
    assert tuple(da[name].shape) == (32, 128)
    wo = weight_overlap(da, db, etas=0.9, include_embeddings=False)
    row = wo.table.set_index("tensor").loc[name]
    assert row["d"] == 128 and row["group"] == "mlp"
    assert row["mso"] == pytest.approx(mso(da[name].T, db[name].T, eta=0.9).mso)
    assert not any("wte" in t or "wpe" in t for t in wo.table["tensor"])


def test_weight_overlap_factored_update_equals_dense():
    from deltalens.interventions.delta import DeltaReference, LowRank, WeightDelta

    g = torch.Generator().manual_seed(9)
    lr = {
        f"model.layers.{i}.self_attn.q_proj.weight": LowRank(
            torch.randn(40, 4, generator=g), torch.randn(4, 24, generator=g)
        )
        for i in range(2)
    }
    other = {k: torch.randn(40, 24, generator=g) for k in lr}
    ref = DeltaReference(a="base", b="lora", fingerprint_a=None, fingerprint_b=None)
    factored = WeightDelta(dict(lr), {k: v.shape for k, v in lr.items()}, ref)  # LoRA updates kept as B @ A
    for centered in (False, True):
        dense = weight_overlap(
            {k: v.dense() for k, v in lr.items()}, other, etas=(0.5, 0.99), centered=centered
        ).table
        for delta in (factored, lr):  # a WeightDelta, or a plain mapping holding LowRank entries
            fact = weight_overlap(delta, other, etas=(0.5, 0.99), centered=centered).table
            np.testing.assert_allclose(fact["mso"], dense["mso"], atol=1e-9)
            assert (fact["k_a"] == dense["k_a"]).all() and (fact["k_a"] <= 4).all()


def test_mso_at_eta_equals_numpy_on_the_energy_ranks():
    import numpy as np

    from deltalens.probes.overlap import energy_rank, left_svd, mso_at

    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(30, 12, generator=g), torch.randn(30, 9, generator=g)
    (Ua, Sa), (Ub, Sb) = left_svd(A, method="svd"), left_svd(B, method="svd")
    for eta in (0.3, 0.9):
        ka, kb = energy_rank(Sa, eta), energy_rank(Sb, eta)
        qa = np.linalg.svd(A.double().numpy(), full_matrices=False)[0][:, :ka]
        qb = np.linalg.svd(B.double().numpy(), full_matrices=False)[0][:, :kb]
        r = mso_at(Ua, Sa, Ub, Sb, eta)
        assert (r.k_a, r.k_b, r.d) == (ka, kb, 30)
        assert r.mso == pytest.approx(float(np.square(qa.T @ qb).sum()) / min(ka, kb), abs=1e-10)
        assert r.baseline == max(ka, kb) / 30
