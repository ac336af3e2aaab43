"""Turning user inputs into a checked :class:`~deltalens.hooks.batch.Batch`, and argument checks.

Every check runs before any forward pass and raises one line naming the argument, the bad value
and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Positions = None | Literal["last"] | int | slice
Inputs = str | Sequence[str] | Tensor | Sequence[Sequence[int]]

DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")


def as_dtype(dtype: str | torch.dtype | None, arg: str = "dtype") -> torch.dtype | None:
    """``None``, a ``torch.dtype`` or its name (``"float16"``) as a floating ``torch.dtype``.

    Raises:
        ValueError: anything else, naming ``arg`` and the allowed names.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"{arg}={dtype!r} is not a floating torch dtype; expected a torch.dtype or one of {DTYPE_NAMES}"
        )
    return value


def check_positions(positions: object) -> None:
    """Reject a ``positions`` argument that is not None, ``"last"``, an int or a slice (bools too)."""
    if positions is None or positions == "last" or isinstance(positions, slice):
        return
    if isinstance(positions, int) and not isinstance(positions, bool):
        return
    raise ValueError(f"positions={positions!r} is not allowed; expected None, 'last', an int or a slice")


def _encode_texts(
    tokenizer: Any, texts: list[str], padding_side: str | None, add_special_tokens: bool = True
) -> tuple[Tensor, Tensor]:
    old = tokenizer.padding_side
    try:
        if padding_side:
            tokenizer.padding_side = padding_side
        enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = old
    return enc["input_ids"], enc["attention_mask"]


def _encode_rows(tokenizer: Any, rows: list[list[int]], padding_side: str | None) -> tuple[Tensor, Tensor]:
    t = max(len(r) for r in rows)
    side = padding_side or tokenizer.padding_side
    ids = torch.full((len(rows), t), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(t - len(r), t) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def encode(
    tokenizer: Any,
    inputs: Inputs,
    attention_mask: Tensor | None = None,
    padding_side: str | None = None,
    add_special_tokens: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(input_ids [batch, pos], attention_mask [batch, pos])`` of text or token-id inputs.

    Raises:
        ValueError: an empty list of inputs or an empty row.
        TypeError: inputs of another kind.
    """
    if isinstance(inputs, Sequence) and not isinstance(inputs, str) and len(inputs) == 0:
        raise ValueError("inputs=[] is empty; pass a prompt, a list of prompts, or token ids")
    if isinstance(inputs, Tensor):
        ids = inputs if inputs.ndim == 2 else inputs[None]
        return ids, attention_mask if attention_mask is not None else torch.ones_like(ids)
    if isinstance(inputs, str) or isinstance(inputs[0], str):
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"inputs: a list of prompts holds a {type(bad[0]).__name__}, not only strings")
        return _encode_texts(tokenizer, texts, padding_side, add_special_tokens)
    if isinstance(inputs, Sequence) and all(isinstance(r, Sequence) for r in inputs):
        rows = [list(map(int, r)) for r in inputs]
        if any(len(r) == 0 for r in rows):
            raise ValueError("inputs: a row of token ids is empty; every row needs at least one token")
        return _encode_rows(tokenizer, rows, padding_side)
    raise TypeError(
        f"inputs must be a prompt, a list of prompts, a [batch, pos] LongTensor or lists of token ids; "
        f"got {type(inputs).__name__}"
    )


def check_ids(ids: Tensor, mask: Tensor, vocab_size: int, max_positions: int | None) -> None:
    """Token ids within the vocabulary and rows within the model's positions.

    Raises:
        ValueError: naming the bad id or length and the allowed range.
    """
    if ids.shape[1] == 0:
        raise ValueError("inputs hold no tokens: nothing to run")
    if (mask.sum(-1) == 0).any():
        raise ValueError("inputs: a row of the batch has no real token (its attention mask is all zeros)")
    real = ids[mask.bool()]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab_size):
        bad = int(real.max()) if int(real.max()) >= vocab_size else int(real.min())
        raise ValueError(f"inputs: token id {bad} is outside the model's vocabulary [0, {vocab_size})")
    longest = int(mask.sum(-1).max())
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"inputs: a prompt of {longest} tokens is longer than the model's {max_positions} positions "
            "(max_position_embeddings); shorten or split it"
        )
