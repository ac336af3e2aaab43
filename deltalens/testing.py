"""Tiny random models and an offline byte-level BPE tokenizer, for tests and examples.

Nothing here touches the network: the tokenizer is trained on Python standard-library
source that ships with CPython, and the models are randomly initialised from a seed.

Example:
    >>> from deltalens.testing import tiny_model
    >>> model, tok = tiny_model("llama")            # in memory
    >>> path = tiny_checkpoint("gpt2", tmp_path)     # saved as a HF checkpoint directory
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

Arch = Literal["gpt2", "llama", "qwen2", "gemma3"]
ARCHS: tuple[str, ...] = ("gpt2", "llama", "qwen2", "gemma3")


def _corpus_lines() -> list[str]:
    import argparse
    import collections
    import inspect
    import json
    import textwrap

    lines: list[str] = []
    for mod in (json, argparse, collections, textwrap):
        lines += [ln for ln in inspect.getsource(mod).splitlines() if ln.strip()]
    return lines


@functools.lru_cache(maxsize=4)
def _bpe_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512):
    """A deterministic byte-level BPE tokenizer (``PreTrainedTokenizerFast``), trained offline."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe_json(vocab_size))
    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, unk_token=special, pad_token=special
    )


def tiny_config(arch: Arch, vocab_size: int, n_layers: int = 2, d_model: int = 64) -> Any:
    """The HF config of a tiny model of architecture ``arch``."""
    import transformers as tr

    ids = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        return tr.GPT2Config(
            n_layer=n_layers, n_embd=d_model, n_head=4, n_positions=128, vocab_size=vocab_size, **ids
        )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        **ids,
    )
    if arch == "llama":
        return tr.LlamaConfig(**common)
    if arch == "qwen2":
        return tr.Qwen2Config(**common)
    if arch == "gemma3":
        return tr.Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"][:n_layers],
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS}")


def tiny_model(arch: Arch = "llama", seed: int = 0, n_layers: int = 2, d_model: int = 64):
    """Build a tiny random causal LM and its tokenizer in memory.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, fp32, on CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config(arch, len(tok), n_layers=n_layers, d_model=d_model)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.config.architectures = [type(model).__name__]
    return model, tok


def tiny_checkpoint(arch: Arch, directory: str | Path, seed: int = 0, **kw: Any) -> Path:
    """Save a tiny random model and its tokenizer as a HF checkpoint directory; return its path."""
    directory = Path(directory)
    model, tok = tiny_model(arch, seed=seed, **kw)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def param_hash(model: Any) -> str:
    """:func:`deltalens.hashing.weight_hash` of a module's parameters: equal hashes mean equal weights."""
    from deltalens.hashing import weight_hash

    return weight_hash(dict(model.named_parameters()))


def perturb(model: Any, seed: int, scale: float = 0.02) -> Any:
    """Add seeded Gaussian noise (std ``scale``) to every parameter in place, like a fine-tuning step."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


FAMILY_STAGES: tuple[str, ...] = ("w0", "wa", "useful", "harmful", "contaminated")
"""The stages :func:`tiny_family` writes (the battery's default family stages)."""


def tiny_family(root: str | Path, arch: Arch = "llama") -> dict[str, str]:
    """W_0, W_A = W_0 + noise and three fine-tunes = W_A + noise, saved as checkpoint folders under ``root``.

    Returns:
        ``{stage: path}`` for the stages of :data:`FAMILY_STAGES` (a battery's ``family:`` block).
    """
    root = Path(root)
    paths = {}
    for i, stage in enumerate(FAMILY_STAGES):
        model, tok = tiny_model(arch, seed=0)
        if stage != "w0":
            perturb(model, seed=1)
        if stage not in ("w0", "wa"):
            perturb(model, seed=10 + i)
        model.save_pretrained(root / stage)
        tok.save_pretrained(root / stage)
        paths[stage] = str(root / stage)
    return paths
