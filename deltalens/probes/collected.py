"""The result of :func:`~deltalens.probes.collect.collect`: per-prompt activations, in memory or on disk.

Example:
    >>> from deltalens.probes import Collected
    >>> acts = Collected.open("runs/acts")           # a folder written by collect(out=...)
    >>> acts.stack(layers="65-90%").shape            # [n_prompts, layer, d]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from deltalens.hooks.names import NamesArg, execution_order, layer_of, parse_layers, resolve_names

INDEX = "index.json"
PROMPTS = "prompts.jsonl"
FORMAT = "deltalens.collect/1"


class Collected:
    """Per-prompt activations for a set of hooks, in memory or backed by safetensors shards.

    Attributes:
        names: hook names collected, in execution order.
        prompts: the prompt texts, in order.
        labels, groups: one per prompt, or None.
        positions: how each prompt was reduced to one vector (``"last"``, ``"mean"``, an int).
        meta: ``n_layers`` and the model's provenance.
        directory: the shard folder, or None in memory.

    Example:
        >>> acts = Collected.open("runs/acts")
        >>> acts.stack("blocks.*.hook_resid_post", layers="65-90%").shape    # [n, layer, d]
        >>> acts["blocks.3.hook_resid_post"].shape                          # [n, d]
    """

    def __init__(
        self,
        *,
        names: list[str],
        prompts: list[str],
        labels: list[Any] | None = None,
        groups: list[Any] | None = None,
        positions: Any = "last",
        meta: dict[str, Any] | None = None,
        data: dict[str, Tensor] | None = None,
        directory: Path | None = None,
        shards: list[dict[str, Any]] | None = None,
    ) -> None:
        if (data is None) == (directory is None):
            raise ValueError("a Collected is either in memory (data=...) or on disk (directory=...)")
        self.meta = dict(meta or {})
        n_layers = self.meta.get("n_layers")
        self.names = execution_order(names, n_layers) if n_layers else list(names)
        self.prompts = prompts
        self.labels = labels
        self.groups = groups
        self.positions = positions
        self.directory = directory
        self._data = data
        self._shards = shards or []

    @classmethod
    def open(cls, directory: str | Path) -> Collected:
        """Open a finished collection folder written by :func:`collect`.

        Raises:
            FileNotFoundError: no ``index.json``.
            ValueError: the collection is unfinished (rerun ``collect`` with the same ``out``).
        """
        directory = Path(directory)
        if not (directory / INDEX).is_file():
            raise FileNotFoundError(
                f"{directory} has no {INDEX}; expected a folder written by collect(out=...)"
            )
        index = json.loads((directory / INDEX).read_text())
        shards = index["shards"]
        if len(shards) != index.get("n_shards", len(shards)):
            raise ValueError(
                f"{directory} is unfinished: {len(shards)} of {index['n_shards']} shards; rerun collect() "
                "with the same arguments and out= to finish it"
            )
        rows = [
            json.loads(line)
            for line in (directory / PROMPTS).read_text(encoding="utf-8").splitlines()
            if line
        ]
        labels = [r["label"] for r in rows]
        groups = [r["group"] for r in rows]
        return cls(
            names=index["spec"]["names"],
            prompts=[r["text"] for r in rows],
            labels=None if all(x is None for x in labels) else labels,
            groups=None if all(x is None for x in groups) else groups,
            positions=index["spec"]["positions"],
            meta=index.get("meta"),
            directory=directory,
            shards=shards,
        )

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_layers(self) -> int | None:
        return self.meta.get("n_layers")

    def __repr__(self) -> str:
        kinds = sorted({n.split(".")[-1] for n in self.names})
        ls = self.layers(lambda n: True) if self.names else []
        span = f"layers {ls[0]}..{ls[-1]}" if ls else "no block layers"
        lab = ""
        if self.labels is not None:
            from collections import Counter

            lab = f", labels={dict(Counter(map(str, self.labels)))}"
        where = f"on disk at {str(self.directory)!r}" if self.directory else "in memory"
        return f"Collected(n={len(self)}, hooks={kinds}, {span}, positions={self.positions!r}{lab}, {where})"

    def _resolve(self, names: NamesArg) -> list[str]:
        return resolve_names(names, self.names)

    def __getitem__(self, name: str) -> Float[Tensor, "n d"]:
        """One hook's activations ``[n_prompts, d]``."""
        chosen = self._resolve([name])
        if len(chosen) != 1:
            raise KeyError(
                f"{name!r} matches {len(chosen)} hooks {chosen[:3]}; index one hook, or use .stack()"
            )
        name = chosen[0]
        if self._data is not None:
            return self._data[name]
        return torch.cat([part[name] for _, _, part in self.iter_shards([name])])

    def iter_shards(self, names: NamesArg = None) -> Iterator[tuple[int, int, dict[str, Tensor]]]:
        """Yield ``(start, stop, {name: [stop - start, d]})`` shard by shard (one shard in memory)."""
        chosen = self._resolve(names)
        if self._data is not None:
            yield 0, len(self), {n: self._data[n] for n in chosen}
            return
        from safetensors import safe_open

        for shard in self._shards:
            with safe_open(str(self.directory / shard["file"]), framework="pt") as f:
                yield shard["start"], shard["stop"], {n: f.get_tensor(n) for n in chosen}

    def layers(self, names: NamesArg = "blocks.*.hook_resid_post") -> list[int]:
        """Block indices of the collected hooks matching ``names``, ascending."""
        return sorted({x for x in (layer_of(n) for n in self._resolve(names)) if x is not None})

    def select(self, names: NamesArg = "blocks.*.hook_resid_post", layers: Any = None) -> list[str]:
        """The collected hook names matching ``names`` and (optionally) a layer spec, in order.

        Raises:
            KeyError: no collected hook matches ``names``.
            ValueError: ``layers`` is outside the model, or selects layers that were not collected.
        """
        chosen = self._resolve(names)
        if layers is None:
            return chosen
        n_layers = self.n_layers or (max(self.layers(lambda n: True), default=0) + 1)
        want = parse_layers(layers, n_layers)
        have = {layer_of(n) for n in chosen}
        missing = [x for x in want if x not in have]
        if missing:
            raise ValueError(
                f"layers {missing} were not collected for {names!r}; collected: {sorted(have - {None})}"
            )
        return [n for n in chosen if layer_of(n) in set(want)]

    def stack(
        self, names: NamesArg = "blocks.*.hook_resid_post", layers: Any = None
    ) -> Float[Tensor, "n layer d"]:
        """Stack hooks along a layer axis: ``[n_prompts, layer, d]`` (read from disk on demand).

        Args:
            names: which collected hooks (default every ``hook_resid_post``).
            layers: optional layer spec (``"65-90%"``, ``"2:5"``, a list ...; see ``parse_layers``).
        """
        chosen = self.select(names, layers)
        if self._data is not None:
            return torch.stack([self._data[n] for n in chosen], dim=1)
        parts = [torch.stack([part[n] for n in chosen], dim=1) for _, _, part in self.iter_shards(chosen)]
        return torch.cat(parts)

    def to_memory(self) -> Collected:
        """An in-memory copy (loads every shard)."""
        if self._data is not None:
            return self
        data = {n: self[n] for n in self.names}
        return Collected(
            names=self.names,
            prompts=self.prompts,
            labels=self.labels,
            groups=self.groups,
            positions=self.positions,
            meta=self.meta,
            data=data,
        )
