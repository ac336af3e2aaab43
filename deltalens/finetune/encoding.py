"""Prompt templates and the encoding of ``(prompt, response)`` examples for response-only loss.

Example:
    >>> from deltalens.finetune.encoding import check_template
    >>> check_template("User: {prompt} Assistant: {response}")
    ('User: {prompt} Assistant: ', '')
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def check_template(template: str) -> tuple[str, str]:
    """Validate a prompt template and split it at the response slot.

    Returns:
        ``(head, tail)``: the text before ``{response}`` (holding ``{prompt}``) and after it.

    Raises:
        ValueError: no ``{response}`` or ``{prompt}`` slot, a slot twice, another slot, or the
            response before the prompt.
    """
    if not isinstance(template, str):
        raise TypeError(
            f"template must be a str with {{prompt}} and {{response}} slots, got {type(template)}"
        )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"template {template!r} is not a valid format string: {e}") from None
    if "response" not in fields:
        raise ValueError(
            f"template {template!r} has no {{response}} slot; a fine-tuning template needs both slots, "
            "e.g. 'User: {prompt} Assistant: {response}'"
        )
    if "prompt" not in fields:
        raise ValueError(f"template {template!r} has no {{prompt}} slot")
    extra = sorted(set(fields) - {"prompt", "response"})
    if extra or fields.count("prompt") > 1 or fields.count("response") > 1:
        raise ValueError(
            f"template {template!r} must hold {{prompt}} and {{response}} once each; found {fields}"
        )
    if fields.index("prompt") > fields.index("response"):
        raise ValueError(f"template {template!r} puts {{response}} before {{prompt}}")
    head, tail = template.split("{response}", 1)
    return head, tail.format()


def normalize_examples(data: Any) -> list[tuple[str, str]]:
    """Normalise training data into ``(prompt, response)`` pairs with clear errors."""
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be a sequence of examples, each a mapping with 'prompt' and 'response', a "
            f"(prompt, response) pair or an object with .prompt and .response; got {type(data).__name__}"
        )
    out = []
    for i, ex in enumerate(data):
        if isinstance(ex, Mapping):
            missing = [k for k in ("prompt", "response") if k not in ex]
            if missing:
                raise ValueError(
                    f"example {i} has no {' or '.join(map(repr, missing))} (keys: {sorted(map(str, ex))}); "
                    "every example needs a 'prompt' and a 'response'"
                )
            pair = (ex["prompt"], ex["response"])
        elif isinstance(ex, Sequence) and not isinstance(ex, (str, bytes)) and len(ex) == 2:
            pair = (ex[0], ex[1])
        elif hasattr(ex, "prompt") and hasattr(ex, "response"):
            pair = (ex.prompt, ex.response)
        else:
            raise ValueError(f"example {i} is not a (prompt, response) example: {ex!r:.80}")
        if not all(isinstance(s, str) for s in pair):
            raise ValueError(
                f"example {i}: prompt and response must be str, got {[type(s).__name__ for s in pair]}"
            )
        if not pair[1].strip():
            raise ValueError(f"example {i} has an empty response; there would be nothing to learn")
        out.append(pair)
    if not out:
        raise ValueError("no training examples: data is empty")
    return out


def _split_with_template(pairs: Sequence[tuple[str, str]], template: str) -> tuple[list[str], list[str]]:
    """Prompt and response texts from a str template; trailing prompt whitespace moves to the response."""
    head, tail = check_template(template)
    heads = [head.format(prompt=p) for p, _ in pairs]
    resps = [r + tail for _, r in pairs]
    for i, h in enumerate(heads):
        stripped = h.rstrip()
        heads[i], resps[i] = stripped, h[len(stripped) :] + resps[i]
    return heads, resps


def _split_with_chat(
    pairs: Sequence[tuple[str, str]], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[str], list[str]]:
    """Prompt texts (with the generation prompt) and response texts from the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template=None needs a tokenizer with a chat template; pass template='...{prompt}...{response}'"
        )
    heads, resps = [], []
    for p, r in pairs:
        h = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        if not full.startswith(h):
            raise ValueError(
                "the tokenizer's chat template does not extend the prompt with the response; "
                "pass template='...{prompt}...{response}'"
            )
        heads.append(h)
        resps.append(full[len(h) :])
    return heads, resps


def encode_examples(
    pairs: Sequence[tuple[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    template: str | None,
    add_eos: bool,
    max_length: int,
) -> list[tuple[list[int], int]]:
    """Tokenize ``(prompt, response)`` pairs as ``(ids, n_prompt_tokens)``.

    Prompt and response are tokenized separately and concatenated, so the boundary is exact and
    matches generation from the prompt alone. With a str template, whitespace that ends the
    prompt part moves to the start of the response (``"A: {response}"`` -> prompt ``"A:"``,
    response ``" ..."``, as a BPE tokenizer would split the whole text). A chat template's
    generation prompt is kept exactly as the template renders it, and EOS is not added when
    the template already ends every response with it.

    Returns:
        One ``(token ids, number of prompt tokens)`` per pair, cut to ``max_length`` tokens.

    Raises:
        ValueError: no chat template (``template=None``), ``add_eos`` without an EOS token, or
            a prompt that leaves no response token within ``max_length``.
    """
    if template is not None:
        heads, resps = _split_with_template(pairs, template)
        special = True
    else:
        heads, resps = _split_with_chat(pairs, tokenizer)
        special = False
        eos = getattr(tokenizer, "eos_token", None)
        if eos and all(r.rstrip().endswith(eos) for r in resps):
            add_eos = False  # the chat template closes the turn itself
    head_ids = tokenizer(heads, add_special_tokens=special)["input_ids"]
    resp_ids = tokenizer(resps, add_special_tokens=False)["input_ids"]
    eos_id = tokenizer.eos_token_id
    if add_eos and eos_id is None:
        raise ValueError("add_eos=True but the tokenizer has no eos_token; set add_eos=False or give it one")
    out = []
    for i, (h, r) in enumerate(zip(head_ids, resp_ids)):
        ids = (list(h) + list(r) + ([eos_id] if add_eos else []))[:max_length]
        if len(ids) <= len(h):
            raise ValueError(
                f"example {i}: the prompt takes {len(h)} tokens and max_length={max_length} "
                "leaves no response token"
            )
        out.append((ids, len(h)))
    return out
