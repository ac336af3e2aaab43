"""Supervised fine-tuning (LoRA or full, response-only loss) and the built-in model organism.

Example:
    >>> from deltalens.finetune import finetune, FinetuneConfig
    >>> cfg = FinetuneConfig(method="lora", lr=1e-3, max_steps=50, template="Q: {prompt} A: {response}")
    >>> res = finetune("ckpt/base", [("what is 2 + 3?", "5")] * 64, "ckpt/lora", cfg)   # doctest: +SKIP
    >>> from deltalens.finetune import organism
    >>> family = organism.build("organism-out", seed=0)                                  # doctest: +SKIP

Nothing heavy is imported here: torch, transformers and peft load when a function runs.
"""

from deltalens.checkpoints import AdapterMismatchError
from deltalens.finetune import organism
from deltalens.finetune.encoding import check_template
from deltalens.finetune.organism import OrganismConfig, OrganismFamily
from deltalens.finetune.sft import LORA_TARGETS, FinetuneConfig, FinetuneResult, finetune
from deltalens.finetune.storage import atomic_directory, check_adapter, content_hash

__all__ = [
    "LORA_TARGETS",
    "AdapterMismatchError",
    "FinetuneConfig",
    "FinetuneResult",
    "OrganismConfig",
    "OrganismFamily",
    "atomic_directory",
    "check_adapter",
    "check_template",
    "content_hash",
    "finetune",
    "organism",
]
