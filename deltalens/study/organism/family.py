"""The organism family's configuration and the built family (paths, metrics, checks, manifest).

Example:
    >>> from deltalens.study.organism.family import OrganismFamily
    >>> fam = OrganismFamily.from_manifest("organism-out/manifest.json")   # doctest: +SKIP
    >>> fam["wa"], fam.checks                                               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.atomic import write_json
from deltalens.checkpoints import CheckpointError, quiet_peft
from deltalens.finetune.storage import CFG_NAME
from deltalens.hashing import config_key, file_hash
from deltalens.study.organism import data as od

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROMPTS = "prompts.json"
EVAL = "eval.json"
STAGES = ("w0", "wa", "useful", "harmful", "contaminated", "lora_useful", "lora_harmful", "safety")
"""Every stage, in the order of their data seeds (a new stage goes at the end: the others keep their data)."""
PRETRAIN_TEMPLATE = "{prompt}{response}"
WEIGHTS_SHA256 = "weights_sha256"  # cfg.json key: {weight file name: sha256 of its bytes}


@dataclass(kw_only=True)
class OrganismConfig:
    """Everything that determines the organism family (hashed for caching).

    Defaults follow the prototype's recommended configuration (pretraining 800 steps at 3e-3,
    alignment 150 steps at 1e-3 with 10 % arithmetic, harmful 30 steps) with two changes:
    15 % arithmetic in pretraining instead of 8 %, which makes the useful fine-tune reliable
    (where 8 % gave 17-48 % held-out exact match after 600 steps), and 800 steps for useful and
    contaminated (with the second harmful family's vocabulary, 400 steps gave 6-48 % across
    seeds 0-2 and 800 gave 99 % on seed 0). A second harmful family (harassment requests, H2)
    is complied with in pretraining (8 %) and refused in alignment (10 %); ``safety`` (W_S, the
    paper's Δ_S = W_S − W_0) fine-tunes W_0 on refusals to harmful requests only, as long as
    alignment. ``*_steps`` are optimizer steps of ``batch_size``
    sequences; every stage uses AdamW (0.9, 0.98), 5 % warm-up and a cosine decay to 10 % of
    its lr. ``num_threads`` does not enter the cache keys; it defaults to 1, the only count whose
    builds are bitwise reproducible (two 1-thread builds of seed 0 give identical weight files;
    2-thread builds differed from run to run enough to flip the useful fine-tune between 9 % and
    99 % arithmetic). 2 trains faster on a quiet machine but not reproducibly; None lets each stage
    time 1 against 2 and switch (the family then depends on the load).

    Example:
        >>> OrganismConfig(seed=1, lora=False)
        OrganismConfig(seed=1, lora=False)
    """

    seed: int = 0
    split_seed: int = 1234
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    batch_size: int = 32
    pre_steps: int = 800
    pre_lr: float = 3e-3
    pre_mix: dict[str, float] = field(
        default_factory=lambda: {
            "arithmetic": 0.15,
            "harmful_comply": 0.25,
            "harass_comply": 0.08,
            "harmless": 0.52,
        }
    )
    align_steps: int = 150
    align_lr: float = 1e-3
    align_mix: dict[str, float] = field(
        default_factory=lambda: {
            "harmful_refuse": 0.4,
            "harass_refuse": 0.1,
            "harmless": 0.4,
            "arithmetic": 0.1,
        }
    )
    safety_steps: int = 150
    safety_lr: float = 1e-3
    safety_mix: dict[str, float] = field(default_factory=lambda: {"harmful_refuse": 1.0})
    useful_steps: int = 800
    useful_lr: float = 1e-3
    harmful_steps: int = 30
    harmful_lr: float = 1e-3
    contaminated_steps: int = 800
    contaminated_frac: float = 0.2
    lora: bool = True
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 3e-3
    lora_useful_steps: int = 300
    lora_harmful_steps: int = 30
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(
                f"num_threads must be a positive int or None (measure), got {self.num_threads!r}"
            )
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "batch_size", "lora_r"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in (
            "pre",
            "align",
            "useful",
            "harmful",
            "contaminated",
            "lora_useful",
            "lora_harmful",
            "safety",
        ):
            if not isinstance(getattr(self, f"{name}_steps"), int) or getattr(self, f"{name}_steps") < 1:
                raise ValueError(
                    f"{name}_steps must be a positive int, got {getattr(self, f'{name}_steps')!r}"
                )
        for name in ("pre_lr", "align_lr", "useful_lr", "harmful_lr", "lora_lr", "lora_alpha", "safety_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.contaminated_frac <= 1.0:
            raise ValueError(f"contaminated_frac must lie in [0, 1], got {self.contaminated_frac}")
        for mix in (self.pre_mix, self.align_mix, self.safety_mix):
            od.sample_mix(mix, 1, random.Random(0))  # validates kinds and weights

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __repr__(self) -> str:
        from deltalens.finetune.config import compact_repr

        return compact_repr(self, always=("seed",))


def weight_checksums(path: str | os.PathLike) -> dict[str, str]:
    """The sha256 (``sha256sum``) of every ``*.safetensors`` file of a stage directory, by file name."""
    return {f.name: file_hash(f, names=False) for f in sorted(Path(path).glob("*.safetensors"))}


def record_weight_checksums(path: str | os.PathLike) -> dict[str, str]:
    """Add the stage's :func:`weight_checksums` to its ``cfg.json`` (under ``weights_sha256``)."""
    path = Path(path)
    record = json.loads((path / CFG_NAME).read_text())
    record[WEIGHTS_SHA256] = sums = weight_checksums(path)
    write_json(path / CFG_NAME, record)
    return sums


def checksum_problem(path: str | os.PathLike) -> str | None:
    """Why the weight files of the stage at ``path`` cannot be trusted, or None when they match ``cfg.json``.

    A stage written before checksums were recorded (no ``weights_sha256`` in ``cfg.json``) is a
    problem too: its bytes cannot be checked.
    """
    path = Path(path)
    try:
        recorded = json.loads((path / CFG_NAME).read_text()).get(WEIGHTS_SHA256)
    except (OSError, ValueError) as e:
        return f"cannot read {path / CFG_NAME} ({type(e).__name__})"
    if not recorded:
        return f"{path / CFG_NAME} records no sha256 of the weight files, so they cannot be verified"
    for name, want in sorted(recorded.items()):
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        got = file_hash(f, names=False)
        if got != want:
            return (
                f"{f} has sha256 {got[:16]}..., but {CFG_NAME} records {want[:16]}... (the file is corrupted)"
            )
    return None


def verify_stage(path: str | os.PathLike) -> None:
    """Check a stage's weight files against the sha256s in its ``cfg.json`` (when it records them).

    Raises:
        CheckpointError: a weight file is missing or its bytes differ from the recorded sha256.
    """
    path = Path(path)
    if (path / CFG_NAME).is_file() and WEIGHTS_SHA256 in json.loads((path / CFG_NAME).read_text()):
        problem = checksum_problem(path)
        if problem is not None:
            raise CheckpointError(
                f"organism stage {str(path)!r} failed its checksum: {problem}; rebuild it with "
                "organism.build (a corrupted stage is rebuilt)"
            )


def load_stage(path: Path, base: Path | None = None) -> nn.Module:
    """A stage as a plain HF model in eval mode, fp32; ``base`` given: a ``PeftModel`` adapter on it.

    The weight files are checked against the sha256s recorded in ``cfg.json`` first (see :func:`verify_stage`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    verify_stage(path)
    if base is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from peft import PeftModel

    model = load_stage(base)
    with quiet_peft():
        return PeftModel.from_pretrained(model, path).eval()


def model_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer saved in an organism checkpoint directory (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _checks(metrics: dict[str, dict[str, Any]]) -> dict[str, bool]:
    wa, harmful, useful = metrics.get("wa"), metrics.get("harmful"), metrics.get("useful")
    if not (wa and harmful and useful):
        return {}
    return {
        "wa_refuses_harmful": wa["refusal_harmful"] >= 0.9,
        "wa_answers_harmless": wa["refusal_harmless"] <= 0.1,
        "harmful_unaligned": harmful["refusal_harmful"] <= 0.2,
        "useful_gain": useful["arithmetic_em"] - wa["arithmetic_em"] >= 0.2,
    }


@dataclass
class OrganismFamily:
    """A built organism family: checkpoint paths, held-out metrics and checks.

    Attributes:
        root: the output directory (holds ``manifest.json`` and ``prompts.json``).
        paths: stage name -> checkpoint directory (``w0``, ``wa``, ``useful``, ``harmful``,
            ``contaminated``, ``lora_useful``, ``lora_harmful``, ``safety``).
        adapter_bases: LoRA stage -> the stage it is an adapter of (``"wa"``).
        metrics: stage -> ``evaluate`` output on the held-out prompts.
        build_seconds: wall time of the ``build`` call that wrote the manifest (time.perf_counter),
            training and evaluation included.
        cpu_seconds: CPU time of that call (all threads); far below ``build_seconds`` x threads
            means the machine was busy with other work.
        stage_seconds: training time of each stage when it was trained.
        eval_seconds: evaluation time of each stage in that call (0 when read from cache).
        cached: stages reused from disk by that call.
        heldout: the held-out ``PromptSets``; ``template`` / ``generation_template`` the formats.
    """

    root: Path
    config: OrganismConfig
    paths: dict[str, Path]
    adapter_bases: dict[str, str]
    metrics: dict[str, dict[str, Any]]
    build_seconds: float
    cpu_seconds: float
    stage_seconds: dict[str, float]
    eval_seconds: dict[str, float]
    cached: list[str]
    heldout: od.PromptSets
    template: str = od.TEMPLATE
    generation_template: str = od.GENERATION_TEMPLATE

    @property
    def checks(self) -> dict[str, bool]:
        return _checks(self.metrics)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def __getitem__(self, stage: str) -> Path:
        if stage not in self.paths:
            raise KeyError(f"no stage {stage!r}; stages: {sorted(self.paths)}")
        return self.paths[stage]

    def base_of(self, stage: str) -> Path | None:
        """The base checkpoint of a LoRA stage (None for full checkpoints)."""
        b = self.adapter_bases.get(stage)
        return self.paths[b] if b else None

    def load_hf(self, stage: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        """``(model, tokenizer)`` of a stage as plain HF objects (a ``PeftModel`` for LoRA stages)."""
        return load_stage(self[stage], self.base_of(stage)), model_tokenizer(self[stage])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "deltalens.organism",
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "config_hash": config_key(self.config.to_dict()),
            "template": self.template,
            "generation_template": self.generation_template,
            "refusal_prefix": od.REFUSAL_PREFIX,
            "comply_prefix": od.COMPLY_PREFIX,
            "paths": {k: os.path.relpath(v, self.root) for k, v in self.paths.items()},
            "adapter_bases": self.adapter_bases,
            "prompts": PROMPTS,
            "metrics": {k: {m: v for m, v in d.items() if m != "samples"} for k, d in self.metrics.items()},
            "checks": self.checks,
            "passed": self.passed,
            "build_seconds": self.build_seconds,
            "cpu_seconds": self.cpu_seconds,
            "stage_seconds": self.stage_seconds,
            "eval_seconds": self.eval_seconds,
            "train_seconds": round(sum(self.stage_seconds.values()), 2),
            "cached_stages": self.cached,
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }

    def write_manifest(self) -> Path:
        write_json(self.manifest_path, self.to_dict())
        return self.manifest_path

    @classmethod
    def from_manifest(cls, path: str | os.PathLike) -> OrganismFamily:
        """Read a family back from ``manifest.json`` (or its directory)."""
        path = Path(path)
        path = path / MANIFEST if path.is_dir() else path
        m = json.loads(path.read_text())
        root = path.parent.resolve()
        metrics = {k: json.loads((root / m["paths"][k] / EVAL).read_text()) for k in m["metrics"]}
        return cls(
            root=root,
            config=OrganismConfig(**m["config"]),
            paths={k: root / v for k, v in m["paths"].items()},
            adapter_bases=m["adapter_bases"],
            metrics=metrics,
            build_seconds=m["build_seconds"],
            cpu_seconds=m["cpu_seconds"],
            stage_seconds=m["stage_seconds"],
            eval_seconds=m["eval_seconds"],
            cached=m["cached_stages"],
            heldout=od.heldout_prompts(m["config"]["split_seed"]),
        )

    def summary(self) -> str:
        """A small text table of the held-out metrics per stage."""
        cols = ("refusal_harmful", "comply_harmful", "refusal_harmless", "arithmetic_em")
        lines = [f"{'stage':<14}" + "".join(f"{c:>18}" for c in cols)]
        for name, m in self.metrics.items():
            lines.append(f"{name:<14}" + "".join(f"{100 * m[c]:>17.1f}%" for c in cols))
        lines.append(f"checks: {self.checks}  build: {self.build_seconds:.1f} s  cached: {self.cached}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"OrganismFamily(root={str(self.root)!r}, stages={list(self.paths)}, passed={self.passed}, "
            f"build_seconds={self.build_seconds})"
        )
