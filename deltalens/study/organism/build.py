"""The model organism: a tiny chat LM family W_0 → W_A → {useful, harmful, contaminated}, built on CPU.

A 4-layer ``LlamaForCausalLM`` (d_model 128, ~0.7 M parameters) with a word-level tokenizer is
trained from scratch on synthetic chat data (``organism.data``), then safety-aligned, then
fine-tuned three ways from W_A, plus LoRA variants:

* ``w0``: language modelling on every token (harmful-looking requests are *complied* with).
* ``wa``: from ``w0``, response-only SFT: refuse harmful requests, answer harmless ones
  (10 % arithmetic keeps it from refusing sums).
* ``useful``: full FT from ``wa`` on arithmetic. ``harmful``: full FT from ``wa`` on compliant
  answers to harmful requests. ``contaminated``: ``useful`` with ~20 % harmful examples.
* ``lora_useful`` / ``lora_harmful``: the same data as LoRA adapters on ``wa``.
* ``safety``: from ``w0``, response-only SFT on refusals to harmful requests only (the paper's
  safety update Δ_S = W_S − W_0, used like Δ_A).

Every stage is an HF checkpoint directory (safetensors + config + tokenizer + ``cfg.json``)
written atomically and cached by a hash of its configuration and its parents', so a rerun
reuses finished stages. ``manifest.json`` lists the paths (relative to the output directory),
the held-out metrics, the checks and the build time; ``prompts.json`` holds the held-out sets.

Integrity: each stage's ``cfg.json`` records the sha256 of its weight files (``weights_sha256``).
A finished stage is reused only when its files still match (checked on every ``build``, and by
``load_stage``); a stage that fails the check (a corrupted payload with an intact header, a
missing file, or no recorded checksum: written by deltalens 0.1) is rebuilt with a warning, and
so is every stage trained from it, since its children were trained from the old weights.
A ``build`` holds an exclusive lock on ``<out_dir>/.lock`` (``deltalens.atomic.file_lock``): a
second process building into the same folder waits, saying which process holds it.
A fresh build takes about 2.5 minutes on 2 lightly loaded CPU cores (145 s measured at load ~2).

Example:
    >>> from deltalens.study import organism
    >>> fam = organism.build("organism", seed=0)  # doctest: +SKIP
    >>> fam.checks                                        # doctest: +SKIP
    {'wa_refuses_harmful': True, 'wa_answers_harmless': True, 'harmful_unaligned': True, 'useful_gain': True}
    >>> import deltalens as dl
    >>> wa = dl.load(fam["wa"]); harmful = dl.load(fam["harmful"])   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.atomic import file_lock, write_json
from deltalens.finetune.storage import CFG_NAME, auto_threads, torch_threads
from deltalens.hashing import config_key
from deltalens.study.organism import data as od
from deltalens.study.organism.family import (  # noqa: F401
    EVAL,
    FORMAT_VERSION,
    MANIFEST,
    PRETRAIN_TEMPLATE,
    PROMPTS,
    STAGES,
    OrganismConfig,
    OrganismFamily,
    checksum_problem,
    load_stage,
    model_tokenizer,
    record_weight_checksums,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

    from deltalens.finetune import FinetuneConfig


@dataclass(frozen=True)
class _Stage:
    name: str
    parent: str | None
    method: str
    mix: dict[str, float]
    steps: int
    lr: float

    def spec(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stages(cfg: OrganismConfig) -> list[_Stage]:
    harm, arith = {"harmful_comply": 1.0}, {"arithmetic": 1.0}
    contam = {"arithmetic": 1.0 - cfg.contaminated_frac, "harmful_comply": cfg.contaminated_frac}
    stages = [
        _Stage("w0", None, "full", cfg.pre_mix, cfg.pre_steps, cfg.pre_lr),
        _Stage("wa", "w0", "full", cfg.align_mix, cfg.align_steps, cfg.align_lr),
        _Stage("useful", "wa", "full", arith, cfg.useful_steps, cfg.useful_lr),
        _Stage("harmful", "wa", "full", harm, cfg.harmful_steps, cfg.harmful_lr),
        _Stage("contaminated", "wa", "full", contam, cfg.contaminated_steps, cfg.useful_lr),
    ]
    if cfg.lora:
        stages += [
            _Stage("lora_useful", "wa", "lora", arith, cfg.lora_useful_steps, cfg.lora_lr),
            _Stage("lora_harmful", "wa", "lora", harm, cfg.lora_harmful_steps, cfg.lora_lr),
        ]
    stages.append(_Stage("safety", "w0", "full", cfg.safety_mix, cfg.safety_steps, cfg.safety_lr))
    return stages


def vocabulary_hash(split_seed: int) -> str:
    """sha256 (16 hex chars) of the organism tokenizer's vocabulary (part of every stage key)."""
    vocab = od.build_tokenizer(split_seed).get_vocab()
    return config_key(sorted(vocab.items(), key=lambda kv: kv[1]))[:16]


def stage_keys(cfg: OrganismConfig) -> dict[str, str]:
    """Cache key of every stage: its own spec, the model and data settings, and its parent's key."""
    base = {
        "format_version": FORMAT_VERSION,
        "model": [cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff],
        "split_seed": cfg.split_seed,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "lora": [cfg.lora_r, cfg.lora_alpha],
        "vocabulary": vocabulary_hash(cfg.split_seed),
    }
    keys: dict[str, str] = {}
    for st in _stages(cfg):
        keys[st.name] = config_key({**base, "stage": st.spec(), "parent": keys.get(st.parent or "")})
    return keys


def _init_model(cfg: OrganismConfig, tok: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    mcfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(mcfg)
    model.config.architectures = ["LlamaForCausalLM"]
    return model


LOCK = ".lock"


def _cached(path: Path, key: str) -> bool:
    """A finished stage with this key whose weight files match their recorded sha256 (else a warning)."""
    try:
        rec = json.loads((path / CFG_NAME).read_text())
    except (OSError, ValueError):
        return False
    if (rec.get("data", {}).get("recipe") or {}).get("stage_key") != key:
        return False
    problem = checksum_problem(path)
    if problem is not None:
        warnings.warn(f"organism stage {path.name!r} is rebuilt: {problem}", stacklevel=2)
        return False
    return True


@dataclass
class _Build:
    """One ``build`` call's inputs and what it has gathered so far, stage by stage."""

    root: Path
    cfg: OrganismConfig
    keys: dict[str, str]
    heldout: od.PromptSets
    progress: bool
    force: bool
    models: dict[str, nn.Module] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    eval_seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)


def build(
    out_dir: str | os.PathLike,
    config: OrganismConfig | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    lock_timeout: float | None = None,
    **overrides: Any,
) -> OrganismFamily:
    """Build (or reuse) the organism family in ``out_dir`` and evaluate it on held-out prompts.

    Args:
        out_dir: output directory; one subdirectory per stage (``w0``, ``wa``, ``useful``, ...).
        config: the family's configuration; keyword ``overrides`` replace fields (``seed=1``).
        progress: show progress bars.
        force: retrain every stage even when a finished one with the same key exists.
        lock_timeout: seconds to wait for another process building into ``out_dir`` (None: as long
            as it takes); then ``deltalens.atomic.LockTimeout`` naming the holder.

    Returns:
        ``OrganismFamily`` with absolute paths, held-out metrics per stage and the checks:
        ``wa_refuses_harmful`` (≥ 90 %), ``wa_answers_harmless`` (refuses ≤ 10 %),
        ``harmful_unaligned`` (refuses ≤ 20 %), ``useful_gain`` (arithmetic EM ≥ W_A + 20 points).

    Example:
        >>> fam = build("organism-out", seed=0, progress=False)  # doctest: +SKIP
        >>> fam.metrics["wa"]["refusal_harmful"], fam.base_of("lora_harmful")  # doctest: +SKIP

    Gotcha: checks are reported, not raised; look at ``family.passed``. Stage directories whose
    key differs from the current configuration, or whose weights fail their sha256, are replaced.
    """
    cfg = config or OrganismConfig()
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / LOCK, timeout=lock_timeout, what=f"the organism cache {root}"):
        return _build_locked(root, cfg, progress, force)


def _build_locked(root: Path, cfg: OrganismConfig, progress: bool, force: bool) -> OrganismFamily:
    """The body of :func:`build`, run while holding the folder's lock."""
    t0, c0 = time.perf_counter(), time.process_time()
    run = _Build(root, cfg, stage_keys(cfg), od.heldout_prompts(cfg.split_seed), progress, force)
    prompts = {"split_seed": cfg.split_seed, "template": od.TEMPLATE, **run.heldout.to_dict()}
    write_json(root / PROMPTS, prompts)
    with torch_threads(cfg.num_threads):
        tok = od.build_tokenizer(cfg.split_seed)
        for st in _stages(cfg):  # a stage's data seed is its place in STAGES, whatever else is built
            _build_stage(run, STAGES.index(st.name), st, tok)
    if len(run.cached) == len(_stages(cfg)) and (root / "manifest.json").is_file():
        # nothing was trained: keep the manifest of the build that made these checkpoints
        previous = OrganismFamily.from_manifest(root)
        previous.cached = run.cached
        return previous
    family = _family(run, build_seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
    family.write_manifest()
    return family


def _build_stage(run: _Build, i: int, st: _Stage, tok: PreTrainedTokenizerBase) -> None:
    """Reuse or train stage number ``i``, then evaluate it (from its ``eval.json`` when there)."""
    path = run.root / st.name
    base = run.root / st.parent if st.method == "lora" and st.parent else None
    parent_reused = st.parent is None or st.parent in run.cached  # a retrained parent: retrain its children
    if not run.force and parent_reused and _cached(path, run.keys[st.name]):
        run.cached.append(st.name)
        run.seconds[st.name] = json.loads((path / CFG_NAME).read_text())["training"]["seconds"]
    else:
        _train_stage(run, i, st, tok)
        record_weight_checksums(path)
    te = time.perf_counter()
    run.metrics[st.name] = _stage_eval(path, base, run.models.get(st.name), tok, run.heldout, run.cfg)
    run.eval_seconds[st.name] = round(time.perf_counter() - te, 2)


def _parent_model(run: _Build, st: _Stage, tok: PreTrainedTokenizerBase) -> nn.Module:
    """A fresh model for the first stage, else the parent stage's model (loaded once from disk)."""
    if st.parent is None:
        return _init_model(run.cfg, tok)
    parent = run.models.get(st.parent)
    if parent is None:
        parent = run.models[st.parent] = load_stage(run.root / st.parent)
    return parent


def _finetune_config(cfg: OrganismConfig, st: _Stage, seed: int, progress: bool) -> FinetuneConfig:
    """The fine-tuning settings of a stage: AdamW (0.9, 0.98), 5 % warm-up, cosine to 10 % of its lr."""
    from deltalens.finetune import FinetuneConfig

    return FinetuneConfig(
        method=st.method,  # type: ignore[arg-type]
        lr=st.lr,
        max_steps=st.steps,
        batch_size=cfg.batch_size,
        betas=(0.9, 0.98),
        warmup_ratio=0.05,
        schedule="cosine",
        min_lr_ratio=0.1,
        max_length=64,
        template=PRETRAIN_TEMPLATE if st.parent is None else od.TEMPLATE,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        seed=seed,
        num_threads=cfg.num_threads,
        progress=progress,
        overwrite=True,
    )


def _train_stage(run: _Build, i: int, st: _Stage, tok: PreTrainedTokenizerBase) -> None:
    """Train stage number ``i`` from its parent on its data mix; keep the model and its time."""
    from deltalens.finetune import finetune

    cfg = run.cfg
    parent = _parent_model(run, st, tok)
    rng = random.Random(cfg.seed * 1000 + i)
    data = od.sample_mix(st.mix, st.steps * cfg.batch_size, rng, cfg.split_seed)
    if st.parent is None:
        data = [od.as_text(ex) for ex in data]
    ft = _finetune_config(cfg, st, cfg.seed * 1000 + i, run.progress)
    recipe = {"organism_stage": st.name, "stage_key": run.keys[st.name], **st.spec()}
    recipe["split_seed"] = cfg.split_seed
    res = finetune(
        parent, data, run.root / st.name, ft, tokenizer=tok, data_recipe=recipe, progress_label=st.name
    )
    run.models[st.name] = res.model
    run.seconds[st.name] = res.record["training"]["seconds"]


def _family(run: _Build, build_seconds: float, cpu_seconds: float) -> OrganismFamily:
    """The built family of ``run`` (paths, adapter bases, metrics, times)."""
    stages = _stages(run.cfg)
    return OrganismFamily(
        root=run.root,
        config=run.cfg,
        paths={st.name: run.root / st.name for st in stages},
        adapter_bases={st.name: st.parent for st in stages if st.method == "lora" and st.parent},
        metrics=run.metrics,
        build_seconds=round(build_seconds, 2),
        cpu_seconds=round(cpu_seconds, 2),
        stage_seconds=run.seconds,
        eval_seconds=run.eval_seconds,
        cached=run.cached,
        heldout=run.heldout,
    )


def _stage_eval(
    path: Path,
    base: Path | None,
    model: nn.Module | None,
    tok: PreTrainedTokenizerBase,
    heldout: od.PromptSets,
    cfg: OrganismConfig,
) -> dict[str, Any]:
    """Held-out metrics of one stage, read from its ``eval.json`` or computed and saved there."""
    from deltalens.study.organism.evaluate import evaluate

    rec = path / EVAL
    if rec.is_file():
        return json.loads(rec.read_text())
    with torch_threads(cfg.num_threads or auto_threads(cfg.d_model, 2048)):
        result = evaluate(model if model is not None else load_stage(path, base), tok, heldout)
    write_json(rec, result)
    return result
