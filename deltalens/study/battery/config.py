"""Typed battery configuration, loadable from YAML or TOML and saved next to the results."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltalens.atomic import write_text
from deltalens.study import PAPER_FRACS

EXPERIMENTS = ("evals", "parallel_sweep", "orth_sweep", "weight_overlap", "activation_overlap", "probes")
STAGES = ("w0", "wa", "useful", "harmful", "contaminated")
PRESETS = ("organism", "smollm2")


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
        if isinstance(self.family, dict):
            self.family = _build(FamilyConfig, self.family, "family.")
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


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        hints = {u: difflib.get_close_matches(u, names, n=1) for u in unknown}
        detail = ", ".join(
            f"{prefix}{u}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items()
        )
        raise ConfigError(f"unknown config field(s): {detail}; valid: {sorted(names)}")
    return cls(**data)


# ---------------------------------------------------------------- validation (errors in this order)
def _check_choices(cfg: BatteryConfig) -> None:
    """``preset``, ``experiments`` and ``methods`` name known things; ``fracs`` lie in (0, 1]."""
    if cfg.preset not in PRESETS and cfg.preset != "custom":
        raise ConfigError(f"preset: {cfg.preset!r} is not one of {PRESETS + ('custom',)}")
    bad = [e for e in cfg.experiments if e not in EXPERIMENTS]
    if bad:
        raise ConfigError(f"experiments: unknown {bad}; expected a subset of {EXPERIMENTS}")
    for f in cfg.fracs:
        if not (isinstance(f, int | float) and 0 < f <= 1):
            raise ConfigError(f"fracs: {f!r} is out of range; each fraction must lie in (0, 1]")
    bad = [m for m in cfg.methods if m not in ("topk", "randomk", "random")]
    if bad:
        raise ConfigError(f"methods: unknown {bad}; expected topk, randomk, random")


def _check_ranges(cfg: BatteryConfig) -> None:
    """Energy thresholds lie in (0, 1]; prompt counts are ints of at least 4."""
    for name in ("weight_etas", "activation_etas"):
        for e in getattr(cfg, name):
            if not 0 < e <= 1:
                raise ConfigError(f"{name}: {e!r} is out of range (0, 1]")
    for name in ("n_harmful", "n_harmless", "n_arithmetic", "n_activation"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 4:
            raise ConfigError(f"{name}: must be an int >= 4, got {getattr(cfg, name)!r}")


def _check_family(cfg: BatteryConfig) -> None:
    """A known backend; a custom family names an existing checkpoint for every stage."""
    if cfg.family.backend not in ("transformer_lens", "nnsight"):
        raise ConfigError(f"family.backend: {cfg.family.backend!r}; expected transformer_lens or nnsight")
    if cfg.preset != "custom":
        return
    for stage, p in cfg.family.paths().items():
        if p is None:
            raise ConfigError(f"family.{stage}: missing; a custom family needs all of {STAGES}")
        if not Path(p).expanduser().exists():
            raise ConfigError(f"family.{stage}: no checkpoint at {p!r}")
