"""Weight deltas ΔW = W_b − W_a, per tensor, in fp32, from unprocessed Hugging Face weights.

A :class:`WeightDelta` is a ``Mapping[str, Tensor]``: ``delta[name]`` is the dense fp32 ΔW of
that tensor in its stored layout. A delta read from a peft LoRA adapter keeps each update
factored (``B·A·scaling``) and densifies it only when asked. The delta also remembers where it
came from — a fingerprint of both endpoints — so a projection can find its reference weights on a
live model and a subspace basis from another model family is rejected.

Example:
    >>> import deltalens as dl
    >>> d = dl.weight_delta("ckpts/aligned", "ckpts/harmful")      # W_harmful − W_aligned
    >>> d["model.layers.0.mlp.down_proj.weight"].shape
    torch.Size([64, 128])
    >>> d.global_norm(), d.names("2d", include_embeddings=False)[:2]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from deltalens.hashing import weight_hash
from deltalens.hooks.weights import is_embedding, tensor_group, tensor_layer
from deltalens.interventions.sources import DeltaSource, Side, read_side

if TYPE_CHECKING:
    import pandas as pd

N_SAMPLES = 64
"""Weight values sampled per tensor and endpoint to fingerprint a delta's two models."""


@dataclass(frozen=True)
class LowRank:
    """A low-rank update ``B @ A`` in ``[out, in]`` orientation (LoRA scaling folded into ``B``).

    Attributes:
        B: ``[out, r]``.
        A: ``[r, in]``.
    """

    B: Float[Tensor, "out r"]
    A: Float[Tensor, "r in"]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    @property
    def rank(self) -> int:
        return self.B.shape[1]

    def dense(self) -> Float[Tensor, "out in"]:
        return self.B @ self.A

    def sq_norm(self) -> float:
        """‖B A‖²_F without forming ``B A``."""
        return float(((self.B.T.double() @ self.B.double()) * (self.A.double() @ self.A.T.double())).sum())

    def __neg__(self) -> LowRank:
        return LowRank(-self.B, self.A)

    def __add__(self, other: LowRank) -> LowRank:
        return LowRank(torch.cat([self.B, other.B], 1), torch.cat([self.A, other.A], 0))

    def __repr__(self) -> str:
        return f"LowRank(shape={self.shape}, rank={self.rank})"


Entry = Tensor | LowRank | None


def sample_index(shape: tuple[int, ...]) -> Tensor:
    """Flat indices of the values sampled to fingerprint a tensor of ``shape`` (deterministic)."""
    n = 1
    for s in shape:
        n *= s
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.unique(torch.linspace(0, n - 1, steps=min(N_SAMPLES, n), dtype=torch.float64).round().long())


def _digest(samples: dict[str, Tensor] | None) -> str | None:
    if samples is None:
        return None
    return weight_hash(samples)[:16]


@dataclass(frozen=True, kw_only=True)
class DeltaReference:
    """Where a delta came from: its two endpoints (``a`` is the reference, ``b`` the target).

    Attributes:
        a, b: descriptions (path, checkpoint, adapter) of the two endpoints.
        fingerprint_a, fingerprint_b: short hashes of sampled weight values of each endpoint
            (None where an endpoint's absolute weights are unknown).
        samples_a, samples_b: the sampled values per tensor (used to recognise the endpoints).
    """

    a: str
    b: str
    fingerprint_a: str | None
    fingerprint_b: str | None
    samples_a: dict[str, Tensor] | None = field(default=None, repr=False, compare=False)
    samples_b: dict[str, Tensor] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples_a"), d.pop("samples_b")
        return d


class WeightDelta(Mapping[str, Tensor]):
    """Per-tensor weight update ``W_b − W_a`` (fp32). Build it with :func:`weight_delta`.

    ``delta[name]`` is dense, in the tensor's stored layout. :meth:`oriented` gives the update in
    ``[out, in]`` orientation (GPT-2 ``Conv1D`` weights transposed), kept low-rank where it is.

    Attributes:
        reference: :class:`DeltaReference` (endpoint descriptions and fingerprints).
        transposed: names of tensors stored ``[in, out]`` (GPT-2 ``Conv1D``).

    Example:
        >>> d = dl.weight_delta(base, ft)
        >>> d.norms()["model.layers.0.self_attn.q_proj.weight"], d.global_norm()
    """

    def __init__(
        self,
        entries: dict[str, Entry],
        shapes: dict[str, tuple[int, ...]],
        reference: DeltaReference,
        transposed: frozenset[str] = frozenset(),
    ) -> None:
        self._entries = entries
        self._shapes = shapes
        self.reference = reference
        self.transposed = frozenset(transposed) & set(entries)
        self._cache: dict[tuple, Any] = {}

    # Mapping protocol ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> Float[Tensor, "..."]:
        e = self._entry(name)
        if e is None:
            return torch.zeros(self._shapes[name])
        if isinstance(e, LowRank):
            d = e.dense()
            return d.T.contiguous() if name in self.transposed else d
        return e

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            raise KeyError(
                f"{name!r} is not a tensor of this delta" + (f"; did you mean {close}?" if close else "")
            ) from None

    # Views ----------------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Stored shape of every tensor."""
        return dict(self._shapes)

    def oriented_shape(self, name: str) -> tuple[int, ...]:
        s = self._shapes[name]
        return (s[1], s[0]) if name in self.transposed else s

    def oriented(self, name: str) -> Entry:
        """The update in ``[out, in]`` orientation: a tensor, a :class:`LowRank`, or None (zero)."""
        e = self._entry(name)
        if isinstance(e, Tensor) and name in self.transposed:
            return e.T
        return e

    def is_zero(self, name: str) -> bool:
        return self._entry(name) is None

    def is_factored(self, name: str) -> bool:
        return isinstance(self._entry(name), LowRank)

    def factors(self, name: str) -> tuple[Tensor, Tensor] | None:
        """``(B·scaling, A)`` of a low-rank tensor in ``[out, in]`` orientation, else None."""
        e = self._entry(name)
        return (e.B, e.A) if isinstance(e, LowRank) else None

    def names(self, kind: Literal["2d", "1d", "all"] = "all", include_embeddings: bool = True) -> list[str]:
        """Tensor names, optionally only 2-D or 1-D ones and without (un)embeddings."""
        if kind not in ("2d", "1d", "all"):
            raise ValueError(f"kind must be '2d', '1d' or 'all', got {kind!r}")
        want = {"2d": 2, "1d": 1}.get(kind)
        return [
            n
            for n in self._entries
            if (want is None or len(self._shapes[n]) == want) and (include_embeddings or not is_embedding(n))
        ]

    # Norms ----------------------------------------------------------------------------------
    def sq_norm(self, name: str) -> float:
        """‖ΔW‖²_F of one tensor (fp64 accumulation, low-rank tensors without densifying)."""
        e = self._entry(name)
        if e is None:
            return 0.0
        if isinstance(e, LowRank):
            return e.sq_norm()
        return float(torch.linalg.vector_norm(e, dtype=torch.float64) ** 2)

    def norms(self) -> dict[str, float]:
        """Frobenius norm of every tensor's update."""
        return {n: self.sq_norm(n) ** 0.5 for n in self._entries}

    def global_norm(self, names: list[str] | None = None) -> float:
        """``sqrt(Σ‖ΔW‖²_F)`` over ``names`` (default: all tensors)."""
        return sum(self.sq_norm(n) for n in (self._entries if names is None else names)) ** 0.5

    def summary(self) -> pd.DataFrame:
        """One row per tensor: ``tensor, group, layer, shape, norm, factored, rank``."""
        import pandas as pd

        rows = []
        for n, e in self._entries.items():
            rows.append(
                dict(
                    tensor=n,
                    group=tensor_group(n),
                    layer=tensor_layer(n),
                    shape=tuple(self._shapes[n]),
                    norm=self.sq_norm(n) ** 0.5,
                    factored=isinstance(e, LowRank),
                    rank=e.rank if isinstance(e, LowRank) else None,
                )
            )
        return pd.DataFrame(rows)

    def densify(self) -> WeightDelta:
        """A copy with every low-rank tensor made dense (same reference)."""
        entries = {n: (self[n] if isinstance(e, LowRank) else e) for n, e in self._entries.items()}
        return WeightDelta(entries, dict(self._shapes), self.reference, self.transposed)

    def clear_cache(self) -> None:
        """Drop the cached decompositions (SVDs) computed for subspace bases."""
        self._cache.clear()

    def __repr__(self) -> str:
        n2 = sum(len(s) == 2 for s in self._shapes.values())
        nf = sum(isinstance(e, LowRank) for e in self._entries.values())
        nz = sum(e is None for e in self._entries.values())
        extra = (f", {nf} low-rank" if nf else "") + (f", {nz} zero" if nz else "")
        return (
            f"WeightDelta(b={self.reference.b!r} − a={self.reference.a!r}; {len(self)} tensors "
            f"({n2} 2-D{extra}), global_norm={self.global_norm():.4g})"
        )


# ---------------------------------------------------------------------------------- building
def _arch_error(a: Side, b: Side, sa: dict[str, tuple], sb: dict[str, tuple]) -> ValueError | None:
    missing = [k for k in sa if k not in sb]
    extra = [k for k in sb if k not in sa]
    bad = [k for k in sa if k in sb and sa[k] != sb[k]]
    if not (missing or extra or bad):
        return None
    parts = []
    if bad:
        k = bad[0]
        parts.append(
            f"first shape mismatch: {k!r} is {sa[k]} in a but {sb[k]} in b ({len(bad)} tensors differ)"
        )
    if missing:
        parts.append(f"{len(missing)} tensors of a are missing from b, first {missing[:3]}")
    if extra:
        parts.append(f"{len(extra)} tensors of b are not in a, first {extra[:3]}")
    return ValueError(
        f"cannot take a weight delta between different architectures (a = {a.label}, b = {b.label}): "
        + "; ".join(parts)
        + ". Expected two checkpoints of the same model family with identical tensor names and shapes."
    )


def _weights_of(side: Side, base: Side | None, role: str) -> Side:
    if not side.is_adapter:
        return side
    if base is None or base.is_adapter:
        raise ValueError(
            f"{role} is a LoRA adapter ({side.label}) but no dense base weights are known for it: "
            "pass base=<the model the adapter was trained on>"
        )
    return base


def _not_in_base(side: Side, name: str) -> ValueError:
    tied = (
        "; the base stores no separate unembedding (tied word embeddings?), and an update to one of "
        "two tied tensors is not a delta over the base's tensors"
        if tensor_group(name) == "unembedding"
        else ""
    )
    return ValueError(f"adapter {side.label}: {name!r} is not a tensor of its base model{tied}")


def _check_lora(side: Side, dense: dict[str, Tensor], transposed: set[str]) -> None:
    for name, (B, A) in side.lora.items():
        if name not in dense:
            raise _not_in_base(side, name)
        s = dense[name].shape
        want = (s[1], s[0]) if name in transposed else tuple(s)
        if (B.shape[0], A.shape[1]) != want:
            raise ValueError(
                f"adapter {side.label}: {name!r} has LoRA shape {(B.shape[0], A.shape[1])} but the base "
                f"weight is {tuple(s)}; the adapter was trained for a different base model"
            )
    for name in list(side.lora_full) + list(side.lora_add):
        if name not in dense:
            raise _not_in_base(side, name)


def _endpoint_samples(side: Side, dense: dict[str, Tensor], transposed: set[str]) -> dict[str, Tensor]:
    out = {}
    for name, t in dense.items():
        idx = sample_index(tuple(t.shape))
        w = side.lora_full.get(name, t).reshape(-1)[idx].clone()
        if name in side.lora:
            B, A = side.lora[name]
            rows, cols = idx // t.shape[1], idx % t.shape[1]
            if name in transposed:
                rows, cols = cols, rows
            w += (B[rows] * A[:, cols].T).sum(-1)
        if name in side.lora_add:
            w += side.lora_add[name].reshape(-1)[idx]
        out[name] = w
    return out


def _dense_part(name: str, sa: Side, sb: Side, da: Side, db: Side) -> Tensor | None:
    """The dense part of one tensor's ΔW: ``W_b − W_a`` (None where exactly zero) plus additive LoRA terms."""
    if da is db and name not in sa.lora_full and name not in sb.lora_full:
        dense_part = None
    else:
        wa = sa.lora_full.get(name, da.dense[name])
        wb = sb.lora_full.get(name, db.dense[name])
        dense_part = wb - wa
        if not torch.count_nonzero(dense_part):
            dense_part = None
    for side, sign in ((sb, 1.0), (sa, -1.0)):
        if name in side.lora_add:
            add = sign * side.lora_add[name]
            dense_part = add if dense_part is None else dense_part + add
    return dense_part


def _low_part(name: str, sa: Side, sb: Side) -> LowRank | None:
    """The LoRA factors of one tensor's ΔW: b's minus a's, stacked (None if neither side has any)."""
    low: LowRank | None = None
    for side, sign in ((sb, 1), (sa, -1)):
        if name in side.lora:
            term = LowRank(*side.lora[name])
            term = term if sign > 0 else -term
            low = term if low is None else low + term
    return low


def _tensor_entry(name: str, sa: Side, sb: Side, da: Side, db: Side, transposed: set[str]) -> Entry:
    """One tensor's ΔW: factored where it is purely low-rank, else dense (None = zero)."""
    dense_part = _dense_part(name, sa, sb, da, db)
    low = _low_part(name, sa, sb)
    if low is not None and dense_part is not None:
        dl = low.dense()
        return dense_part + (dl.T if name in transposed else dl)
    return low if low is not None else dense_part


def _reference(sa: Side, sb: Side, da: Side, db: Side, transposed: set[str]) -> DeltaReference:
    """Describe and fingerprint the two endpoints (an adapter's endpoint is its base plus the adapter)."""
    samples_a = _endpoint_samples(sa, da.dense, transposed)
    samples_b = _endpoint_samples(sb, db.dense, transposed)
    return DeltaReference(
        a=sa.label if not sa.is_adapter else f"{da.label} + adapter {sa.label}",
        b=sb.label if not sb.is_adapter else f"{db.label} + adapter {sb.label}",
        fingerprint_a=_digest(samples_a),
        fingerprint_b=_digest(samples_b),
        samples_a=samples_a,
        samples_b=samples_b,
    )


def weight_delta(a: DeltaSource, b: DeltaSource, *, base: DeltaSource | None = None) -> WeightDelta:
    """Per-tensor ``ΔW = W_b − W_a`` in fp32, from unprocessed weights.

    Args:
        a: the reference endpoint: a ``HookedModel`` (its ``state_dict()``), a Hugging Face
            model, a state dict, a safetensors checkpoint directory / file, or a peft LoRA
            adapter directory.
        b: the target endpoint, same choices.
        base: dense weights an adapter argument sits on. By default an adapter is read as an
            update of the other (dense) argument, so ``weight_delta(W_A, lora_dir)`` is the
            adapter's own ``B·A·scaling``, kept factored.

    Returns:
        A :class:`WeightDelta` with one entry per floating-point tensor (tied weights once).

    Raises:
        ValueError: the two sides differ in tensor names or shapes (the message names the
            first mismatching tensors), or an adapter does not fit its base.
        FileNotFoundError / TypeError: an unreadable argument.

    Example:
        >>> d_align = dl.weight_delta("ckpts/base", "ckpts/aligned")          # Δ_A = W_A − W_0
        >>> d_lora = dl.weight_delta(aligned, "ckpts/lora-harmful")           # factored B·A·s
        >>> d_lora.factors("model.layers.0.self_attn.q_proj.weight")[0].shape  # (out, r)
    """
    sa, sb = read_side(a, "a"), read_side(b, "b")
    sbase = read_side(base, "base") if base is not None else None
    da = _weights_of(sa, sbase or (sb if not sb.is_adapter else None), "a")
    db = _weights_of(sb, sbase or (sa if not sa.is_adapter else None), "b")
    assert da.dense is not None and db.dense is not None
    shapes_a = {k: tuple(v.shape) for k, v in da.dense.items()}
    err = _arch_error(da, db, shapes_a, {k: tuple(v.shape) for k, v in db.dense.items()})
    if err is not None:
        raise err
    transposed = set(da.transposed) | set(db.transposed) | sa.transposed | sb.transposed
    for side, dense in ((sa, da.dense), (sb, db.dense)):
        _check_lora(side, dense, transposed)
    entries = {name: _tensor_entry(name, sa, sb, da, db, transposed) for name in da.dense}
    return WeightDelta(entries, shapes_a, _reference(sa, sb, da, db, transposed), frozenset(transposed))
