"""Subspace overlap metrics: principal angles, energy ranks, MSO, linear CKA, mean-difference cosines.

Pure tensor functions, usable on weight updates and on activations alike. One convention decides
which space a subspace lives in, chosen with ``layout``:

``layout="weight"`` (default)
    ``M`` is ``[m, n]`` — an ``nn.Linear`` weight or ΔW in HF's ``out × in`` order. The subspace is
    the **left** singular space, in ``R^m`` (the output space; the vocabulary axis for embeddings).
``layout="activation"``
    ``X`` is ``[n_samples, D]`` — one row per prompt. The subspace is spanned by the rows, in ``R^D``
    (the left singular space of ``Xᵀ``). Centring subtracts the mean row.

Every basis is computed in float64 with the Gram trick: the eigendecomposition of the smaller of
``M Mᵀ`` / ``Mᵀ M``, so a ``5000 × 576`` activation matrix needs one ``576 × 576`` eigendecomposition.

Example:
    >>> from deltalens.probes import mso
    >>> r = mso(acts_useful, acts_harmful, eta=0.5, layout="activation")   # [n, D] each
    >>> r.mso, r.baseline                                                  # vs max(k_a, k_b) / D
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

Layout = Literal["weight", "activation"]
Method = Literal["auto", "gram", "svd"]

_LAYOUTS = ("weight", "activation")


def _columns(M: Tensor, layout: Layout, what: str = "M") -> Tensor:
    """``M`` as a float64 ``[d, n]`` matrix whose columns span the subspace of interest."""
    if layout not in _LAYOUTS:
        raise ValueError(
            f"layout={layout!r}; expected 'weight' ([m, n], left space) or 'activation' ([n, D])"
        )
    if not isinstance(M, Tensor):
        M = torch.as_tensor(M)
    if M.ndim != 2:
        raise ValueError(
            f"{what} has shape {tuple(M.shape)}; expected a 2-D matrix "
            f"({'[m, n] weight' if layout == 'weight' else '[n_samples, D] activations'})"
        )
    if M.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(M.shape)})")
    M = M.detach().to("cpu", torch.float64)
    return M if layout == "weight" else M.T


def left_svd(
    M: Float[Tensor, "m n"],
    *,
    centered: bool = False,
    layout: Layout = "weight",
    method: Method = "auto",
) -> tuple[Float[Tensor, "d r"], Float[Tensor, " r"]]:
    """Left singular vectors and singular values of ``M`` (see the module docstring for ``layout``).

    Args:
        M: ``[m, n]`` weight (``layout="weight"``) or ``[n_samples, D]`` activations.
        centered: subtract the mean of the spanning vectors first (columns of a weight, rows of
            activations).
        layout: ``"weight"`` or ``"activation"``.
        method: ``"gram"`` (eigendecomposition of the smaller Gram matrix), ``"svd"`` (plain thin
            SVD), or ``"auto"`` (``"gram"``).

    Returns:
        ``(U, S)`` in float64, ``S`` descending. ``U`` is ``[d, r]`` with ``d`` the dimension of the
        space; ``r = min(m, n)`` except on the Gram route with more rows than columns, where
        directions with a numerically zero singular value are dropped.

    Example:
        >>> U, S = left_svd(delta_w)                    # one decomposition, many energy thresholds
        >>> Q = U[:, : energy_rank(S, 0.9)]
    """
    C = _columns(M, layout)
    if centered:
        C = C - C.mean(dim=1, keepdim=True)
    if method == "svd":
        U, S, _ = torch.linalg.svd(C, full_matrices=False)
        return U, S
    if method not in ("auto", "gram"):
        raise ValueError(f"method={method!r}; expected 'auto', 'gram' or 'svd'")
    d, n = C.shape
    if d <= n:
        evals, evecs = torch.linalg.eigh(C @ C.T)
        return evecs.flip(1), evals.flip(0).clamp_min(0).sqrt()
    evals, V = torch.linalg.eigh(C.T @ C)
    S = evals.flip(0).clamp_min(0).sqrt()
    V = V.flip(1)
    tol = (S[0] if S.numel() else 0.0) * max(d, n) * torch.finfo(torch.float64).eps
    r = int((tol < S).sum())
    U = (C @ V[:, :r]) / S[:r]
    return U, S[:r]


def energy_rank(S: Float[Tensor, " r"], eta: float) -> int:
    """Smallest ``k`` whose top-``k`` singular values hold a fraction ``eta`` of the energy ``Σσ²``.

    ``k = min{k : Σ_{i<k} σ_i² ≥ η Σ σ²}`` (the paper's ``searchsorted(cumsum(σ²), η·total) + 1``).

    Args:
        S: singular values (any order; they are sorted descending).
        eta: energy fraction in ``(0, 1]``.

    Raises:
        ValueError: ``eta`` outside ``(0, 1]``, or every singular value is zero (no subspace).

    Example:
        >>> energy_rank(torch.tensor([3.0, 1.0, 0.0]), 0.9)   # 9 / 10 of the energy -> 1
        1
    """
    if not 0 < eta <= 1:
        raise ValueError(f"eta={eta}; expected an energy fraction in (0, 1]")
    S = torch.as_tensor(S).detach().to("cpu", torch.float64).flatten().sort(descending=True).values
    energy = S.square()
    total = float(energy.sum())
    if not total > 0:
        raise ValueError("all singular values are zero: a zero matrix spans no subspace")
    cum = energy.cumsum(0)
    k = int((cum < eta * total - 1e-12 * total).sum()) + 1
    return min(k, int(S.numel()))


def _basis(U: Tensor, S: Tensor, eta: float | None, k: int | None) -> Tensor:
    if (eta is None) == (k is None):
        raise ValueError(f"pass exactly one of eta= (energy fraction) or k= (rank); got eta={eta}, k={k}")
    if k is not None:
        if k < 1:
            raise ValueError(f"k={k}; expected a rank >= 1")
        return U[:, : min(k, U.shape[1])]
    return U[:, : energy_rank(S, eta)]


def left_basis(
    M: Float[Tensor, "m n"],
    *,
    eta: float | None = None,
    k: int | None = None,
    centered: bool = False,
    layout: Layout = "weight",
    method: Method = "auto",
) -> Float[Tensor, "d k"]:
    """Orthonormal basis of the top left singular subspace of ``M``, by energy fraction or rank.

    Args:
        M: ``[m, n]`` weight (basis in ``R^m``) or ``[n_samples, D]`` activations with
            ``layout="activation"`` (basis in ``R^D``).
        eta: keep the smallest ``k`` holding this energy fraction (see :func:`energy_rank`).
        k: keep exactly ``k`` directions (capped at ``min(m, n)``). Pass one of ``eta`` / ``k``.
        centered: subtract the mean spanning vector first.
        layout: ``"weight"`` or ``"activation"``.
        method: ``"auto"`` / ``"gram"`` / ``"svd"`` (same subspace; ``"gram"`` is faster).

    Returns:
        ``Q``: ``[d, k]`` float64 with orthonormal columns.

    Example:
        >>> Q = left_basis(acts, eta=0.5, layout="activation")     # acts [5000, 576] -> Q [576, k]
    """
    U, S = left_svd(M, centered=centered, layout=layout, method=method)
    if k is not None and k > U.shape[1] and U.shape[1] < min(M.shape):  # Gram dropped null directions
        U, S = left_svd(M, centered=centered, layout=layout, method="svd")
    return _basis(U, S, eta, k)


@dataclass(frozen=True, kw_only=True)
class MSOResult:
    """Mode Subspace Overlap of two subspaces and its random baseline.

    Attributes:
        mso: ``‖Q_aᵀ Q_b‖_F² / min(k_a, k_b)`` in ``[0, 1]``; the mean squared cosine of the
            principal angles.
        k_a, k_b: subspace dimensions.
        d: ambient dimension.
        baseline: ``max(k_a, k_b) / d``, the expected MSO of two independent uniformly random
            subspaces of these dimensions.
        eta: energy threshold used (None when ranks were given).
        centered: whether the data were centred.
    """

    mso: float
    k_a: int
    k_b: int
    d: int
    baseline: float
    eta: float | None = None
    centered: bool = False

    @property
    def ratio(self) -> float:
        """``mso / baseline``: how many times above chance."""
        return self.mso / self.baseline

    def __repr__(self) -> str:
        eta = f", eta={self.eta:g}" if self.eta is not None else ""
        return (
            f"MSOResult(mso={self.mso:.4f}, baseline={self.baseline:.4f} (x{self.ratio:.2f}), "
            f"k_a={self.k_a}, k_b={self.k_b}, d={self.d}{eta}, centered={self.centered})"
        )


def mso_from_bases(Qa: Float[Tensor, "d k_a"], Qb: Float[Tensor, "d k_b"]) -> MSOResult:
    """MSO of two orthonormal bases given as columns (e.g. from :func:`left_basis`)."""
    if Qa.ndim != 2 or Qb.ndim != 2 or Qa.shape[0] != Qb.shape[0]:
        raise ValueError(
            f"bases of shapes {tuple(Qa.shape)} and {tuple(Qb.shape)}: expected [d, k_a] and [d, k_b] "
            "with the same d"
        )
    ka, kb, d = Qa.shape[1], Qb.shape[1], Qa.shape[0]
    if min(ka, kb) == 0:
        raise ValueError("a basis with zero columns has no overlap")
    overlap = float((Qa.to(torch.float64).T @ Qb.to(torch.float64)).square().sum()) / min(ka, kb)
    return MSOResult(mso=overlap, k_a=ka, k_b=kb, d=d, baseline=max(ka, kb) / d)


def mso_at(
    Ua: Float[Tensor, "d r_a"], Sa: Float[Tensor, " r_a"], Ub: Float[Tensor, "d r_b"], Sb: Float[Tensor, " r_b"], eta: float
) -> MSOResult:
    """MSO of the energy-``eta`` subspaces of two decompositions from :func:`left_svd` (float64 ``U``).

    The ranks are :func:`energy_rank` of each ``S``; one SVD serves every ``eta`` of a sweep.
    """
    return mso_from_bases(Ua[:, : energy_rank(Sa, eta)], Ub[:, : energy_rank(Sb, eta)])


def mso(
    A: Float[Tensor, "m n_a"],
    B: Float[Tensor, "m n_b"],
    *,
    eta: float | None = None,
    k: int | None = None,
    centered: bool = False,
    layout: Layout = "weight",
) -> MSOResult:
    """Mode Subspace Overlap ``‖Q_aᵀQ_b‖_F² / min(k_a, k_b)`` with energy-threshold (or fixed) ranks.

    Args:
        A, B: two weight updates ``[m, n_a]`` / ``[m, n_b]`` (left spaces in ``R^m``) or, with
            ``layout="activation"``, two activation sets ``[n_a, D]`` / ``[n_b, D]``.
        eta: energy fraction for each rank (the paper's η). Pass one of ``eta`` / ``k``.
        k: fixed rank for both (capped at each matrix's size).
        centered: subtract each set's mean first (the paper runs uncentred; report both).
        layout: ``"weight"`` or ``"activation"``.

    Returns:
        :class:`MSOResult` with ``mso``, ``k_a``, ``k_b``, ``d`` and ``baseline = max(k_a, k_b)/d``.

    Example:
        >>> mso(delta_useful["model.layers.3.mlp.down_proj.weight"],
        ...     delta_harmful["model.layers.3.mlp.down_proj.weight"], eta=0.9)
        MSOResult(mso=0.31..., baseline=0.12... (x2.5...), ...)

    Gotcha: uncentred activations at small η have k = 1 near the mean-activation axis, which
    inflates MSO; compare with ``centered=True``.
    """
    Ca, Cb = _columns(A, layout, "A"), _columns(B, layout, "B")
    if Ca.shape[0] != Cb.shape[0]:
        axis = "row" if layout == "weight" else "column (feature)"
        raise ValueError(
            f"A {tuple(A.shape)} and B {tuple(B.shape)} differ in their {axis} dimension; with "
            f"layout={layout!r} the subspaces must live in the same space"
            + (" (activations? pass layout='activation')" if layout == "weight" else "")
        )
    Qa = left_basis(A, eta=eta, k=k, centered=centered, layout=layout)
    Qb = left_basis(B, eta=eta, k=k, centered=centered, layout=layout)
    r = mso_from_bases(Qa, Qb)
    return MSOResult(mso=r.mso, k_a=r.k_a, k_b=r.k_b, d=r.d, baseline=r.baseline, eta=eta, centered=centered)


def _orth(C: Tensor) -> Tensor:
    U, S, _ = torch.linalg.svd(C, full_matrices=False)
    tol = (S[0] if S.numel() else 0.0) * max(C.shape) * torch.finfo(torch.float64).eps
    return U[:, S > tol]


def principal_angles(
    A: Float[Tensor, "m p"], B: Float[Tensor, "m q"], *, layout: Layout = "weight"
) -> Float[Tensor, " r"]:
    """Principal angles (radians, ascending) between the spaces spanned by ``A`` and ``B``.

    With ``layout="weight"`` the spaces are the column spaces (as ``scipy.linalg.subspace_angles``,
    which returns the same angles in descending order); with ``layout="activation"`` the row spaces.
    ``r = min(rank A, rank B)``. Small angles use the sine formula, large ones the cosine formula
    (Knyazev & Argentati), so both ends are accurate.

    Example:
        >>> theta = principal_angles(left_basis(dA, k=8), left_basis(dB, k=8))
        >>> (theta.cos() ** 2).mean()                  # == mso(dA, dB, k=8).mso
    """
    Qa, Qb = _orth(_columns(A, layout, "A")), _orth(_columns(B, layout, "B"))
    if Qa.shape[0] != Qb.shape[0]:
        raise ValueError(f"A and B live in different spaces: R^{Qa.shape[0]} vs R^{Qb.shape[0]}")
    if Qa.shape[1] < Qb.shape[1]:
        Qa, Qb = Qb, Qa
    if Qb.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    cross = Qa.T @ Qb
    cos = torch.linalg.svdvals(cross).clamp(0, 1)  # descending -> ascending angles
    sin = torch.linalg.svdvals(Qb - Qa @ cross).clamp(0, 1).flip(0)  # ascending -> ascending angles
    return torch.where(cos.square() >= 0.5, torch.arcsin(sin), torch.arccos(cos))


def linear_cka(X: Float[Tensor, "n p"], Y: Float[Tensor, "n q"]) -> float:
    """Linear centred kernel alignment of two representations of the same ``n`` samples.

    ``CKA = ‖Ỹᵀ X̃‖_F² / (‖X̃ᵀ X̃‖_F ‖Ỹᵀ Ỹ‖_F)`` with column-centred ``X̃, Ỹ`` (Kornblith et al. 2019).
    Invariant to orthogonal transforms and isotropic scaling of either side, not to general
    invertible linear maps. The smaller of the feature-space and sample-space Gram forms is used.

    Example:
        >>> linear_cka(base_acts[:, 5], ft_acts[:, 5])      # [n, d_model] each -> float in [0, 1]
    """
    X, Y = _columns(X, "weight", "X"), _columns(Y, "weight", "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples and Y has {Y.shape[0]}; CKA needs the same samples")
    X = X - X.mean(0, keepdim=True)
    Y = Y - Y.mean(0, keepdim=True)
    n = X.shape[0]
    if n <= X.shape[1] + Y.shape[1]:
        Kx, Ky = X @ X.T, Y @ Y.T
        num, den = float((Kx * Ky).sum()), float(Kx.norm() * Ky.norm())
    else:
        num = float((Y.T @ X).square().sum())
        den = float((X.T @ X).norm() * (Y.T @ Y).norm())
    if den == 0:
        raise ValueError("a representation is constant across samples; CKA is undefined")
    return num / den


def diff_of_means(
    pos: Float[Tensor, "n_pos *layer d"], neg: Float[Tensor, "n_neg *layer d"], *, normalize: bool = True
) -> Float[Tensor, "*layer d"]:
    """Difference-of-means direction ``mean(pos) - mean(neg)`` over the first (sample) axis.

    Works on ``[n, d]`` or stacked ``[n, layer, d]`` activations (one direction per layer).

    Args:
        pos, neg: activations of the two classes.
        normalize: return unit vectors (along the last axis).

    Example:
        >>> v = diff_of_means(acts[labels == 1], acts[labels == 0])      # [layer, d]
    """
    if pos.shape[1:] != neg.shape[1:]:
        raise ValueError(f"pos {tuple(pos.shape)} and neg {tuple(neg.shape)} differ after the sample axis")
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError(f"need samples of both classes; got {pos.shape[0]} and {neg.shape[0]}")
    v = pos.to(torch.float64).mean(0) - neg.to(torch.float64).mean(0)
    if not normalize:
        return v
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("the two class means coincide; the difference-of-means direction is zero")
    return v / norm


def cosine(u: Float[Tensor, "*batch d"], v: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch"]:
    """Cosine similarity along the last axis (broadcasting), in float64.

    Raises:
        ValueError: a zero vector (cosine undefined).

    Example:
        >>> cosine(probe_base.directions_tensor(), probe_ft.directions_tensor())   # [layer]
    """
    u, v = torch.as_tensor(u).to(torch.float64), torch.as_tensor(v).to(torch.float64)
    nu, nv = u.norm(dim=-1), v.norm(dim=-1)
    if bool((nu == 0).any()) or bool((nv == 0).any()):
        raise ValueError("cosine of a zero vector is undefined")
    return (u * v).sum(-1) / (nu * nv)
