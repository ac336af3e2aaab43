"""Supervised fine-tuning (LoRA or full) of a causal LM, with the loss on the response only.

``finetune`` takes a HF checkpoint directory, an in-memory HF model (with its tokenizer) or a
``HookedModel``, trains a copy in fp32 (the caller's model is never modified) and writes a
checkpoint: a peft adapter directory or a full safetensors directory, each with the tokenizer and
a ``cfg.json`` that records the data recipe, the hyperparameters, the seed and the parent
checkpoint's content hash. The checkpoint is written to a temporary directory next to the target
and renamed into place, so a failure never leaves a half-written checkpoint behind.

Example:
    >>> from deltalens.finetune import finetune
    >>> data = [{"prompt": "what is 2 + 3?", "response": "5"}] * 16
    >>> res = finetune("ckpt/base", data, "ckpt/lora", method="lora", max_steps=20, lr=1e-3)  # doctest: +SKIP
    >>> res.path, res.losses[-1]                                       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.atomic import atomic_directory, write_json
from deltalens.checkpoints import check_adapter, quiet_peft
from deltalens.finetune.config import LORA_TARGETS, FinetuneConfig
from deltalens.finetune.encoding import encode_examples, normalize_examples
from deltalens.finetune.loop import Encoded, train_loop
from deltalens.finetune.storage import ADAPTER_CONFIG, CFG_NAME, torch_threads
from deltalens.hashing import config_key, weight_hash
from deltalens.hooks.weights import module_dims

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from deltalens.hooks.model import HookedModel


@dataclass
class FinetuneResult:
    """What ``finetune`` returns.

    Attributes:
        path: the written checkpoint directory.
        model: the trained model (a ``PeftModel`` for LoRA), fp32, eval mode.
        tokenizer: its tokenizer.
        losses: the training loss of every step.
        config: the ``FinetuneConfig`` used.
        record: the content of ``cfg.json``.
    """

    path: Path
    model: nn.Module = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    losses: list[float] = field(repr=False)
    config: FinetuneConfig = field(repr=False)
    record: dict[str, Any] = field(repr=False)

    def __repr__(self) -> str:
        last = f"{self.losses[-1]:.4f}" if self.losses else "n/a"
        return (
            f"FinetuneResult(path={str(self.path)!r}, method={self.config.method!r}, "
            f"steps={len(self.losses)}, final_loss={last})"
        )


# ---------------------------------------------------------------- models


def _resolve(
    model: HookedModel | PreTrainedModel | str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike | None,
) -> tuple[nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """A fresh fp32 copy of the model to train, its tokenizer and a description of the source."""
    from transformers import AutoTokenizer

    from deltalens.hooks.model import HookedModel

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if isinstance(model, (str, os.PathLike)):
        return _load_checkpoint(Path(model), tokenizer)
    if isinstance(model, HookedModel):
        tok = tokenizer if tokenizer is not None else model.tokenizer
        return model.trainable_copy().float(), tok, {"source": f"<in-memory {model.provenance.arch} model>"}
    return _copy_in_memory(model, tokenizer)


def _load_checkpoint(
    path: Path, tokenizer: PreTrainedTokenizerBase | None
) -> tuple[nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a full checkpoint directory in fp32 (an adapter directory is refused)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {str(path)!r}")
    if (path / ADAPTER_CONFIG).exists():
        raise ValueError(
            f"{str(path)!r} is a LoRA adapter; pass its base as model= and the adapter as adapter="
        )
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
    return hf, tok, {"source": str(path.resolve())}


def _live_adapter_types() -> tuple[type, ...]:
    """The peft classes of a model that carries a live adapter (merged before training)."""
    from peft import PeftMixedModel, PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    return (PeftModel, PeftMixedModel, BaseTuner)


def _copy_in_memory(
    model: object, tokenizer: PreTrainedTokenizerBase | None
) -> tuple[nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """An fp32 deep copy of an in-memory transformers (or peft) model, a live adapter merged."""
    from transformers import PreTrainedModel

    adapters = _live_adapter_types()
    if not isinstance(model, (PreTrainedModel, *adapters)):
        raise TypeError(
            "model must be a HF checkpoint directory, a transformers causal LM or a HookedModel; "
            f"got {type(model).__name__}"
        )
    if tokenizer is None:
        raise ValueError("an in-memory model needs its tokenizer: finetune(model, data, out, tokenizer=tok)")
    hf = copy.deepcopy(model)
    if isinstance(hf, adapters):  # a live adapter: train on the merged weights
        hf = hf.merge_and_unload()
    return hf.float(), tokenizer, {"source": f"<in-memory {type(hf).__name__}>"}


def lora_targets(model: nn.Module, target_modules: Sequence[str] | None) -> list[str]:
    """The LoRA target module names for ``model`` (per architecture unless given), checked to exist."""
    mtype = getattr(model.config, "model_type", None)
    if target_modules is None:
        if mtype not in LORA_TARGETS:
            raise ValueError(
                f"no default LoRA target modules for model_type {mtype!r} (known: {sorted(LORA_TARGETS)}); "
                "pass target_modules=(...)"
            )
        target_modules = LORA_TARGETS[mtype]
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if module_dims(m) is not None}
    missing = [t for t in target_modules if t not in leaves]
    if missing:
        raise ValueError(
            f"LoRA target modules {missing} not in the {mtype} model; linear modules: {sorted(leaves)}"
        )
    return list(target_modules)


def _prepare(
    hf: nn.Module, parent: dict[str, Any], adapter: str | os.PathLike | None, cfg: FinetuneConfig
) -> nn.Module:
    """Record the parent's hash in ``parent``, seed torch, then attach or add an adapter, or freeze.

    Returns:
        The module to train: a trainable ``PeftModel`` for LoRA, else ``hf`` (an ``adapter``
        merged) with the parameters outside ``cfg.trainable`` frozen.
    """
    import torch

    parent["weight_hash"] = weight_hash(hf)
    parent["arch"] = type(hf).__name__
    parent["adapter"] = None
    torch.manual_seed(cfg.seed)
    if adapter is not None:
        from peft import PeftModel

        check_adapter(adapter, hf, parent["weight_hash"])
        parent["adapter"] = str(Path(adapter).resolve())
        with quiet_peft():
            hf = PeftModel.from_pretrained(hf, adapter, is_trainable=cfg.method == "lora")
        if cfg.method == "full":
            hf = hf.merge_and_unload()
    if cfg.method == "lora" and adapter is None:
        hf = _add_lora(hf, cfg)
    elif cfg.method == "full":
        _freeze(hf, cfg.trainable)
    return hf


def _add_lora(hf: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """``hf`` wrapped in a fresh, trainable LoRA adapter (initialised from torch's global RNG)."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(hf, cfg.target_modules),
        fan_in_fan_out=getattr(hf.config, "model_type", "") == "gpt2",
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        return get_peft_model(hf, lcfg)


def _freeze(model: nn.Module, patterns: tuple[str, ...] | None) -> None:
    names = [n for n, _ in model.named_parameters()]
    if patterns is None:
        return
    chosen = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if not chosen:
        raise ValueError(f"trainable={patterns} matches no parameter; names look like {names[:4]}")
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)


# ---------------------------------------------------------------- steps of finetune


def _resolve_config(config: FinetuneConfig | None, overrides: dict[str, Any]) -> FinetuneConfig:
    """``config`` (default ``FinetuneConfig()``) with single fields replaced by ``overrides``."""
    base = config or FinetuneConfig()
    return dataclasses.replace(base, **overrides) if overrides else base


def _check_recipe(data_recipe: Any) -> None:
    try:
        json.dumps(data_recipe)
    except (TypeError, ValueError) as e:
        raise TypeError(f"data_recipe must be JSON-serialisable (it goes into {CFG_NAME}): {e}") from None


def _check_target(out: Path, cfg: FinetuneConfig) -> None:
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{str(out)!r} already exists; pass overwrite=True to replace it")


def _progress_desc(cfg: FinetuneConfig, label: str | None) -> str:
    """The progress bar's description: ``finetune[method]``, then ``label`` if given."""
    if label is not None and not isinstance(label, str):
        raise TypeError(f"progress_label must be a str or None, got {label!r}")
    return f"finetune[{cfg.method}]" + (f" {label}" if label else "")


def _pad_id(tok: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with: the pad token, else EOS, else 0."""
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def _data_record(pairs: list[tuple[str, str]], encoded: Encoded, recipe: Any) -> dict[str, Any]:
    return {
        "recipe": recipe,
        "n_examples": len(pairs),
        "n_response_tokens": sum(len(ids) - n for ids, n in encoded),
        "sha256": config_key([list(p) for p in pairs]),
    }


def _training_record(losses: list[float], thread_steps: dict[int, int], seconds: float) -> dict[str, Any]:
    return {
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "seconds": round(seconds, 3),
        "steps_per_thread_count": {str(k): v for k, v in thread_steps.items()},
    }


def _record(
    cfg: FinetuneConfig, data: dict[str, Any], parent: dict[str, Any], training: dict[str, Any]
) -> dict[str, Any]:
    """The content of ``cfg.json``: recipe, hyperparameters, seed, parent, training and versions."""
    return {
        "kind": "deltalens.finetune",
        "format_version": 1,
        "method": cfg.method,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "template": cfg.template if cfg.template is not None else "<tokenizer chat template>",
        "data": data,
        "parent": parent,
        "training": training,
        "versions": _versions(),
    }


def _save(
    out: Path, overwrite: bool, hf: nn.Module, tok: PreTrainedTokenizerBase, record: dict[str, Any]
) -> None:
    """Write model (or adapter), tokenizer and ``cfg.json`` to ``out`` atomically."""
    with atomic_directory(out, overwrite=overwrite) as tmp:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / CFG_NAME, record)


def finetune(
    model: HookedModel | PreTrainedModel | str | os.PathLike,
    data: Any,
    output_dir: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    data_recipe: Any = None,
    progress_label: str | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune a causal LM on ``(prompt, response)`` examples and write a checkpoint.

    Args:
        model: a HF checkpoint directory, a transformers causal LM (pass ``tokenizer=``) or a
            ``HookedModel``. It is copied, never modified; a live peft adapter is merged first.
        data: examples, each ``{"prompt": str, "response": str}``, a ``(prompt, response)`` pair
            or an object with ``.prompt`` / ``.response``. Loss is on response tokens only; an
            empty prompt with template ``"{prompt}{response}"`` trains on the whole text.
        output_dir: where the checkpoint goes (must not exist unless ``overwrite=True``).
        config: hyperparameters; keyword ``overrides`` replace single fields.
        tokenizer: the tokenizer (a directory or an object) when ``model`` is in memory.
        adapter: a LoRA adapter directory of ``model``: ``method="lora"`` continues training
            it, ``method="full"`` merges it and trains all weights.
        data_recipe: JSON-able description of where the data came from, kept in ``cfg.json``.
        progress_label: shown on the progress bar after ``finetune[method]`` (``finetune[full] wa``).

    Returns:
        ``FinetuneResult`` (``.path``, ``.model`` trained fp32, ``.losses``, ``.record``). The
        directory holds the adapter (LoRA) or ``model.safetensors`` (full), tokenizer, ``cfg.json``.

    Raises:
        ValueError: empty or malformed data, a template without ``{response}``, unknown LoRA
            targets. AdapterMismatchError: ``adapter`` was made for another base.
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
        TypeError: ``model`` of another kind, ``data`` not a sequence, a non-JSON ``data_recipe``.

    Example:
        >>> res = finetune(base_dir, [("what is 2 + 3?", "5")] * 32, "out/lora",  # doctest: +SKIP
        ...                method="lora", template="Q: {prompt} A: {response}", max_steps=10)

    Gotcha: training runs in fp32 on CPU with at most 2 threads, restored afterwards.
    """
    cfg, out, pairs = _resolve_config(config, overrides), Path(output_dir), normalize_examples(data)
    _check_recipe(data_recipe)
    _check_target(out, cfg)
    desc = _progress_desc(cfg, progress_label)
    t0 = time.perf_counter()
    with torch_threads(cfg.num_threads):
        hf, tok, parent = _resolve(model, tokenizer)
        encoded = encode_examples(pairs, tok, cfg.template, cfg.add_eos, cfg.max_length)
        pad_id = _pad_id(tok)
        hf = _prepare(hf, parent, adapter, cfg)
        losses, thread_steps = train_loop(hf, encoded, cfg, pad_id, desc=desc)
        training = _training_record(losses, thread_steps, time.perf_counter() - t0)
        record = _record(cfg, _data_record(pairs, encoded, data_recipe), parent, training)
        _save(out, cfg.overwrite, hf, tok, record)
    return FinetuneResult(path=out, model=hf, tokenizer=tok, losses=losses, config=cfg, record=record)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("deltalens", "torch", "transformers", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out
