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
from deltalens.study.battery.config import STAGES, BatteryConfig, ConfigError, default_cache
from deltalens.study.battery.units import COMPUTATION_VERSION, UnitStore, tokenizer_hash
from deltalens.study.tables import BATTERY_PROBES, BATTERY_SWEEP, MODEL, TASK

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
}
"""Update name -> (from stage, to stage): ΔW_A = W_A − W_0 and the task updates W_FT − W_A."""

DEVICE = "cpu"
"""Where the battery loads its models; part of every unit key (numbers differ across device kinds)."""

TABLE_NAMES = ("evals", "sweep", "weight_overlap", "activation_overlap", "probes", "verdicts")
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

    def prompts_hash(self) -> str:
        """sha256 (16 hex chars) over every prompt set's contents, the template and the chat flag."""
        arith = text_hash(x for pair in self.arithmetic for x in pair)
        sets = (self.harmful, self.harmless, self.groups_harmful, self.groups_harmless)
        return parts_hash(*(text_hash(t) for t in sets), arith, self.template or "", self.chat)[:16]


# ---------------------------------------------------------------- family
def _object_groups(prompts: list[str], pairs: list[tuple[str, str]]) -> list[str]:
    """Group how-to prompts by the object they name, so probes never test on a seen object."""
    objects = sorted({t for _, t in pairs}, key=len, reverse=True)
    return [next((o for o in objects if o in p), p) for p in prompts]


def _organism_family(cfg: BatteryConfig, progress: bool) -> Family:
    from deltalens.study import organism

    root = Path(cfg.family.organism_dir or default_cache() / f"organism-seed{cfg.organism_seed}")
    fam = organism.build(root, seed=cfg.organism_seed, progress=progress)
    held = fam.heldout
    return Family(
        paths={s: str(fam.paths[s]) for s in STAGES},
        hashes={},
        harmful=list(held.harmful),
        harmless=list(held.harmless),
        arithmetic=list(held.arithmetic),
        template=fam.generation_template,
        groups_harmful=_object_groups(held.harmful, held.harmful_pairs + held.benign_pairs),
        groups_harmless=_object_groups(held.harmless, held.harmful_pairs + held.benign_pairs),
        organism=fam,
    )


def _custom_family(cfg: BatteryConfig) -> Family:
    from deltalens.data import arithmetic_tasks, harmbench, harmless_prompts

    harm = harmbench()
    _, arith = arithmetic_tasks()
    return Family(
        paths={s: str(Path(p).expanduser()) for s, p in cfg.family.paths().items()},
        hashes={},
        harmful=list(harm.texts),
        harmless=list(harmless_prompts().texts),
        arithmetic=[(t, str(a)) for t, a in zip(arith.texts, arith.labels)],
        template=None,
    )


def _smollm2_family(cfg: BatteryConfig) -> Family:
    from deltalens.study.alignment import SmolLM2Recipe, _splits, build_smollm2_family

    recipe = SmolLM2Recipe(seed=cfg.seed, num_threads=2)
    root = Path(cfg.family.organism_dir or default_cache() / f"smollm2-family-seed{cfg.seed}")
    fam = build_smollm2_family(root, recipe=recipe, evaluate=False)
    sets = _splits(recipe)
    names = {
        "w0": "base",
        "wa": "aligned",
        "useful": "useful",
        "harmful": "harmful",
        "contaminated": "contaminated",
    }
    return Family(
        paths={s: str(fam.paths[n]) for s, n in names.items()},
        hashes={},
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

OVERLAP_UPDATES = ("alignment", "useful", "harmful", "contaminated")
"""The updates whose pairwise weight overlap Exp 3 measures."""

ACTIVATION_STAGES = ("w0", "wa", "useful", "contaminated")
"""The stages whose activation overlap Exp 4 measures."""

PROBE_STAGES = ("w0", "wa", "harmful")
"""The stages the harmful-vs-harmless probes are fitted on."""


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

    def __init__(self, cfg: BatteryConfig, out_dir: str | Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        self.units = UnitStore(self.out / "units")
        self._models: dict[str, HookedModel] = {}
        self._deltas: dict[str, WeightDelta] = {}
        self.timings: dict[str, float] = {}

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

    def delta(self, name: str) -> WeightDelta:
        """ΔW of ``alignment`` (W_A − W_0) or a task update (W_FT − W_A), computed once and kept."""
        from deltalens.interventions import weight_delta

        if name not in self._deltas:
            a, b = DELTAS[name]
            self._deltas[name] = weight_delta(self.model(a), self.model(b))
        return self._deltas[name]

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
        }

    def _eval_sets(self) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        c, f = self.cfg, self.family
        return f.harmful[: c.n_harmful], f.harmless[: c.n_harmless], f.arithmetic[: c.n_arithmetic]

    def evaluate(self, model: HookedModel, harmless_too: bool = False) -> dict[str, float]:
        """Harm (compliance / refusal on held-out harmful prompts) and utility (arithmetic EM).

        Args:
            model: the (possibly edited) model to evaluate.
            harmless_too: add the over-refusal rate on harmless prompts (the reference
                evaluations; sweep points skip it to save generation time on real models).
                The organism's judge always measures it.

        Returns:
            ``harm``, ``refusal_harmful``, ``utility`` and (see above) ``refusal_harmless``.
        """
        if self.family.organism is not None:
            return self._evaluate_organism(model)
        return self._evaluate_generic(model, harmless_too)

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

    def _evaluate_generic(self, model: HookedModel, harmless_too: bool) -> dict[str, float]:
        """The library's refusal judge and arithmetic exact match (any family)."""
        from deltalens.data import PromptRecord, PromptSet
        from deltalens.evals import harmfulness, utility

        harmful, harmless, arith = self._eval_sets()
        chat = self.family.chat
        h = harmfulness(model, harmful, chat=chat)
        tasks = PromptSet([PromptRecord(text=p, label=a, source="arithmetic") for p, a in arith])
        u = utility(model, tasks, chat=chat, max_new_tokens=48)
        out = {"harm": h.compliance_rate, "refusal_harmful": h.refusal_rate, "utility": u.accuracy}
        if harmless_too:
            out["refusal_harmless"] = harmfulness(model, harmless, chat=chat).refusal_rate
        return out

    # -------------------------------------------------------------- experiments
    def _evaluate_stage(self, stage: str) -> dict[str, float]:
        return self.evaluate(self.model(stage), harmless_too=True)

    def run_evals(self) -> pd.DataFrame:
        """One evaluation unit per stage: an :data:`~deltalens.schemas.EVALS` table, one row per stage."""
        rows = []
        for stage in STAGES:
            r = self.units.get(
                f"eval-{stage}",
                self.unit_key(exp="eval", stage=stage, harmless_too=True, evaluation=self._eval_inputs()),
                partial(self._evaluate_stage, stage),
            )
            rows.append({"stage": stage, **r})
        return EVALS.frame(rows)

    def _modules(self) -> tuple[Any, str]:
        """(tensors to project, what the others get): see ``BatteryConfig.project_embeddings``."""
        if self.cfg.project_embeddings:
            return None, "reference"
        from deltalens.interventions.modules import ModuleFilter

        return ModuleFilter(embeddings=False, unembedding=False), "task"

    def _sweep_key(self, task: str, mode: str, method: str, frac: float) -> dict[str, Any]:
        scope = "all-tensors" if self.cfg.project_embeddings else "blocks; embeddings keep the task update"
        return self.unit_key(
            exp="sweep",
            task=task,
            mode=mode,
            method=method,
            frac=frac,
            scope=scope,
            harmless_too=False,
            evaluation=self._eval_inputs(),
        )

    def _sweep_point(self, task: str, mode: str, method: str, frac: float) -> pd.DataFrame:
        """One sweep unit: ``task``'s update projected with ``method`` at ``frac``, evaluated."""
        from deltalens.interventions import subspace_sweep

        modules, outside = self._modules()
        return subspace_sweep(
            self.model("wa"),
            self.delta(task),
            self.delta("alignment"),
            fracs=[frac],
            methods=[method],
            modes=[mode],
            evaluate=self.evaluate,
            seed=self.cfg.seed,
            baselines=False,
            progress=False,
            modules=modules,
            outside=outside,
        ).drop(columns=SWEEP_DROP, errors="ignore")

    def run_sweep(self, task: str, mode: str) -> pd.DataFrame:
        """Exp 1/2: one unit per (method, frac) of ``task``'s update projected onto Δ_A's subspaces in ``mode``.

        Returns:
            A :data:`~deltalens.study.tables.BATTERY_SWEEP` table (``task`` first).
        """
        import pandas as pd
        from tqdm.auto import tqdm

        points = [(m, f) for m in self.cfg.methods for f in self.cfg.fracs]
        frames = [
            self.units.get(
                f"sweep-{task}-{mode}-{method}-{frac}",
                self._sweep_key(task, mode, method, frac),
                partial(self._sweep_point, task, mode, method, frac),
                kind="parquet",
            )
            for method, frac in tqdm(points, desc=f"{mode} sweep ({task})", disable=not self.progress)
        ]
        df = pd.concat(frames, ignore_index=True)
        df.insert(0, TASK, task)
        return BATTERY_SWEEP.frame(df)

    def _parallel_sweeps(self) -> pd.DataFrame:
        """Exp 1: the useful and the harmful update, each projected onto Δ_A's subspaces."""
        return _concat_sweeps(self.run_sweep("useful", "parallel"), self.run_sweep("harmful", "parallel"))

    def run_weight_overlap(self) -> pd.DataFrame:
        """Exp 3: weight-update MSO for every pair of alignment / useful / harmful / contaminated."""
        from deltalens.probes import weight_overlap_pairs

        return self.units.get(
            "weight-overlap",
            self.unit_key(
                exp="weight_overlap", etas=self.cfg.weight_etas, updates=OVERLAP_UPDATES, embeddings="both"
            ),
            lambda: weight_overlap_pairs(
                {n: self.delta(n) for n in OVERLAP_UPDATES},
                etas=self.cfg.weight_etas,
                include_embeddings="both",
            ),
            kind="parquet",
        )

    def _format(self, prompt: str) -> str:
        """A raw prompt in the family's prompt template (unchanged when it has none)."""
        t = self.family.template
        return t.replace("{prompt}", prompt) if t else prompt

    def _activation_sets(self) -> dict[str, list[str]]:
        n = self.cfg.n_activation
        harmful = self.family.harmful
        half = len(harmful) // 2
        return {
            "useful": [self._format(p) for p, _ in self.family.arithmetic[:n]],
            "harmful_1": [self._format(p) for p in harmful[:half][:n]],
            "harmful_2": [self._format(p) for p in harmful[half:][:n]],
            "harmless": [self._format(p) for p in self.family.harmless[:n]],
        }

    def run_activation_overlap(self) -> pd.DataFrame:
        """Exp 4: last-token activation MSO between prompt sets on W_0, W_A, useful and contaminated."""
        from deltalens.probes import activation_overlap

        sets = self._activation_sets()
        return self.units.get(
            "activation-overlap",
            self.unit_key(
                exp="activation_overlap",
                etas=self.cfg.activation_etas,
                layers=self.cfg.layers,
                n=self.cfg.n_activation,
                stages=ACTIVATION_STAGES,
                prompts={k: text_hash(v) for k, v in sets.items()},
            ),
            lambda: activation_overlap(
                {s: self.model(s) for s in ACTIVATION_STAGES},
                sets,
                layers=self.cfg.layers,
                etas=self.cfg.activation_etas,
                progress=False,
            ),
            kind="parquet",
        )

    def _probe_inputs(self, n: int) -> tuple[list[str], list[str], list[str]]:
        """``(prompts, labels, groups)``: the first ``n`` harmful then harmless prompts, formatted."""
        harmful, harmless = self.family.harmful[:n], self.family.harmless[:n]
        gh = (self.family.groups_harmful or harmful)[:n]
        gl = (self.family.groups_harmless or harmless)[:n]
        prompts = [self._format(p) for p in harmful + harmless]
        labels = ["harmful"] * len(harmful) + ["harmless"] * len(harmless)
        groups = [f"h:{g}" for g in gh] + [f"b:{g}" for g in gl]
        return prompts, labels, groups

    def _fit_probes(self, prompts: list[str], labels: list[str], groups: list[str]) -> pd.DataFrame:
        """Probe summaries of every stage in :data:`PROBE_STAGES`, as one ``BATTERY_PROBES`` table."""
        import pandas as pd

        from deltalens.probes import collect, probe_layers

        frames = []
        for stage in PROBE_STAGES:
            acts = collect(
                self.model(stage), prompts, labels=labels, groups=groups, batch_size=32, progress=False
            )
            df = probe_layers(acts).summary().reset_index(drop=True)
            df.insert(0, MODEL, stage)
            frames.append(df)
        return BATTERY_PROBES.frame(pd.concat(frames, ignore_index=True))

    def run_probes(self) -> pd.DataFrame:
        """Group-held-out harmful-vs-harmless probes per layer on W_0, W_A and the harmful fine-tune."""
        n = self.cfg.n_activation
        prompts, labels, groups = self._probe_inputs(n)
        inputs = {"prompts": text_hash(prompts), "labels": text_hash(labels), "groups": text_hash(groups)}
        return self.units.get(
            "probes",
            self.unit_key(exp="probes", n=n, stages=PROBE_STAGES, **inputs),
            partial(self._fit_probes, prompts, labels, groups),
            kind="parquet",
        )

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
        ]

    def _run_experiments(self) -> dict[str, pd.DataFrame]:
        """Run the configured experiments, timing each; the orthogonal sweep joins ``sweep``."""
        tables: dict[str, pd.DataFrame] = {}
        for exp, name, fn in self._steps():
            if exp not in self.cfg.experiments:
                continue
            self._say(f"{exp} ...")
            t = time.perf_counter()
            tables[name] = fn()
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
        with file_lock(self.out / ".lock", what=f"the battery results folder {str(self.out)!r}"):
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        from deltalens.study.battery.verdict import verdicts

        t0 = time.perf_counter()
        validate_family(self.cfg)
        self._resolve_family()
        self.timings["family"] = time.perf_counter() - t0
        tables = self._run_experiments()
        tables["verdicts"] = verdicts(tables)
        self._write(tables, time.perf_counter() - t0)
        return {"tables": tables, "out": self.out}

    # -------------------------------------------------------------- output
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

    def _summary(self, tables: dict[str, pd.DataFrame], seconds: float) -> dict[str, Any]:
        runs, basis = self._runs(seconds)
        summary = {
            "preset": self.cfg.preset,
            "seconds": basis["seconds"],
            "timings": basis["timings"],
            "last_run_seconds": round(seconds, 1),
            "units": {"computed": len(self.units.computed), "cached": len(self.units.cached)},
            "runs": runs,
            "family": self.family.paths,
            "verdicts": tables["verdicts"].to_dict(orient="records"),
        }
        if "evals" in tables:
            summary["evals"] = tables["evals"].to_dict(orient="records")
        return summary

    def _write(self, tables: dict[str, pd.DataFrame], seconds: float) -> None:
        """config.yaml, every table, ``results.parquet`` (all but the verdicts, long), provenance,
        summary and report: staged, then moved into the results folder together."""
        import pandas as pd

        from deltalens.study.report import report_from_results

        summary = self._summary(tables, seconds)
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
