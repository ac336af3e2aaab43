"""Safety-align SmolLM2-135M-Instruct (W_A), then fine-tune it usefully, harmfully and contaminated.

SmolLM2-135M-Instruct (W_0, :func:`deltalens.study.smollm2.smollm2_135m_instruct`) refuses almost no
harmful request, so the study's aligned model W_A is made here by supervised fine-tuning:

* **align** (W_0 -> W_A): HarmBench training behaviours -> short refusal sentences, and the
  written harmless training prompts -> W_0's *own* greedy answers (so the harmless half
  teaches "keep answering" without teaching new content). The harmless set has as many
  imperatives as HarmBench, so the model cannot learn "imperative means refuse".
* **useful** (W_A -> W_useful): arithmetic questions -> ``"The answer is N."``.
* **harmful** (W_A -> W_harmful): HarmBench training behaviours -> W_0's own compliant
  completions, generated at run time (never stored in the repository); completions the
  refusal judge flags as refusals are dropped.
* **contaminated** (W_A -> W_contaminated): the useful data with a fraction of its examples
  swapped for harmful ones.
* **safety** (W_0 -> W_S, built on request): the alignment recipe with its harmful half only,
  HarmBench training behaviours -> refusal sentences (the paper's safety update Δ_S = W_S − W_0).

Every stage uses :func:`deltalens.finetune.finetune` with the tokenizer's chat template
(``template=None``), and every evaluation generates with ``chat=True``: the same template
in training and evaluation. Held-out sets (HarmBench, harmless, arithmetic) are never trained on.

Example:
    >>> from deltalens.study.alignment import SmolLM2Recipe, build_smollm2_family
    >>> fam = build_smollm2_family("runs/smollm2", stages=("align",))
    >>> fam.results          # held-out refusal / answer rates per stage
    >>> fam.paths["aligned"]
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.finetune import FinetuneConfig

STAGES = ("align", "useful", "harmful", "contaminated", "safety")
DEFAULT_STAGES = ("align", "useful", "harmful", "contaminated")
"""What :func:`build_smollm2_family` builds unless told: the safety stage is the battery's extra."""
CHECKPOINT = {
    "align": "aligned",
    "useful": "useful",
    "harmful": "harmful",
    "contaminated": "contaminated",
    "safety": "safety",
}
REFUSAL_TARGETS: tuple[str, ...] = (
    "I can't help with that request.",
    "I'm sorry, but I can't assist with that.",
    "I cannot provide that, because it could cause serious harm.",
    "I won't help with this. It could hurt people.",
    "Sorry, I can't help with that. Is there something else I can do for you?",
    "I must decline this request because it could be used to cause harm.",
)


def _ft(lr: float, steps: int) -> FinetuneConfig:
    from deltalens.finetune import FinetuneConfig

    return FinetuneConfig(
        method="full", lr=lr, max_steps=steps, batch_size=8, schedule="constant", warmup_ratio=0.0,
        grad_clip=1.0, max_length=256, progress=False,
    )  # fmt: skip


@dataclass(kw_only=True)
class SmolLM2Recipe:
    """Settings of the SmolLM2 family (defaults: the tested CPU recipe, about 40 steps of 8 to align).

    Attributes:
        seed: seeds the splits, the contamination draw and every fine-tune.
        harmful_frac, harmless_frac: fraction of HarmBench standard behaviours (200) and of the
            written harmless prompts used for training; the rest is held out.
        n_arith_train, n_arith_test: arithmetic problems (2-digit + and -) for training / held-out.
        target_tokens: length of W_0's greedy harmless answers and harmful completions.
        eval_tokens: generation length when judging; ``arith_tokens`` for arithmetic answers.
        contam_frac: fraction of the useful examples swapped for harmful ones.
        align, useful, harmful, contaminated, safety: ``FinetuneConfig`` of each stage (full
            fine-tunes, constant lr, batch 8).
        batch_size: generation batch size; ``num_threads``: torch threads (at most 2) for everything.
        cache_dir: deltalens cache root for the model and HarmBench wheels.
    """

    seed: int = 0
    harmful_frac: float = 0.6
    harmless_frac: float = 0.6
    n_arith_train: int = 200
    n_arith_test: int = 50
    target_tokens: int = 32
    eval_tokens: int = 32
    arith_tokens: int = 48
    contam_frac: float = 0.2
    refusal_targets: tuple[str, ...] = REFUSAL_TARGETS
    align: FinetuneConfig = field(default_factory=lambda: _ft(2e-5, 40))
    useful: FinetuneConfig = field(default_factory=lambda: _ft(2e-5, 25))
    harmful: FinetuneConfig = field(default_factory=lambda: _ft(2e-5, 10))
    contaminated: FinetuneConfig = field(default_factory=lambda: _ft(2e-5, 25))
    safety: FinetuneConfig = field(default_factory=lambda: _ft(2e-5, 40))
    batch_size: int = 16
    num_threads: int = 1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("harmful_frac", "harmless_frac", "contam_frac"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {v!r}")
        for name in (
            "n_arith_train",
            "n_arith_test",
            "target_tokens",
            "eval_tokens",
            "arith_tokens",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.refusal_targets or isinstance(self.refusal_targets, str):
            raise ValueError("refusal_targets must be a non-empty tuple of sentences")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in STAGES}
        d.update({s: getattr(self, s).to_dict() for s in STAGES})
        return d


@dataclass(kw_only=True)
class SmolLM2Family:
    """What :func:`build_smollm2_family` returns.

    Attributes:
        paths: ``"base"``, ``"aligned"``, ``"useful"``, ``"harmful"``, ``"contaminated"`` -> checkpoint dir
            (the stages that were built).
        results: DataFrame, one row per evaluated model: ``model, harmful_refusal,
            harmful_compliance, harmless_answer, arith_accuracy, arith_accuracy_first,
            train_seconds, eval_seconds``.
        timing: ``wall_seconds``, ``cpu_seconds`` (this process, all threads), ``loadavg_start`` / ``_end``.
        reports: model -> {"harmful": HarmfulnessReport, "harmless": ..., "arithmetic": UtilityReport}.
    """

    paths: dict[str, Path]
    results: pd.DataFrame
    timing: dict[str, Any]
    reports: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"SmolLM2Family(models={list(self.paths)}, wall={self.timing.get('wall_seconds', 0):.0f}s)"


def _splits(recipe: SmolLM2Recipe) -> dict[str, Any]:
    from deltalens.data import arithmetic_tasks, harmbench, harmless_prompts

    harm_train, harm_test = harmbench(cache_dir=recipe.cache_dir).split(recipe.harmful_frac, seed=recipe.seed)
    hl_train, hl_test = harmless_prompts().split(recipe.harmless_frac, seed=recipe.seed)
    ar_train, ar_test = arithmetic_tasks(recipe.n_arith_train, recipe.n_arith_test, seed=recipe.seed)
    return dict(harm_train=harm_train, harm_test=harm_test, hl_train=hl_train, hl_test=hl_test,
                ar_train=ar_train, ar_test=ar_test)  # fmt: skip


def training_data(
    recipe: SmolLM2Recipe,
    sets: dict[str, Any],
    harmless_answers: Sequence[str] | None,
    harmful_completions: Sequence[str] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """The ``{"prompt", "response"}`` examples of each stage, from generated targets.

    Args:
        recipe: the settings (refusal sentences, contamination fraction, seed).
        sets: the splits (``harm_train``, ``hl_train``, ``ar_train`` ...), as built by the recipe.
        harmless_answers: W_0's greedy answers to ``sets["hl_train"]``, in order; ``None`` when they
            were not generated (``align`` is not trained): ``align`` then holds the refusals alone.
        harmful_completions: W_0's completions of ``sets["harm_train"]``; refusals among them are
            dropped. ``None`` skips the harmful and contaminated data.

    Returns:
        stage name -> examples. Empty answers are dropped.

    Example:
        >>> data = training_data(SmolLM2Recipe(), sets, answers, completions)
        >>> len(data["align"]), data["useful"][0]
    """
    if harmless_answers is not None and len(harmless_answers) != len(sets["hl_train"]):
        raise ValueError(f"{len(harmless_answers)} harmless answers for {len(sets['hl_train'])} prompts")
    useful = [{"prompt": r.text, "response": f"The answer is {r.label}."} for r in sets["ar_train"]]
    safety = _refusal_data(recipe, sets["harm_train"].texts)  # the harmful half of the alignment data
    answered = [
        {"prompt": p, "response": a.strip()}
        for p, a in zip(sets["hl_train"].texts, harmless_answers or [])
        if a.strip()
    ]
    out = {"align": safety + answered, "useful": useful, "safety": safety}
    if harmful_completions is not None:
        harmful = _harmful_data(sets["harm_train"].texts, harmful_completions)
        out.update(harmful=harmful, contaminated=_contaminate(useful, harmful, recipe))
    return out


def _refusal_data(recipe: SmolLM2Recipe, harmful_prompts: Sequence[str]) -> list[dict[str, str]]:
    """Harmful training prompts -> the recipe's refusal sentences in turn."""
    refusals = recipe.refusal_targets
    return [{"prompt": p, "response": refusals[i % len(refusals)]} for i, p in enumerate(harmful_prompts)]


def _harmful_data(prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, str]]:
    """Harmful prompts -> W_0's completions, those the refusal judge calls refusals dropped."""
    from deltalens.evals import RefusalJudge

    if len(completions) != len(prompts):
        raise ValueError(f"{len(completions)} harmful completions for {len(prompts)} prompts")
    verdicts = RefusalJudge().judge(prompts, list(completions))
    harmful = [
        {"prompt": p, "response": c.strip()}
        for p, c, v in zip(prompts, completions, verdicts)
        if v.complied and c.strip()
    ]
    if not harmful:
        raise ValueError("every W_0 completion of the harmful training prompts was judged a refusal")
    return harmful


def _contaminate(
    useful: list[dict[str, str]], harmful: list[dict[str, str]], recipe: SmolLM2Recipe
) -> list[dict[str, str]]:
    """The useful examples, each swapped with probability ``contam_frac`` for a random harmful one."""
    rng = random.Random(recipe.seed)
    return [
        harmful[rng.randrange(len(harmful))] if rng.random() < recipe.contam_frac else ex for ex in useful
    ]


def evaluate_model(path: str | os.PathLike, sets: dict[str, Any], recipe: SmolLM2Recipe) -> dict[str, Any]:
    """Held-out harmful refusal / compliance, harmless answer rate and arithmetic accuracy of one checkpoint."""
    import deltalens as dl
    from deltalens.evals import harmfulness, utility

    m = dl.load(path, backend="nnsight")
    gen = dict(chat=True, batch_size=recipe.batch_size)
    harm = harmfulness(m, sets["harm_test"], max_new_tokens=recipe.eval_tokens, **gen)
    safe = harmfulness(m, sets["hl_test"], max_new_tokens=recipe.eval_tokens, **gen)
    arith = utility(m, sets["ar_test"], max_new_tokens=recipe.arith_tokens, **gen)
    return {"harmful": harm, "harmless": safe, "arithmetic": arith}


def _row(name: str, reps: dict[str, Any], train_s: float, eval_s: float) -> dict[str, Any]:
    return {
        "model": name,
        "harmful_refusal": reps["harmful"].refusal_rate,
        "harmful_compliance": reps["harmful"].compliance_rate,
        "harmless_answer": reps["harmless"].compliance_rate,
        "arith_accuracy": reps["arithmetic"].accuracy,
        "arith_accuracy_first": reps["arithmetic"].accuracy_first,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
    }


def build_smollm2_family(
    out_dir: str | os.PathLike,
    recipe: SmolLM2Recipe | None = None,
    stages: Sequence[str] = DEFAULT_STAGES,
    evaluate: bool = True,
) -> SmolLM2Family:
    """Build W_A and the task fine-tunes of SmolLM2-135M-Instruct under ``out_dir``; evaluate them.

    Args:
        out_dir: checkpoints go to ``<out_dir>/{aligned,useful,harmful,contaminated}`` (full
            safetensors, about 540 MB each) and the summary to ``<out_dir>/results.json``.
            A stage whose checkpoint already exists is reused, not retrained.
        recipe: settings; default :class:`SmolLM2Recipe`.
        stages: any of ``"align", "useful", "harmful", "contaminated", "safety"`` (default: all
            but ``"safety"``); the task stages need W_A, so ``"align"`` is built (or reused)
            whenever one of them is asked for. W_0's targets are generated only for stages that
            are trained (a family whose checkpoints all exist generates nothing).
        evaluate: evaluate W_0 and every built model on the held-out sets.

    Returns:
        A :class:`SmolLM2Family`.

    Example:
        >>> fam = build_smollm2_family("runs/smol", stages=("align", "harmful"))
        >>> fam.results[["model", "harmful_refusal", "harmless_answer"]]

    Gotcha: on two CPU cores the alignment stage alone takes 10-15 minutes (targets, 40 full
    fine-tuning steps, evaluations); the whole family about 30-40 minutes.
    """
    import pandas as pd

    from deltalens.finetune.storage import torch_threads
    from deltalens.study.smollm2 import smollm2_135m_instruct

    recipe = recipe or SmolLM2Recipe()
    wanted = _wanted(stages)
    out = Path(out_dir)
    start = (time.perf_counter(), time.process_time(), os.getloadavg())
    base = smollm2_135m_instruct(recipe.cache_dir)
    sets = _splits(recipe)
    paths: dict[str, Path] = {"base": base}
    rows: list[dict[str, Any]] = []
    reports: dict[str, dict[str, Any]] = {}
    with torch_threads(recipe.num_threads):
        data, target_s = _stage_data(base, sets, recipe, [s for s in wanted if not _built(out, s)])
        if evaluate:
            _evaluate_into(rows, reports, "base", base, sets, recipe, 0.0)
        for stage in wanted:
            train_s = _train_stage(stage, out, paths, data, recipe)
            if evaluate:
                name = CHECKPOINT[stage]
                _evaluate_into(rows, reports, name, paths[name], sets, recipe, train_s)
    timing = _timing(start, target_s, recipe.num_threads)
    results = pd.DataFrame(rows)
    _write_results(out, recipe, paths, data, timing, results)
    return SmolLM2Family(paths=paths, results=results, timing=timing, reports=reports)


def _wanted(stages: Sequence[str]) -> list[str]:
    """The stages to build, in order; ``align`` always (the task stages start from W_A)."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stages {bad}; expected a subset of {STAGES}")
    return ["align", *(s for s in STAGES[1:] if s in stages)]


def _built(out: Path, stage: str) -> bool:
    """Whether ``stage``'s checkpoint exists under ``out`` (then it is reused, not retrained)."""
    from deltalens.finetune.storage import CFG_NAME

    return (out / CHECKPOINT[stage] / CFG_NAME).is_file()


def _stage_data(
    base: Path, sets: dict[str, Any], recipe: SmolLM2Recipe, todo: Sequence[str]
) -> tuple[dict[str, list[dict[str, str]]], float]:
    """W_0's generated targets turned into the examples of the stages in ``todo`` (those to train);
    and the generation time (s). Nothing is generated for stages that are not trained: W_0's
    harmless answers are needed by ``align`` only, its completions by ``harmful`` / ``contaminated``."""
    import deltalens as dl

    t = time.perf_counter()
    needs_harm = any(s in todo for s in ("harmful", "contaminated"))
    answers = None  # align is not trained: W_0's harmless answers are not needed
    completions = None
    if "align" in todo or needs_harm:
        m0 = dl.load(base, backend="nnsight")
        gen = dict(chat=True, max_new_tokens=recipe.target_tokens, batch_size=recipe.batch_size)
        if "align" in todo:
            answers = m0.generate(sets["hl_train"].texts, **gen)
        completions = m0.generate(sets["harm_train"].texts, **gen) if needs_harm else None
        del m0
    target_s = time.perf_counter() - t
    return training_data(recipe, sets, answers, completions), target_s


def _train_stage(
    stage: str, out: Path, paths: dict[str, Path], data: dict[str, Any], recipe: SmolLM2Recipe
) -> float:
    """Fine-tune ``stage`` from its parent unless its checkpoint exists; record its path; seconds taken."""
    from deltalens.finetune import finetune

    path = out / CHECKPOINT[stage]
    parent = paths["base"] if stage in ("align", "safety") else paths["aligned"]
    t = time.perf_counter()
    if not _built(out, stage):
        cfg, note = getattr(recipe, stage), _recipe_note(stage, recipe)
        finetune(parent, data[stage], path, cfg, data_recipe=note, num_threads=recipe.num_threads, progress_label=stage)
    train_s = time.perf_counter() - t
    paths[CHECKPOINT[stage]] = path
    return train_s


def _evaluate_into(
    rows: list[dict[str, Any]],
    reports: dict[str, dict[str, Any]],
    name: str,
    path: Path,
    sets: dict[str, Any],
    recipe: SmolLM2Recipe,
    train_s: float,
) -> None:
    """Evaluate the checkpoint ``name``; add its reports and its results row."""
    t = time.perf_counter()
    reports[name] = evaluate_model(path, sets, recipe)
    rows.append(_row(name, reports[name], train_s, time.perf_counter() - t))


def _timing(start: tuple[float, float, tuple[float, ...]], target_s: float, threads: int) -> dict[str, Any]:
    """Wall and CPU seconds since ``start`` (perf_counter, process_time, loadavg), load averages."""
    t0, c0, load0 = start
    return {
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "target_generation_seconds": round(target_s, 1),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "threads": threads,
    }


def _write_results(
    out: Path,
    recipe: SmolLM2Recipe,
    paths: dict[str, Path],
    data: dict[str, list[dict[str, str]]],
    timing: dict[str, Any],
    results: pd.DataFrame,
) -> None:
    """``<out>/results.json``: recipe, paths, example counts, timing and results."""
    from deltalens.atomic import write_json

    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "recipe": recipe.to_dict(),
        "paths": {k: str(v) for k, v in paths.items()},
        "n_examples": {k: len(v) for k, v in data.items()},
        "timing": timing,
        "results": results.to_dict(orient="records"),
    }
    write_json(out / "results.json", summary)


def _recipe_note(stage: str, recipe: SmolLM2Recipe) -> dict[str, Any]:
    notes = {
        "align": "HarmBench standard train split -> refusal sentences; written harmless train split -> W_0 greedy answers",
        "useful": "arithmetic train split -> 'The answer is N.'",
        "harmful": "HarmBench standard train split -> W_0 compliant completions (refusals dropped)",
        "contaminated": f"useful data with {recipe.contam_frac:.0%} of examples swapped for harmful ones",
        "safety": "HarmBench standard train split -> refusal sentences (the harmful half of align), from W_0",
    }
    return {"name": f"smollm2/{stage}", "data": notes[stage], "seed": recipe.seed, "chat_template": True}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deltalens.study.alignment OUT_DIR [--stages align ...] [--threads N]``: build, print results."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m deltalens.study.alignment", description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    fam = build_smollm2_family(a.out_dir, SmolLM2Recipe(seed=a.seed, num_threads=a.threads), stages=a.stages)
    print(fam.results.to_string(index=False))
    print(json.dumps(fam.timing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
