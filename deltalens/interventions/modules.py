"""Which weight tensors an edit or a diagnostic covers: groups of HF tensor names and a module filter.

Tensor names are the unprocessed Hugging Face ones; their group (``embedding``, ``unembedding``,
``attn``, ``mlp``, ``norm``, ``other``) and block come from :mod:`deltalens.hooks.weights`.

Example:
    >>> select_names(delta, "attn")                                   # attention matrices only
    >>> select_names(delta, ModuleFilter(groups=("mlp",), layers="2:4"))
    >>> select_names(delta, ModuleFilter(embeddings=False))           # everything but (un)embeddings
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from deltalens.hooks.weights import GROUPS, tensor_group, tensor_layer

PRESETS: dict[str, tuple[str, ...]] = {
    "all": GROUPS,
    "blocks": ("attn", "mlp", "norm", "other"),
    "attn": ("attn",),
    "mlp": ("mlp",),
    "attn_mlp": ("attn", "mlp"),
    "embeddings": ("embedding", "unembedding"),
}
"""String shorthands accepted wherever a module filter is."""


@dataclass(frozen=True, kw_only=True)
class ModuleFilter:
    """Select weight tensors by group, block range and dimensionality.

    Attributes:
        groups: groups to keep (see :data:`GROUPS`); default all.
        layers: blocks to keep, as for :func:`deltalens.hooks.names.parse_layers` (``"2:5"``,
            ``[1, 3]``, ``"65-90%"``) or None for all. Tensors outside blocks (embeddings, final
            norm, ``lm_head``) are kept only if their group is selected and ``layers`` is None or
            ``outside_blocks`` is True.
        embeddings: keep token / position embeddings (False drops them whatever ``groups`` says).
        unembedding: keep ``lm_head`` (False drops it).
        ndim: keep only 2-D (``2``) or 1-D (``1``) tensors; None keeps both.
        outside_blocks: with ``layers`` set, also keep tensors that belong to no block.

    Example:
        >>> ModuleFilter(groups=("attn",), layers="0:2")
        >>> ModuleFilter(embeddings=False, unembedding=False)     # the organism's Exp-1 diagnostic
    """

    groups: tuple[str, ...] = GROUPS
    layers: str | int | slice | Sequence[int] | None = None
    embeddings: bool = True
    unembedding: bool = True
    ndim: int | None = None
    outside_blocks: bool = False

    def __post_init__(self) -> None:
        bad = [g for g in self.groups if g not in GROUPS]
        if bad:
            raise ValueError(f"unknown tensor groups {bad}; expected a subset of {GROUPS}")
        if self.ndim not in (None, 1, 2):
            raise ValueError(f"ndim must be None, 1 or 2, got {self.ndim!r}")

    def select(self, names: Iterable[str], shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
        """The names this filter keeps, in input order."""
        from deltalens.hooks.names import parse_layers

        names = list(names)
        keep_layers: set[int] | None = None
        if self.layers is not None:
            found = [x for x in (tensor_layer(n) for n in names) if x is not None]
            n_layers = max(found) + 1 if found else 0
            keep_layers = set(parse_layers(self.layers, n_layers))
        out = []
        for n in names:
            g = tensor_group(n)
            if g not in self.groups:
                continue
            if g == "embedding" and not self.embeddings or g == "unembedding" and not self.unembedding:
                continue
            if keep_layers is not None:
                layer = tensor_layer(n)
                if (layer is None and not self.outside_blocks) or (
                    layer is not None and layer not in keep_layers
                ):
                    continue
            if self.ndim is not None and shapes is not None and len(shapes[n]) != self.ndim:
                continue
            out.append(n)
        return out


ModulesArg = None | str | ModuleFilter | Sequence[str] | Callable[[str], bool]
"""A module filter: None (all), a preset name (:data:`PRESETS`), a :class:`ModuleFilter`,
a list of tensor names or globs, or a predicate on the tensor name."""


def select_names(
    names: Iterable[str], modules: ModulesArg = None, shapes: dict[str, tuple[int, ...]] | None = None
) -> list[str]:
    """Resolve a module filter against tensor names.

    Args:
        names: candidate tensor names (e.g. ``list(delta)``).
        modules: see :data:`ModulesArg`.
        shapes: tensor shapes, needed only for ``ModuleFilter(ndim=...)``.

    Raises:
        ValueError: an unknown preset, or a filter that selects no tensor.
        KeyError: an exact tensor name that is not among ``names``.
    """
    import difflib

    names = list(names)
    if modules is None:
        return names
    if isinstance(modules, str) and modules in PRESETS:
        chosen = ModuleFilter(groups=PRESETS[modules]).select(names, shapes)
    elif isinstance(modules, ModuleFilter):
        chosen = modules.select(names, shapes)
    elif callable(modules):
        chosen = [n for n in names if modules(n)]
    else:
        pats = [modules] if isinstance(modules, str) else list(modules)
        hit: set[str] = set()
        for p in pats:
            if any(c in p for c in "*?["):
                hit.update(fnmatch.filter(names, p))
            elif p in names:
                hit.add(p)
            else:
                close = difflib.get_close_matches(p, names, n=3, cutoff=0.5)
                if isinstance(modules, str) and not close:
                    near = difflib.get_close_matches(p, list(PRESETS), n=1, cutoff=0.5)
                    raise ValueError(
                        f"unknown module filter {p!r}"
                        + (f" (did you mean {near[0]!r}?)" if near else "")
                        + f": expected a preset in {sorted(PRESETS)}, a tensor name or glob, a ModuleFilter, "
                        "or a predicate"
                    )
                raise KeyError(
                    f"tensor {p!r} is not in the delta" + (f"; did you mean {close}?" if close else "")
                )
        chosen = [n for n in names if n in hit]
    if not chosen:
        raise ValueError(f"module filter {modules!r} selects no tensor (of {len(names)}, e.g. {names[:2]})")
    return chosen
