"""A tokenised batch and the hook-function type, shared by the model and the engine backends."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor


def last_index(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Index of each row's last real (non-padding) token in an ``[batch, pos]`` mask, either padding side.

    Example:
        >>> import torch
        >>> last_index(torch.tensor([[0, 1, 1], [1, 1, 0]]))
        tensor([2, 1])
    """
    t = attention_mask.shape[1]
    return t - 1 - attention_mask.flip(-1).long().argmax(-1)


HookFn = Callable[[Tensor], Tensor | None]
"""A hook function: ``fn(activation) -> new activation | None`` (None keeps the activation)."""


@dataclass
class Batch:
    """Token ids ready for a forward pass.

    ``position_ids`` are derived from the attention mask (``cumsum - 1``), so a padded row gets
    the same positions it would get unpadded, whatever the padding side.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]

    @property
    def last_index(self) -> Int[Tensor, " batch"]:
        """``[batch]``: index of the last real (non-padding) token of each row (:func:`last_index`)."""
        return last_index(self.attention_mask)
