"""Subspace bases against numpy SVDs; seeding; the Haar baseline; SVD caching; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltalens.interventions import LowRank, energy, energy_kept, random_k, random_like, top_k, weight_delta
from deltalens.interventions.delta import DeltaReference, WeightDelta


def _delta(shapes: dict[str, tuple[int, ...]], seed: int) -> WeightDelta:
    g = torch.Generator().manual_seed(seed)
    a = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    b = {n: v + 0.1 * torch.randn(v.shape, generator=g) for n, v in a.items()}
    return weight_delta(a, b)


SHAPES = {
    "layers.0.mlp.up_proj.weight": (48, 32),
    "layers.0.self_attn.o_proj.weight": (32, 40),
    "layers.0.norm.weight": (32,),
}


@pytest.fixture(scope="module")
def delta():
    return _delta(SHAPES, 0)


def _np_projector(mat: np.ndarray, k: int) -> np.ndarray:
    u, _, _ = np.linalg.svd(mat, full_matrices=False)
    return u[:, :k] @ u[:, :k].T


def test_top_k_matches_numpy_svd(delta):
    for frac in (0.01, 0.25, 0.5, 0.99, 1.0):
        basis = top_k(delta, frac=frac)
        for n, (m, k_in) in [(n, s) for n, s in SHAPES.items() if len(s) == 2]:
            k = max(1, round(frac * min(m, k_in)))
            assert basis.k(n) == k
            L = basis.vectors(n).double().numpy()
            assert L.shape == (m, k)
            np.testing.assert_allclose(L.T @ L, np.eye(k), atol=1e-5)
            np.testing.assert_allclose(L @ L.T, _np_projector(delta[n].double().numpy(), k), atol=1e-5)
    v = top_k(delta, frac=0.5).vectors("layers.0.norm.weight")[:, 0].double().numpy()
    d = delta["layers.0.norm.weight"].double().numpy()
    np.testing.assert_allclose(np.abs(v @ d), np.linalg.norm(d), rtol=1e-6)  # 1-D: the delta's span


def test_delta_svd_matches_numpy_and_is_cached(delta):
    from deltalens import interventions as iv
    from deltalens.interventions import delta_svd

    n = "layers.0.mlp.up_proj.weight"
    u, s = delta_svd(delta, n, torch.float64)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(delta[n].double().numpy(), compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose((u * s) @ (u * s).T, delta[n].double().numpy() @ delta[n].double().numpy().T, atol=1e-10)
    assert delta_svd(delta, n, torch.float64)[0] is u  # one SVD per (tensor, dtype)
    with pytest.raises(ValueError, match="delta_svd needs a non-zero 2-D delta"):
        delta_svd(delta, "layers.0.norm.weight")
    assert not hasattr(iv, "left_svd")  # the bare-matrix left_svd is deltalens.probes'


def test_energy_basis_rank_rule(delta):
    n = "layers.0.mlp.up_proj.weight"
    s = np.linalg.svd(delta[n].double().numpy(), compute_uv=False)
    cum = np.cumsum(s**2) / np.sum(s**2)
    for eta in (0.1, 0.5, 0.9, 1.0):
        assert energy(delta, eta).k(n) == min(int(np.argmax(cum >= eta - 1e-12)) + 1, len(s))
    assert energy_kept(delta, energy(delta, 0.5), modules=[n]) >= 0.5


def test_random_bases_are_seeded(delta):
    n = "layers.0.self_attn.o_proj.weight"
    for make in (random_k, random_like):
        a, b, c = make(delta, 0.25, seed=1), make(delta, 0.25, seed=1), make(delta, 0.25, seed=2)
        assert torch.equal(a.vectors(n), b.vectors(n))
        assert not torch.allclose(a.vectors(n) @ a.vectors(n).T, c.vectors(n) @ c.vectors(n).T, atol=1e-3)
        assert a.k(n) == top_k(delta, 0.25).k(n)
        L = a.vectors(n)
        torch.testing.assert_close(L.T @ L, torch.eye(L.shape[1]), atol=1e-5, rtol=0)
    # RandomK draws singular vectors of the same delta: each is ± a column of the full U
    u = np.linalg.svd(delta[n].double().numpy(), full_matrices=False)[0]
    R = random_k(delta, 0.25, seed=1).vectors(n).double().numpy()
    assert np.allclose(np.abs(u.T @ R).max(axis=0), 1.0, atol=1e-4)
    assert not np.allclose(np.abs(u[:, : R.shape[1]].T @ R).max(axis=0), 1.0, atol=1e-4)  # not the top ones


def test_haar_random_energy_is_k_over_m():
    delta = _delta({"w": (40, 60)}, 1)
    task = _delta({"w": (40, 60)}, 2)
    vals = [energy_kept(task, random_like(delta, k=10, seed=s), check=False) for s in range(40)]
    assert np.mean(vals) == pytest.approx(10 / 40, abs=0.02)
    assert np.std(vals) > 0.005


def test_svds_run_once_per_tensor_and_delta(monkeypatch):
    delta = _delta(SHAPES, 3)
    top_k(delta, 0.25).vectors("layers.0.mlp.up_proj.weight")
    random_like(delta, 0.25, seed=0).vectors("layers.0.mlp.up_proj.weight")
    calls = []
    real = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or real(*a, **k))
    for frac in (0.1, 0.5, 0.9):
        for make in (top_k, random_k):
            make(delta, frac).vectors("layers.0.mlp.up_proj.weight")
        random_like(delta, frac, seed=0).vectors("layers.0.mlp.up_proj.weight")
    assert calls == []
    random_like(delta, 0.5, seed=7).vectors("layers.0.mlp.up_proj.weight")
    assert len(calls) == 1


def test_factored_delta_svd_matches_dense():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(48, 6, generator=g), torch.randn(6, 32, generator=g)
    ref = DeltaReference(a="x", b="y", fingerprint_a=None, fingerprint_b=None)
    low = WeightDelta({"w": LowRank(B, A)}, {"w": (48, 32)}, ref)
    dense = low.densify()
    for k in (1, 3, 6):
        torch.testing.assert_close(
            top_k(low, k=k).vectors("w") @ top_k(low, k=k).vectors("w").T,
            top_k(dense, k=k).vectors("w") @ top_k(dense, k=k).vectors("w").T,
            atol=1e-5,
            rtol=0,
        )
    with pytest.raises(ValueError, match=r"k=16 is larger than the rank of 'w' \(a LoRA update of rank 6"):
        top_k(low, frac=0.5)
    assert top_k(low, frac=0.5, over_rank="clip").k("w") == 6
    assert random_like(low, frac=0.5, over_rank="clip").k("w") == 6


def test_bad_fractions_and_ranks(delta):
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"frac must be in \(0, 1\]"):
            top_k(delta, frac=bad)
    with pytest.raises(ValueError, match="larger than the rank"):
        top_k(delta, k=33)
    with pytest.raises(ValueError, match="exactly one of frac= or k="):
        random_k(delta, 0.5, k=3)
    with pytest.raises(ValueError, match=r"eta must be in \(0, 1\]"):
        energy(delta, 0.0)
    assert top_k(delta, k=32).k("layers.0.mlp.up_proj.weight") == 32


def test_zero_tensors_get_empty_bases():
    a = {"w": torch.ones(8, 6), "v": torch.ones(6)}
    b = {"w": torch.ones(8, 6), "v": torch.ones(6) * 2}
    d = weight_delta(a, b)
    for basis in (top_k(d, 0.5), random_k(d, 0.5), random_like(d, 0.5)):
        assert basis.k("w") == 0 and basis.vectors("w").shape == (8, 0)
        assert basis.k("v") == 1
    assert "1 empty" in repr(top_k(d, 0.5))


def test_randomized_svd_only_when_asked():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(60, 60, generator=g))
    v, _ = torch.linalg.qr(torch.randn(50, 50, generator=g))
    s = torch.cat([torch.tensor([50.0, 40, 30, 20, 10]), 0.01 * torch.ones(45)])
    a = {"w": torch.zeros(60, 50)}
    d = weight_delta(a, {"w": u[:, :50] @ torch.diag(s) @ v.T})
    exact = top_k(d, k=5).vectors("w")
    assert [key[0] for key in d._cache] == ["svd"]  # exact by default
    fast = top_k(d, k=5, svd="randomized").vectors("w")
    assert sorted(key[0] for key in d._cache) == ["svd", "svd_lowrank"]
    torch.testing.assert_close(exact @ exact.T, fast @ fast.T, atol=1e-4, rtol=0)
    from deltalens.interventions import Basis

    with pytest.raises(ValueError, match="only available for top_k"):
        Basis(d, method="randomk", k=2, svd="randomized")
