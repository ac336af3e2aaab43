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

EXPERIMENTS = ("evals", "parallel_sweep", "orth_sweep", "weight_overlap", "activation_overlap", "probes")
STAGES = ("w0", "wa", "useful", "harmful", "contaminated")
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

    Leave the paths empty for a preset that builds its own family (``organism_dir`` is where
    the organism is cached).
    """

    w0: str | None = None
    wa: str | None = None
    useful: str | None = None
    harmful: str | None = None
    contaminated: str | None = None
    backend: str = "nnsight"
    dtype: str = "float32"
    organism_dir: str | None = None
    check_parents: bool = True

    def paths(self) -> dict[str, str | None]:
        """Stage name -> checkpoint path (None where unset)."""
        return {s: getattr(self, s) for s in STAGES}


@dataclass(kw_only=True)
class BatteryConfig:
    """Everything a battery run depends on. Unit keys hash the relevant parts of it.

    ``project_embeddings=False`` (default) projects the transformer-block weights and lets the
    embedding / unembedding tensors keep their whole task update; True projects every tensor,
    as the paper's code does (its "left" space of an embedding is the vocabulary axis, which cuts
    token-specific updates such as the organism's digit embeddings). E_k is reported both ways.

    Example:
        >>> cfg = BatteryConfig(preset="organism", fracs=[0.25, 0.5])
        >>> cfg = BatteryConfig.from_file("battery.yaml")
    """

    preset: str = "organism"
    family: FamilyConfig = field(default_factory=FamilyConfig)
    experiments: list[str] = field(default_factory=lambda: list(EXPERIMENTS))
    fracs: list[float] = field(default_factory=lambda: list(PAPER_FRACS))
    methods: list[str] = field(default_factory=lambda: ["topk", "randomk", "random"])
    weight_etas: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    activation_etas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    layers: str = "65-90%"
    project_embeddings: bool = False
    seed: int = 0
    n_harmful: int = 60
    n_harmless: int = 60
    n_arithmetic: int = 60
    n_activation: int = 80
    organism_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.family, Mapping):
            self.family = _build(FamilyConfig, self.family, "family.")
        _check_types(self)
        _check_choices(self)
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
                fracs=[0.25, 0.5, 0.99],
                methods=["topk", "random"],
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


def _check_ranges(cfg: BatteryConfig) -> None:
    """Energy thresholds lie in (0, 1]; prompt counts are ints of at least 4."""
    for name in ("weight_etas", "activation_etas"):
        for e in getattr(cfg, name):
            if not 0 < e <= 1:
                raise ConfigError(f"{name}: {e!r} is out of range (0, 1]")
    for name in ("n_harmful", "n_harmless", "n_arithmetic", "n_activation"):
        if getattr(cfg, name) < 4:
            raise ConfigError(f"{name}: must be an int >= 4, got {getattr(cfg, name)!r}")


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
            raise ConfigError(f"family.{stage}: missing; a custom family needs all of {STAGES}")
        if not Path(p).expanduser().exists():
            raise ConfigError(f"family.{stage}: no checkpoint at {p!r}")
