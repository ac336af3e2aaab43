"""The fine-tuning configuration (a typed, validated dataclass) and default LoRA targets.

Example:
    >>> from deltalens.finetune.config import FinetuneConfig
    >>> FinetuneConfig(method="full", lr=1e-4, max_steps=10)
    FinetuneConfig(method='full', lr=0.0001, max_steps=10)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from deltalens.finetune.encoding import check_template
from deltalens.finetune.storage import MAX_THREADS
from deltalens.hooks.archs import ARCHS

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **{name: spec.lora_targets for name, spec in ARCHS.items()},
    "gemma3": ARCHS["gemma3_text"].lora_targets,
}
"""Default LoRA target modules per ``config.model_type`` (from :mod:`deltalens.hooks.archs`);
override with ``FinetuneConfig.target_modules``."""


@dataclass(kw_only=True)
class FinetuneConfig:
    """Hyperparameters of one supervised fine-tune.

    Attributes:
        method: ``"lora"`` (peft adapter) or ``"full"`` (all, or ``trainable``, parameters).
        lr: peak learning rate (AdamW).
        max_steps: optimizer steps; when None, ``ceil(epochs * n_examples / batch_size)``.
        epochs: passes over the data when ``max_steps`` is None.
        batch_size: sequences per optimizer step.
        warmup_ratio: fraction of the steps with a linear warm-up.
        schedule: ``"cosine"`` (down to ``min_lr_ratio * lr``), ``"linear"`` or ``"constant"``.
        min_lr_ratio: the final learning rate as a fraction of ``lr`` (cosine and linear).
        weight_decay, betas, grad_clip: AdamW and gradient-norm clipping (``None`` disables clipping).
        max_length: sequences are cut to this many tokens (prompt + response).
        template: a str with ``{prompt}`` and ``{response}`` slots (prompt first); None uses the
            tokenizer's chat template. Text after ``{response}`` is part of the response.
        add_eos: append the tokenizer's EOS token to every response.
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling numerator and dropout.
        target_modules: LoRA target module names; None picks them from ``LORA_TARGETS``.
        trainable: full fine-tuning only: glob patterns over parameter names; the rest is
            frozen and stays bit-identical. None trains every parameter.
        seed: seeds LoRA initialisation, data order and dropout.
        num_threads: torch intra-op threads while training, at most 2, restored afterwards; None
            times steps on 1 and 2 threads every 200 steps and keeps the faster (``ThreadTuner``).
        progress: show a tqdm progress bar.
        overwrite: replace an existing checkpoint at the output path (atomically).
    """

    method: Literal["lora", "full"] = "lora"
    lr: float = 2e-4
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8
    warmup_ratio: float = 0.05
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    max_length: int = 512
    template: str | None = None
    add_eos: bool = True
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    trainable: tuple[str, ...] | None = None
    seed: int = 0
    num_threads: int | None = None
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'linear' or 'constant', got {self.schedule!r}")
        self._check_numbers()
        if self.template is not None:
            check_template(self.template)
        self._check_modules()

    def _check_numbers(self) -> None:
        _positive(lr=self.lr, batch_size=self.batch_size, max_length=self.max_length, epochs=self.epochs)
        _positive(lora_r=self.lora_r, lora_alpha=self.lora_alpha)
        if self.num_threads is not None:
            if not isinstance(self.num_threads, int) or self.num_threads < 1:
                raise ValueError(f"num_threads must be a positive int or None, got {self.num_threads!r}")
            self.num_threads = min(self.num_threads, MAX_THREADS)
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None, got {self.max_steps!r}")
        for name in ("warmup_ratio", "min_lr_ratio", "lora_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if self.weight_decay < 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise ValueError("weight_decay must be >= 0 and grad_clip > 0 or None")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    def _check_modules(self) -> None:
        if isinstance(self.target_modules, str) or isinstance(self.trainable, str):
            raise TypeError("target_modules and trainable take a tuple of names, not a single str")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
        if self.trainable is not None:
            self.trainable = tuple(self.trainable)
            if self.method != "full":
                raise ValueError(
                    "trainable= selects parameters of a full fine-tune; use target_modules for LoRA"
                )
        if self.target_modules is not None and self.method != "lora":
            raise ValueError("target_modules= selects LoRA targets; use trainable= for a full fine-tune")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def __repr__(self) -> str:
        return compact_repr(self, always=("method",))


def compact_repr(obj: Any, always: tuple[str, ...] = ()) -> str:
    """``Name(field=value, ...)`` listing only the fields that differ from their defaults."""
    parts = []
    for f in dataclasses.fields(obj):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(obj, f.name)
        if f.name in always or value != default:
            parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _positive(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
