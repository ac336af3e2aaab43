"""Typed battery configuration, loadable from YAML or TOML and saved next to the results."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltalens.atomic import write_text
from deltalens.study import PAPER_FRACS

EXPERIMENTS = (
    "evals", "parallel_sweep", "orth_sweep", "weight_overlap", "activation_overlap", "probes", "circuits",
)  # fmt: skip
STAGES = ("w0", "wa", "safety", "useful", "harmful", "contaminated")
OPTIONAL_STAGES = ("safety",)
"""Stages a custom family may leave out (without ``safety`` the battery has no Δ_S)."""
SUBSPACES = ("alignment", "safety")
SCOPES = ("all", "blocks")
PROMPT_VARIANTS = ("raw", "templated")
SWEEP_METRICS = ("all", "paper")
PAPER_WEIGHT_ETAS = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
PAPER_ACTIVATION_ETAS = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PRESETS = ("organism", "smollm2")
METHODS = ("topk", "randomk", "random")
BACKENDS = ("transformer_lens", "nnsight")
DTYPES = ("float32", "float16", "bfloat16", "float64")


class ConfigError(ValueError):
    """A battery config field is wrong; the message names the field."""


def default_cache() -> Path:
    """The cache root: ``$DELTALENS_CACHE`` or ``~/.cache/deltalens``."""
    return Path(os.environ.get("DELTALENS_CACHE", Path.home() / ".cache" / "deltalens"))


@dataclass(kw_only=True)
class FamilyConfig:
    """The model family: base W_0, aligned W_A and fine-tunes from W_A (checkpoint dirs).

    ``safety`` (optional): W_S, W_0 fine-tuned on refusals to harmful prompts only; its update
    Δ_S = W_S − W_0 is swept like Δ_A. Without it the battery has no ``safety`` subspace.
    Leave the paths empty for a preset that builds its own family (``organism_dir`` is where
    the organism is cached).
    """

    w0: str | None = None
    wa: str | None = None
    safety: str | None = None
    useful: str | None = None
    harmful: str | None = None
    contaminated: str | None = None
    backend: str = "nnsight"
    dtype: str = "float32"
    organism_dir: str | None = None
    check_parents: bool = True

    def paths(self) -> dict[str, str | None]:
        """Stage name -> checkpoint path (None where unset; an unset optional stage is left out)."""
        return {
            s: getattr(self, s) for s in STAGES if s not in OPTIONAL_STAGES or getattr(self, s) is not None
        }


@dataclass(kw_only=True)
class RayConfig:
    """The workers of ``deltalens run --executor ray``: how many, and what each reserves.

    ``workers: null`` starts as many as the cluster's CPUs (and GPUs) fit. ``num_cpus`` and
    ``num_gpus`` are Ray resources per worker (a worker with ``num_gpus: 1`` sees one GPU).
    """

    workers: int | None = None
    num_cpus: float = 1
    num_gpus: float = 0


JUDGE_KINDS = ("refusal", "llm")


@dataclass(kw_only=True)
class JudgeConfig:
    """Who scores harm. ``kind: refusal`` (default, offline): the family's refusal judge gives
    ``harm`` (harmful compliance). ``kind: llm`` adds the paper's metric: an LLM judge with the
    Qi et al. 1-5 rubric at ``url`` (an OpenAI-compatible server: vLLM, llama.cpp, a hosted API)
    scores the same harmful prompts' greedy answers (``max_new_tokens`` long) into ``harm_score``
    (mean 1-5), ``harm_rate5`` (fraction of 5s), ``harm_n1`` ... ``harm_n5`` and the counts
    ``harm_unparsable`` / ``harm_failed``. ``api_key_env`` names the environment variable that
    holds the key (the key is never written to the config). See :class:`deltalens.evals.llm_judge.LLMJudge`.
    """

    kind: str = "refusal"
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout: float = 60.0
    retries: int = 3
    temperature: float = 0.0
    max_new_tokens: int = 256
    workers: int = 4

    def build(self) -> Any:
        """The :class:`~deltalens.evals.llm_judge.LLMJudge` of ``kind: llm``, else None."""
        if self.kind != "llm":
            return None
        from deltalens.evals.llm_judge import LLMJudge

        return LLMJudge(
            self.url,
            self.model,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            retries=self.retries,
            temperature=self.temperature,
            workers=self.workers,
        )


@dataclass(kw_only=True)
class BatteryConfig:
    """Everything a battery run depends on. Unit keys hash the relevant parts of it.

    The sweeps (Exp 1, 2) run every ``subspace`` (``alignment``: Δ_A = W_A − W_0, ``safety``:
    Δ_S = W_S − W_0) × ``scope`` × method × frac. ``scopes``: ``"all"`` projects every tensor,
    embeddings and unembedding included, as the paper's code does (an embedding's "left" space
    is the vocabulary axis); ``"blocks"`` projects the transformer-block weights and lets the
    (un)embeddings keep their whole task update. ``blocks_methods`` limits the ``"blocks"``
    scope to some methods (None: all of ``methods``). ``project_embeddings`` (default True, the
    paper) names the primary scope (``"all"``, else ``"blocks"``) recorded in the summary.
    E_k is reported both ways (``energy_kept``, ``energy_kept_no_embed``).
    ``sweep_metrics="paper"`` evaluates a sweep point only on what the paper reads (utility of
    the useful update, harm of the harmful one, both for the contaminated one); ``"all"`` both.
    Activation overlap runs on the raw prompt text and on the templated prompt
    (``prompt_variants``), over ``layers`` widened to at least ``min_layers`` blocks.

    Example:
        >>> cfg = BatteryConfig(preset="organism", fracs=[0.25, 0.5])
        >>> cfg = BatteryConfig.from_file("battery.yaml")
    """

    preset: str = "organism"
    family: FamilyConfig = field(default_factory=FamilyConfig)
    experiments: list[str] = field(default_factory=lambda: list(EXPERIMENTS))
    fracs: list[float] = field(default_factory=lambda: list(PAPER_FRACS))
    methods: list[str] = field(default_factory=lambda: ["topk", "randomk", "random"])
    subspaces: list[str] = field(default_factory=lambda: list(SUBSPACES))
    scopes: list[str] = field(default_factory=lambda: list(SCOPES))
    blocks_methods: list[str] | None = None
    sweep_metrics: str = "all"
    weight_etas: list[float] = field(default_factory=lambda: list(PAPER_WEIGHT_ETAS))
    activation_etas: list[float] = field(default_factory=lambda: list(PAPER_ACTIVATION_ETAS))
    prompt_variants: list[str] = field(default_factory=lambda: list(PROMPT_VARIANTS))
    layers: str = "65-90%"
    min_layers: int = 2
    project_embeddings: bool = True
    seed: int = 0
    n_harmful: int = 60
    n_harmless: int = 60
    n_arithmetic: int = 60
    n_activation: int = 80
    organism_seed: int = 0
    ray: RayConfig = field(default_factory=RayConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self) -> None:
        if isinstance(self.family, Mapping):
            self.family = _build(FamilyConfig, self.family, "family.")
        if isinstance(self.ray, Mapping):
            self.ray = _build(RayConfig, self.ray, "ray.")
        _check_ray(self)
        if isinstance(self.judge, Mapping):
            self.judge = _build(JudgeConfig, self.judge, "judge.")
        _check_judge(self)
        _check_types(self)
        _check_choices(self)
        _check_labels(self)
        _check_ranges(self)
        _check_family(self)

    @classmethod
    def from_preset(cls, name: str) -> BatteryConfig:
        """The built-in presets: ``organism`` (fast, fully offline) and ``smollm2`` (real model, CPU-sized)."""
        if name == "organism":
            return cls(preset="organism")
        if name == "smollm2":  # sized for about 45 minutes on 2 CPU cores, family build included
            return cls(
                preset="smollm2",
                # circuits: EAP-IG + faithfulness over 30 x 9 heads take over 8 CPU-minutes per stage; opt in
                experiments=[e for e in EXPERIMENTS if e != "circuits"],
                fracs=[0.25, 0.5, 0.99],
                scopes=["all"],  # the paper's scope; E_k without (un)embeddings is still reported
                sweep_metrics="paper",
                n_harmful=32,
                n_harmless=32,
                n_arithmetic=32,
                n_activation=64,
            )
        raise ConfigError(f"preset: {name!r} is not one of {PRESETS}")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatteryConfig:
        """Build a config from a mapping; unknown keys raise ``ConfigError`` naming them."""
        return _build(cls, data, "")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BatteryConfig:
        """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no battery config at {str(p)!r}")
        text = p.read_text()
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of fields at the top level")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as YAML (saved next to every battery's results)."""
        import yaml

        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of fields, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        import difflib

        hints = {u: difflib.get_close_matches(u, names, n=1) for u in unknown}
        detail = ", ".join(
            f"{prefix}{u}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items()
        )
        raise ConfigError(f"unknown config field(s): {detail}; valid: {sorted(names)}")
    return cls(**data)


# ---------------------------------------------------------------- validation (errors in this order)
def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_path(v: Any) -> bool:
    return v is None or isinstance(v, str | os.PathLike)


Check = tuple[Callable[[Any], bool], str]
_SCALARS: dict[str, Check] = {
    "preset": (_is_str, "a preset name (string)"),
    "layers": (_is_str, "a quoted layer spec string such as '65-90%', '2:5' or '3'"),
    "project_embeddings": (_is_bool, "true or false (a boolean, unquoted)"),
    "sweep_metrics": (_is_str, f"one of {SWEEP_METRICS}"),
    "min_layers": (_is_int, "an integer >= 1"),
    **{n: (_is_int, "an integer") for n in ("seed", "organism_seed")},
    **{n: (_is_int, "an integer >= 4") for n in ("n_harmful", "n_harmless", "n_arithmetic", "n_activation")},
}
"""Scalar fields: (accepts the value, what is allowed). No truthiness: ``"no"`` is not a boolean."""

_LISTS: dict[str, Check] = {
    "experiments": (_is_str, f"experiment names from {EXPERIMENTS}"),
    "fracs": (_is_number, "numbers in (0, 1]"),
    "methods": (_is_str, f"method names from {METHODS}"),
    "weight_etas": (_is_number, "numbers in (0, 1]"),
    "activation_etas": (_is_number, "numbers in (0, 1]"),
    "subspaces": (_is_str, f"subspace names from {SUBSPACES}"),
    "scopes": (_is_str, f"projection scopes from {SCOPES}"),
    "prompt_variants": (_is_str, f"prompt variants from {PROMPT_VARIANTS}"),
}
"""List fields: (accepts an item, what the items must be). A list must be given and not be empty."""

_FAMILY: dict[str, Check] = {
    **{s: (_is_path, "a checkpoint path (string) or null") for s in STAGES},
    "backend": (_is_str, f"one of {BACKENDS}"),
    "dtype": (_is_str, f"one of {DTYPES}"),
    "organism_dir": (_is_path, "a folder path (string) or null"),
    "check_parents": (_is_bool, "true or false (a boolean, unquoted)"),
}


def _bad_type(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name}: expected {allowed}, got {value!r} ({type(value).__name__})")


def _check_list(cfg: BatteryConfig, name: str, ok: Callable[[Any], bool], allowed: str) -> None:
    """``name`` is a non-empty list whose items pass ``ok`` (a tuple is kept as a list)."""
    value = getattr(cfg, name)
    if not isinstance(value, list | tuple):
        raise _bad_type(name, value, f"a list of {allowed}")
    if not value:
        raise ConfigError(f"{name}: the list is empty; expected a non-empty list of {allowed}")
    bad = [v for v in value if not ok(v)]
    if bad:
        raise ConfigError(
            f"{name}: item {bad[0]!r} ({type(bad[0]).__name__}) is not allowed; expected a list of {allowed}"
        )
    setattr(cfg, name, list(value))


def _check_types(cfg: BatteryConfig) -> None:
    """Every field has its declared type: no truthiness, no scalar for a list, no list for a mapping."""
    if not isinstance(cfg.family, FamilyConfig):
        raise _bad_type("family", cfg.family, f"a mapping of family fields {sorted(_FAMILY)}")
    for name, (ok, allowed) in _FAMILY.items():
        value = getattr(cfg.family, name)
        if not ok(value):
            raise _bad_type(f"family.{name}", value, allowed)
        if isinstance(value, os.PathLike):
            setattr(cfg.family, name, os.fspath(value))
    for name, (ok, allowed) in _SCALARS.items():
        if not ok(getattr(cfg, name)):
            raise _bad_type(name, getattr(cfg, name), allowed)
    for name, (ok, allowed) in _LISTS.items():
        _check_list(cfg, name, ok, allowed)
    if cfg.blocks_methods is not None:
        _check_list(cfg, "blocks_methods", _is_str, f"method names from {METHODS}, or null")


def _check_choices(cfg: BatteryConfig) -> None:
    """``preset``, ``experiments``, ``methods`` and ``layers`` name known things; ``fracs`` lie in (0, 1]."""
    from deltalens.hooks.names import parse_layers

    if cfg.preset not in PRESETS and cfg.preset != "custom":
        raise ConfigError(f"preset: {cfg.preset!r} is not one of {PRESETS + ('custom',)}")
    bad = [e for e in cfg.experiments if e not in EXPERIMENTS]
    if bad:
        raise ConfigError(f"experiments: unknown {bad}; expected a subset of {EXPERIMENTS}")
    for f in cfg.fracs:
        if not 0 < f <= 1:
            raise ConfigError(f"fracs: {f!r} is out of range; each fraction must lie in (0, 1]")
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"methods: unknown {bad}; expected a subset of {METHODS}")
    try:  # the syntax only: whether the layers exist depends on the model
        parse_layers(cfg.layers, 10_000)
    except ValueError:
        raise ConfigError(
            f"layers: {cfg.layers!r} is not a usable layer spec; expected 'lo-hi%' (e.g. '65-90%'), "
            "'a:b' or a layer number, as a string"
        ) from None


_LABELS: dict[str, tuple[str, ...]] = {
    "subspaces": SUBSPACES,
    "scopes": SCOPES,
    "prompt_variants": PROMPT_VARIANTS,
    "blocks_methods": METHODS,
}


def _check_labels(cfg: BatteryConfig) -> None:
    """The protocol's label lists name known values, without repeats; ``sweep_metrics`` and ``min_layers``."""
    for name, valid in _LABELS.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        bad = [v for v in value if v not in valid]
        if bad or len(set(value)) != len(value):
            what = f"unknown {bad}" if bad else f"repeated values in {value}"
            raise ConfigError(f"{name}: {what}; expected distinct values from {valid}")
    if cfg.sweep_metrics not in SWEEP_METRICS:
        raise ConfigError(f"sweep_metrics: {cfg.sweep_metrics!r} is not one of {SWEEP_METRICS}")
    if cfg.min_layers < 1:
        raise ConfigError(f"min_layers: expected an integer >= 1, got {cfg.min_layers!r}")


def _check_ranges(cfg: BatteryConfig) -> None:
    """Energy thresholds lie in (0, 1]; prompt counts are ints of at least 4."""
    for name in ("weight_etas", "activation_etas"):
        for e in getattr(cfg, name):
            if not 0 < e <= 1:
                raise ConfigError(f"{name}: {e!r} is out of range (0, 1]")
    for name in ("n_harmful", "n_harmless", "n_arithmetic", "n_activation"):
        if getattr(cfg, name) < 4:
            raise ConfigError(f"{name}: must be an int >= 4, got {getattr(cfg, name)!r}")


def _check_ray(cfg: BatteryConfig) -> None:
    """``ray``: a mapping; ``workers`` null or an int >= 1, ``num_cpus`` > 0, ``num_gpus`` >= 0 (numbers)."""
    r = cfg.ray
    if not isinstance(r, RayConfig):
        raise _bad_type("ray", r, "a mapping of ray fields ['num_cpus', 'num_gpus', 'workers']")
    if r.workers is not None and not (_is_int(r.workers) and r.workers >= 1):
        raise ConfigError(f"ray.workers: expected null or an integer >= 1, got {r.workers!r}")
    for name, low, allowed in (("num_cpus", 0, "a number > 0"), ("num_gpus", 0, "a number >= 0")):
        v = getattr(r, name)
        if not _is_number(v) or v < low or (name == "num_cpus" and v == 0):
            raise ConfigError(f"ray.{name}: expected {allowed} (per worker), got {v!r}")


def _check_judge(cfg: BatteryConfig) -> None:
    """``judge``: a known kind; ``kind: llm`` needs a URL, a model, and a set ``api_key_env`` if named."""
    j = cfg.judge
    if not isinstance(j, JudgeConfig):
        raise _bad_type(
            "judge", j, f"a mapping of judge fields {[f.name for f in dataclasses.fields(JudgeConfig)]}"
        )
    if j.kind not in JUDGE_KINDS:
        raise ConfigError(f"judge.kind: {j.kind!r} is not one of {JUDGE_KINDS}")
    if j.kind != "llm":
        return
    if not _is_int(j.max_new_tokens) or j.max_new_tokens < 1:
        raise ConfigError(f"judge.max_new_tokens: expected an integer >= 1, got {j.max_new_tokens!r}")
    if not _is_number(j.temperature) or j.temperature < 0:
        raise ConfigError(f"judge.temperature: expected a number >= 0, got {j.temperature!r}")
    try:
        j.build()
    except ValueError as e:
        raise ConfigError(f"judge.{e}") from None


def _check_family(cfg: BatteryConfig) -> None:
    """A known backend and dtype; a custom family names an existing checkpoint for every stage."""
    if cfg.family.backend not in BACKENDS:
        raise ConfigError(f"family.backend: {cfg.family.backend!r} is not one of {BACKENDS}")
    if cfg.family.dtype not in DTYPES:
        raise ConfigError(f"family.dtype: {cfg.family.dtype!r} is not one of {DTYPES}")
    if cfg.preset != "custom":
        return
    for stage, p in cfg.family.paths().items():
        if p is None:
            required = tuple(s for s in STAGES if s not in OPTIONAL_STAGES)
            raise ConfigError(
                f"family.{stage}: missing; a custom family needs all of {required} ({OPTIONAL_STAGES} optional)"
            )
        if not Path(p).expanduser().exists():
            raise ConfigError(f"family.{stage}: no checkpoint at {p!r}")
