"""Subspace bases of a weight delta, per tensor: top-k, by energy, RandomK and Random.

For a 2-D tensor (oriented ``[out, in]``) a basis is ``L``, ``[out, k]`` orthonormal columns in
the layer's output space:

* :func:`top_k` — the top-k left singular vectors, ``k = max(1, round(frac · min(m, n)))``;
* :func:`energy` — the smallest top-k reaching a fraction η of ``Σσ²``;
* :func:`random_k` — k singular vectors of the same delta drawn at random (seeded);
* :func:`random_like` — the top-k left singular vectors of a seeded Gaussian matrix of the
  same shape (an essentially Haar-random k-dim subspace).

A 1-D tensor (norm gain, bias) gets the span of its delta (Random: a seeded random direction),
as the paper does. A tensor whose delta is exactly zero gets an empty basis for every method.

Each SVD runs once per (tensor, delta) — exact ``torch.linalg.svd`` by default, randomized only
when asked — and is cached on the :class:`~deltalens.interventions.delta.WeightDelta`, so
bases for other fractions, methods and seeds reuse it.

Example:
    >>> d_align = dl.weight_delta(w0, wa)
    >>> L = top_k(d_align, frac=0.25)
    >>> L.vectors("model.layers.0.mlp.down_proj.weight").shape      # [out, k]
    >>> R = random_like(d_align, frac=0.25, seed=1)                  # same k per tensor
"""

from __future__ import annotations

import hashlib
import numbers
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from deltalens.interventions.delta import DeltaReference, LowRank, WeightDelta

Method = Literal["topk", "energy", "randomk", "random"]
METHODS: tuple[str, ...] = ("topk", "energy", "randomk", "random")
OverRank = Literal["error", "clip"]


def tensor_seed(seed: int, name: str, salt: str) -> int:
    """A stable 63-bit seed per (seed, tensor name, method), independent of Python's hash salt."""
    h = hashlib.blake2b(f"{salt}:{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def structural_rank(delta: WeightDelta, name: str) -> int:
    """How many singular vectors a tensor's delta offers: 0 if zero, the LoRA rank, else min(m, n)."""
    e = delta.oriented(name)
    shape = delta.oriented_shape(name)
    if e is None:
        return 0
    if len(shape) == 1:
        return 1
    full = min(shape)
    return min(e.rank, full) if isinstance(e, LowRank) else full


def delta_svd(
    delta: WeightDelta, name: str, dtype: torch.dtype = torch.float32
) -> tuple[Float[Tensor, "out r"], Float[Tensor, " r"]]:
    """Exact left singular vectors and values of one 2-D tensor's delta (cached on ``delta``).

    A low-rank delta ``B A`` is decomposed without densifying: ``B = Q R``, ``svd(R A)``. (Not to be
    confused with :func:`deltalens.probes.overlap.left_svd`, which decomposes a bare matrix.)

    Args:
        delta: the weight delta.
        name: a 2-D tensor of ``delta`` whose update is not zero.
        dtype: the SVD's dtype.

    Returns:
        ``(U [out, r], S [r])``: left singular vectors (``[out, in]`` orientation) and values, descending.

    Raises:
        ValueError: the tensor's update is zero or not 2-D.
    """
    key = ("svd", name, dtype)
    if key not in delta._cache:
        e = delta.oriented(name)
        if e is None or len(delta.oriented_shape(name)) != 2:
            raise ValueError(f"{name!r}: delta_svd needs a non-zero 2-D delta")
        if isinstance(e, LowRank) and e.rank < min(e.shape):
            q, r = torch.linalg.qr(e.B.to(dtype))
            u, s, _ = torch.linalg.svd(r @ e.A.to(dtype), full_matrices=False)
            u = q @ u
        else:
            mat = e.dense() if isinstance(e, LowRank) else e
            u, s, _ = torch.linalg.svd(mat.to(dtype), full_matrices=False)
        delta._cache[key] = (u, s)
    return delta._cache[key]


def _randomized_left(delta: WeightDelta, name: str, k: int, dtype: torch.dtype) -> Tensor:
    key = ("svd_lowrank", name, k, dtype)
    if key not in delta._cache:
        e = delta.oriented(name)
        mat = (e.dense() if isinstance(e, LowRank) else e).to(dtype)
        q = min(k + 8, min(mat.shape))
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(tensor_seed(0, name, "lowrank"))
            u, _, _ = torch.svd_lowrank(mat, q=q, niter=4)
        delta._cache[key] = u[:, :k]
    return delta._cache[key]


def _gaussian_left(delta: WeightDelta, name: str, seed: int, dtype: torch.dtype) -> Tensor:
    key = ("gauss", name, seed, dtype)
    if key not in delta._cache:
        g = torch.Generator().manual_seed(tensor_seed(seed, name, "random"))
        shape = delta.oriented_shape(name)
        x = torch.randn(shape, generator=g, dtype=dtype)
        if len(shape) == 1:
            u = (x / x.norm())[:, None]
        else:
            u, _, _ = torch.linalg.svd(x, full_matrices=False)
        delta._cache[key] = u
    return delta._cache[key]


_FUNCTION = {"topk": "top_k", "energy": "energy", "randomk": "random_k", "random": "random_like"}
"""Basis method -> the public function that builds it (named in error messages)."""

_PAPER_FRACS = "the paper's sweep is 0.01, 0.25, 0.5, 0.75, 0.99"


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _real(value: Any) -> bool:
    """A real number and not a bool (``True`` is an int in Python, never a fraction here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _checked_rule(
    method: str, frac: Any, k: Any, eta: Any, seed: Any
) -> tuple[float | None, int | None, float | None, int | None]:
    """``(frac, k, eta, seed)`` as plain Python numbers, or a ValueError naming the argument.

    Checked before any SVD: a fraction / η must be a real number in (0, 1] (not a string or a
    bool), ``k`` a positive integer, ``seed`` an integer.
    """
    fn = _FUNCTION[method]
    if method == "energy":
        if eta is None or not _real(eta) or not 0 < eta <= 1:
            raise ValueError(
                f"{fn}: eta must be in (0, 1] (the fraction of each tensor's energy Σσ² to keep), "
                f"got {_shown(eta)}"
            )
        eta = float(eta)
    elif (frac is None) == (k is None):
        raise ValueError(f"{fn}: pass exactly one of frac= or k= (got frac={frac!r}, k={k!r})")
    if frac is not None:
        if not _real(frac) or not 0 < frac <= 1:
            raise ValueError(
                f"{fn}: frac must be in (0, 1] (a number: the fraction of each tensor's rank min(m, n)), "
                f"got {_shown(frac)}; {_PAPER_FRACS}"
            )
        frac = float(frac)
    if k is not None:
        if not _integer(k) or k < 1:
            raise ValueError(f"{fn}: k must be a positive int (vectors per tensor), got {_shown(k)}")
        k = int(k)
    if seed is not None:
        if not _integer(seed):
            raise ValueError(f"{fn}: seed must be an int, got {_shown(seed)}")
        seed = int(seed)
    return frac, k, eta, seed


class Basis:
    """Per-tensor orthonormal bases from one delta. Build with :func:`top_k`, :func:`energy`,
    :func:`random_k` or :func:`random_like`.

    Attributes:
        method: ``"topk"``, ``"energy"``, ``"randomk"`` or ``"random"``.
        frac, k_fixed, eta, seed: the rule that set each tensor's k.
        source: the :class:`DeltaReference` of the delta it came from (endpoint fingerprints).
        shapes: oriented ``[out, in]`` shapes of the source delta's tensors.

    Example:
        >>> L = top_k(d_align, frac=0.25)
        >>> L.k("model.layers.0.self_attn.o_proj.weight"), L.vectors("model.norm.weight").shape
    """

    def __init__(
        self,
        delta: WeightDelta,
        *,
        method: Method,
        frac: float | None = None,
        k: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        svd: Literal["exact", "randomized"] = "exact",
        dtype: torch.dtype = torch.float32,
        over_rank: OverRank = "error",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown basis method {method!r}; expected one of {METHODS}")
        if svd not in ("exact", "randomized"):
            raise ValueError(f"svd must be 'exact' or 'randomized', got {svd!r}")
        if svd == "randomized" and method != "topk":
            raise ValueError("svd='randomized' is only available for top_k")
        if over_rank not in ("error", "clip"):
            raise ValueError(f"over_rank must be 'error' or 'clip', got {over_rank!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"{_FUNCTION[method]}: dtype must be torch.float32 or torch.float64, got {dtype!r}"
            )
        frac, k, eta, seed = _checked_rule(method, frac, k, eta, seed)
        self._delta = delta
        self.method, self.frac, self.k_fixed, self.eta = method, frac, k, eta
        self.seed, self.svd, self.dtype, self.over_rank = seed, svd, dtype, over_rank
        self.source: DeltaReference = delta.reference
        self.shapes = {n: delta.oriented_shape(n) for n in delta}
        self._ks = {n: self._k_rule(n) for n in delta}

    # k per tensor -----------------------------------------------------------------------
    def _k_rule(self, name: str) -> int:
        shape = self.shapes[name]
        avail = structural_rank(self._delta, name)
        if avail == 0 or len(shape) != 2:
            return min(avail, 1)
        if self.method == "energy":
            _, s = delta_svd(self._delta, name, self.dtype)
            e = (s.double() ** 2).cumsum(0)
            return min(int(torch.searchsorted(e, self.eta * e[-1]).item()) + 1, avail)
        want = self.k_fixed if self.k_fixed is not None else max(1, round(self.frac * min(shape)))
        if want > avail:
            if self.over_rank == "clip":
                return avail
            what = "a LoRA update of rank" if self._delta.is_factored(name) else "rank at most"
            raise ValueError(
                f"{self.method}: k={want} is larger than the rank of {name!r} ({what} {avail}, shape "
                f"{tuple(shape)}); use a smaller k / frac, over_rank='clip', or delta.densify() for the "
                "paper's arbitrary completion"
            )
        return want

    def k(self, name: str) -> int:
        """The number of basis vectors of tensor ``name``."""
        return self._ks[name]

    @property
    def ks(self) -> dict[str, int]:
        return dict(self._ks)

    @property
    def names(self) -> list[str]:
        return list(self._ks)

    def __contains__(self, name: object) -> bool:
        return name in self._ks

    # vectors ----------------------------------------------------------------------------
    def ordered_parts(self, name: str) -> tuple[Float[Tensor, "out r"], Tensor | None]:
        """``(vectors, order)``: the candidate vectors and the method's order over their columns
        (None = as they are). The basis is ``vectors[:, order[:k]]``. TopK and RandomK share
        ``vectors`` (the cached singular vectors), so coefficients against them can be shared too."""
        d, shape = self._delta, self.shapes[name]
        if structural_rank(d, name) == 0:
            return torch.zeros(shape[0], 0, dtype=self.dtype), None
        if self.method == "random":
            return _gaussian_left(d, name, self.seed or 0, self.dtype), None
        if len(shape) == 1:
            key = ("span", name, self.dtype)
            if key not in d._cache:
                v = d.oriented(name).to(self.dtype)
                d._cache[key] = (v / v.norm())[:, None]
            return d._cache[key], None
        if self.svd == "randomized":
            return _randomized_left(d, name, self._ks[name], self.dtype), None
        u, _ = delta_svd(d, name, self.dtype)
        r = structural_rank(d, name)
        if self.method == "randomk":
            g = torch.Generator().manual_seed(tensor_seed(self.seed or 0, name, "randomk"))
            return u, torch.randperm(r, generator=g)
        return u, None if r == u.shape[1] else torch.arange(r)

    def ordered(self, name: str) -> Float[Tensor, "out r"]:
        """All candidate vectors of ``name`` in the method's order; the basis is the first k."""
        u, order = self.ordered_parts(name)
        return u if order is None else u[:, order]

    def vectors(self, name: str) -> Float[Tensor, "out k"]:
        """The basis of tensor ``name``: ``[out, k]`` orthonormal columns (1-D: ``[n, 0 or 1]``)."""
        if name not in self._ks:
            raise KeyError(f"{name!r} is not a tensor of this basis's delta ({len(self._ks)} tensors)")
        return self.ordered(name)[:, : self._ks[name]]

    def __getitem__(self, name: str) -> Float[Tensor, "out k"]:
        return self.vectors(name)

    def replace(self, *, frac: float | None = None, k: int | None = None, eta: float | None = None) -> Basis:
        """The same method, seed and delta at another frac / k / η (shares the cached SVDs)."""
        return Basis(
            self._delta,
            method=self.method,
            frac=frac,
            k=k,
            eta=eta,
            seed=self.seed,
            svd=self.svd,
            dtype=self.dtype,
            over_rank=self.over_rank,
        )

    @property
    def fingerprint(self) -> str:
        """Short id of the source delta's endpoints (``fingerprint_a/fingerprint_b``)."""
        return f"{(self.source.fingerprint_a or '?')[:8]}/{(self.source.fingerprint_b or '?')[:8]}"

    def describe(self) -> str:
        rule = (
            f"frac={self.frac}"
            if self.frac is not None
            else f"k={self.k_fixed}"
            if self.k_fixed
            else f"eta={self.eta}"
        )
        return f"{self.method}({rule}" + (f", seed={self.seed})" if self.seed is not None else ")")

    def __repr__(self) -> str:
        two = [n for n, s in self.shapes.items() if len(s) == 2]
        tot = sum(self._ks[n] for n in two)
        empty = sum(self._ks[n] == 0 for n in self._ks)
        return (
            f"Basis({self.describe()}; {len(self._ks)} tensors, Σk={tot} over {len(two)} 2-D"
            + (f", {empty} empty" if empty else "")
            + f"; from b={self.source.b!r} − a={self.source.a!r}, fingerprint {self.fingerprint})"
        )


def top_k(
    delta: WeightDelta,
    frac: float | None = None,
    *,
    k: int | None = None,
    svd: Literal["exact", "randomized"] = "exact",
    dtype: torch.dtype = torch.float32,
    over_rank: OverRank = "error",
) -> Basis:
    """Top-k left singular vectors of each 2-D tensor's delta; 1-D tensors: the delta's span.

    Args:
        delta: the update whose subspace is wanted (e.g. Δ_A = W_A − W_0).
        frac: fraction of each tensor's rank; ``k = max(1, round(frac · min(m, n)))``, frac in (0, 1].
        k: the same k for every 2-D tensor instead.
        svd: ``"exact"`` (``torch.linalg.svd``) or ``"randomized"`` (``torch.svd_lowrank``).
        dtype: ``torch.float32`` or ``torch.float64`` for the SVD.
        over_rank: a k above a tensor's rank (a LoRA's r) raises (``"error"``) or is clipped.

    Raises:
        ValueError: frac outside (0, 1], k < 1, or k larger than a tensor's rank.

    Example:
        >>> L = top_k(d_align, frac=0.25)          # the paper's L_k at 25 % of the rank
    """
    return Basis(delta, method="topk", frac=frac, k=k, svd=svd, dtype=dtype, over_rank=over_rank)


def energy(delta: WeightDelta, eta: float, *, dtype: torch.dtype = torch.float32) -> Basis:
    """Per tensor, the smallest top-k whose singular values reach ``eta`` of ``Σσ²``.

    Example:
        >>> energy(d_align, 0.9).ks["model.layers.0.mlp.up_proj.weight"]
    """
    return Basis(delta, method="energy", eta=eta, dtype=dtype)


def random_k(
    delta: WeightDelta,
    frac: float | None = None,
    *,
    k: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    over_rank: OverRank = "error",
) -> Basis:
    """k singular vectors of the same delta chosen at random (seeded; the paper's RandomK).

    The choice is the first k of one seeded permutation per tensor, so bases for growing k are nested.

    Example:
        >>> R = random_k(d_align, frac=0.25, seed=0)
    """
    return Basis(delta, method="randomk", frac=frac, k=k, seed=seed, dtype=dtype, over_rank=over_rank)


def random_like(
    delta: WeightDelta,
    frac: float | None = None,
    *,
    k: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    over_rank: OverRank = "error",
) -> Basis:
    """Top-k left singular vectors of a seeded Gaussian matrix shaped like each tensor (Random).

    k per tensor is the one :func:`top_k` would use on ``delta``; 1-D tensors get a seeded random
    direction.

    Example:
        >>> R = random_like(d_align, frac=0.25, seed=0)
    """
    return Basis(delta, method="random", frac=frac, k=k, seed=seed, dtype=dtype, over_rank=over_rank)
