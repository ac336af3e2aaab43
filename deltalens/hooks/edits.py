"""TransformerLens edit semantics on top of the engines' hook sites.

An engine exposes a place for each hook name, but an edit there must change everything
downstream of that point, as in TransformerLens. ``hook_resid_mid`` is the one name whose site
(the input of the second norm) does not carry the residual stream on: the block adds its MLP output
to the *unedited* sum. :func:`lower` rewrites an edit ``f`` at ``blocks.{L}.hook_resid_mid`` into
an edit of the attention output, ``attn_out -> f(resid_pre + attn_out) - resid_pre``, with
``resid_pre`` taken (after any edit of it) at ``blocks.{L}.hook_resid_pre`` in the same forward.
"""

from __future__ import annotations

from torch import Tensor

from deltalens.hooks.batch import HookFn


def apply_fns(fns: list[HookFn], x: Tensor) -> Tensor:
    """Apply hook functions in order; ``None`` keeps the activation.

    Raises:
        ValueError: a function returned something other than None or a tensor of ``x``'s shape.
    """
    for fn in fns:
        y = fn(x)
        if y is not None:
            if not isinstance(y, Tensor) or y.shape != x.shape:
                raise ValueError(
                    f"a hook function must return None or a tensor of shape {tuple(x.shape)}, "
                    f"got {getattr(y, 'shape', type(y).__name__)}"
                )
            x = y
    return x


class _ResidMid:
    """The two engine-level edits that together edit ``hook_resid_mid`` of one block."""

    def __init__(self, fns: list[HookFn]) -> None:
        self.fns = fns
        self.pre: Tensor | None = None

    def keep_pre(self, x: Tensor) -> None:
        self.pre = x

    def edit_attn_out(self, a: Tensor) -> Tensor:
        if self.pre is None:  # pragma: no cover - the engines run resid_pre before attn_out
            raise RuntimeError("hook_resid_mid edit: the block's resid_pre was not seen before its attn_out")
        return apply_fns(self.fns, self.pre + a) - self.pre


def lower(edits: dict[str, list[HookFn]]) -> dict[str, list[HookFn]]:
    """Engine-level edits equivalent to ``edits`` under TransformerLens semantics (see the module doc)."""
    out = {name: list(fns) for name, fns in edits.items() if not name.endswith(".hook_resid_mid")}
    for name, fns in edits.items():
        if not name.endswith(".hook_resid_mid"):
            continue
        block = name.rsplit(".", 1)[0]
        mid = _ResidMid(fns)
        out.setdefault(f"{block}.hook_resid_pre", []).append(mid.keep_pre)
        out.setdefault(f"{block}.hook_attn_out", []).append(mid.edit_attn_out)
    return out
