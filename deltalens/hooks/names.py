"""The one hook-name vocabulary (TransformerLens's) and name filters with suggestions.

Every backend speaks these names:

    hook_embed, hook_pos_embed (learned positions only)
    blocks.{L}.hook_resid_pre | hook_resid_mid | hook_resid_post
    blocks.{L}.hook_attn_out  | hook_mlp_out
    blocks.{L}.attn.hook_q | hook_k | hook_v | hook_z   [batch, pos, head, d_head]
    blocks.{L}.attn.hook_rot_q | hook_rot_k (rotary)  [batch, pos, head, d_head]
    blocks.{L}.attn.hook_attn_scores | hook_pattern    [batch, head, q, k]
    blocks.{L}.mlp.hook_pre | hook_pre_linear (gated MLPs) | hook_post   [batch, pos, d_mlp]
    blocks.{L}.attn.hook_result (computed when asked)   [batch, pos, head, d_model]
    blocks.{L}.ln1 | ln2 .hook_scale [batch, pos, 1] | .hook_normalized [batch, pos, d_model]
    ln_final.hook_scale | ln_final.hook_normalized

A *names* argument may be an exact name, a glob (``blocks.*.hook_resid_post``), a list of
either, or a predicate ``Callable[[str], bool]``. Unknown exact names raise a ``KeyError``
that lists the closest valid names.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence

NamesArg = str | Sequence[str] | Callable[[str], bool] | None

TOP_HOOKS: tuple[str, ...] = ("hook_embed", "hook_pos_embed")
"""Hooks before the first block, in execution order."""

BLOCK_HOOKS: tuple[str, ...] = (
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
"""Per-block hooks, in execution order."""

FINAL_HOOKS: tuple[str, ...] = ("ln_final.hook_scale", "ln_final.hook_normalized")

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def all_hook_names(n_layers: int, has: Callable[[str], bool] | None = None) -> list[str]:
    """Every hook name of an ``n_layers`` model, in execution order (``has``: keep only its hooks)."""
    names = list(TOP_HOOKS)
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{h}" for h in BLOCK_HOOKS]
    names += FINAL_HOOKS
    return [n for n in names if has is None or has(n)]


def layer_of(name: str) -> int | None:
    """The block index in a hook name (``blocks.3.hook_resid_post`` -> 3), or None."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def execution_order(names: Iterable[str], n_layers: int) -> list[str]:
    """Sort hook names in the order the forward pass reaches them."""
    rank = {n: i for i, n in enumerate(all_hook_names(n_layers))}
    return sorted(set(names), key=lambda n: rank[n])


def suggest(name: str, valid: Sequence[str], n: int = 3) -> list[str]:
    """The closest valid names to ``name`` (for error messages)."""
    return difflib.get_close_matches(name, valid, n=n, cutoff=0.5)


def unknown_hook_error(name: str, valid: Sequence[str]) -> KeyError:
    """A KeyError for ``name`` that lists the closest names in ``valid``."""
    close = suggest(name, valid)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(
        f"unknown hook name {name!r}.{hint} Valid names look like 'hook_embed', "
        f"'blocks.0.hook_resid_post', 'blocks.0.attn.hook_pattern', 'ln_final.hook_normalized' "
        f"(this model has {len(valid)} hook points; see model.hook_names)."
    )


def resolve_names(names: NamesArg, valid: Sequence[str]) -> list[str]:
    """Resolve a names argument to a list of valid hook names, in ``valid``'s order.

    Args:
        names: an exact name, a glob, a list of either, a predicate, or None (all names).
        valid: every hook name of the model.

    Raises:
        KeyError: an exact name (no glob characters) is not a hook of the model, or a glob
            matches nothing; the message suggests the closest valid names.
    """
    if names is None:
        return list(valid)
    if callable(names):
        return [n for n in valid if names(n)]
    patterns = [names] if isinstance(names, str) else list(names)
    if not patterns:
        raise ValueError("names is an empty list; pass None to select every hook")
    chosen: set[str] = set()
    valid_set = set(valid)
    for pat in patterns:
        if not isinstance(pat, str):
            raise TypeError(f"hook names must be strings, got {type(pat).__name__}")
        if any(c in pat for c in "*?["):
            hits = fnmatch.filter(valid, pat)
            if not hits:
                raise unknown_hook_error(pat, valid)
            chosen.update(hits)
        elif pat in valid_set:
            chosen.add(pat)
        else:
            raise unknown_hook_error(pat, valid)
    return [n for n in valid if n in chosen]


def parse_layers(spec: str | int | slice | Sequence[int] | None, n_layers: int) -> list[int]:
    """Turn a layer spec into a list of layer indices.

    ``None`` -> all; ``5`` -> [5]; ``slice(2, 4)``; ``[1, 3]``; ``"65-90%"`` -> the paper's depth
    slice ``range(int(.65 * (n+1)), int(.90 * (n+1)))`` mapped onto blocks (hidden state ``h`` is
    the output of block ``h - 1``); ``"2:5"`` -> [2, 3, 4].

    Raises:
        ValueError: a layer outside ``0..n_layers-1`` or an empty selection.
    """
    if spec is None:
        layers = list(range(n_layers))
    elif isinstance(spec, int):
        layers = [spec]
    elif isinstance(spec, slice):
        layers = list(range(n_layers))[spec]
    elif isinstance(spec, str):
        s = spec.strip()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*%", s)
        if m:
            lo, hi = float(m.group(1)) / 100, float(m.group(2)) / 100
            if not 0 <= lo < hi <= 1:
                raise ValueError(f"layer slice {spec!r}: expected 0 <= lo < hi <= 100 percent")
            hidden = range(int(lo * (n_layers + 1)), int(hi * (n_layers + 1)))
            layers = [h - 1 for h in hidden if h >= 1]
            if not layers:  # tiny models: keep at least the nearest block
                layers = [min(n_layers - 1, max(0, int(lo * (n_layers + 1)) - 1))]
        elif re.fullmatch(r"-?\d*:-?\d*", s):
            a, b = s.split(":")
            layers = list(range(n_layers))[slice(int(a) if a else None, int(b) if b else None)]
        elif re.fullmatch(r"\d+", s):
            layers = [int(s)]
        else:
            raise ValueError(f"cannot parse layer spec {spec!r}; use an int, 'a:b', or 'lo-hi%'")
    else:
        layers = [int(x) for x in spec]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside this model's blocks 0..{n_layers - 1}")
    if not layers:
        raise ValueError(f"layer spec {spec!r} selects no layer of a {n_layers}-layer model")
    return layers
