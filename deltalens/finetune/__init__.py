"""Supervised fine-tuning (LoRA or full, response-only loss) with atomic, hash-linked checkpoints.

Example:
    >>> from deltalens.finetune import finetune, FinetuneConfig
    >>> cfg = FinetuneConfig(method="lora", lr=1e-3, max_steps=50, template="Q: {prompt} A: {response}")
    >>> res = finetune("ckpt/base", [("what is 2 + 3?", "5")] * 64, "ckpt/lora", cfg)   # doctest: +SKIP

Nothing heavy is imported here: torch, transformers and peft load when a function runs. The
built-in model organism, trained with this package, lives in :mod:`deltalens.study.organism`.
"""

from deltalens.checkpoints import AdapterMismatchError, check_adapter
from deltalens.finetune.config import LORA_TARGETS, FinetuneConfig
from deltalens.finetune.encoding import check_template
from deltalens.finetune.sft import FinetuneResult, finetune

__all__ = [
    "LORA_TARGETS",
    "AdapterMismatchError",
    "FinetuneConfig",
    "FinetuneResult",
    "check_adapter",
    "check_template",
    "finetune",
]
