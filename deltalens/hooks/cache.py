"""ActivationCache: a dict of hook name -> tensor, with stacking and safetensors persistence."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from deltalens.atomic import atomic_write, write_json
from deltalens.hooks.names import NamesArg, layer_of, resolve_names, unknown_hook_error

_TENSORS = "activations.safetensors"
_META = "cache.json"


class ActivationCache(Mapping[str, Tensor]):
    """Activations from one forward pass, keyed by hook name.

    Each entry is ``[batch, pos, d_model]`` (``positions=None``), ``[batch, d_model]``
    (``positions="last"`` or an int), or ``[batch, heads, q, k]`` for ``attn.hook_pattern``.

    Attributes:
        input_ids: ``[batch, pos]`` token ids that produced the cache.
        attention_mask: ``[batch, pos]``, 1 for real tokens.
        positions: the position selection the entries were cut with.
        meta: free-form JSON-able metadata (model provenance, prompt labels ...).

    Example:
        >>> cache = model.run_with_cache(["Hi there"], names="blocks.*.hook_resid_post", positions="last")
        >>> cache.stack("blocks.*.hook_resid_post").shape   # [layer, batch, d_model]
    """

    def __init__(
        self,
        data: dict[str, Tensor],
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        positions: Any = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self._data = dict(data)
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.positions = positions
        self.meta = dict(meta or {})

    # Mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._data[name]
        except KeyError:
            raise unknown_hook_error(name, list(self._data)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self._data.items())[:4])
        more = f", ... (+{len(self._data) - 4})" if len(self._data) > 4 else ""
        return f"ActivationCache({len(self._data)} hooks, positions={self.positions!r}; {shapes}{more})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{k}</code></td><td>{tuple(v.shape)}</td><td>{str(v.dtype).replace('torch.', '')}</td></tr>"
            for k, v in self._data.items()
        )
        return (
            f"<div><b>ActivationCache</b> — {len(self._data)} hooks, positions={self.positions!r}"
            f"<table><tr><th>hook</th><th>shape</th><th>dtype</th></tr>{rows}</table></div>"
        )

    # Convenience ------------------------------------------------------------------------
    def stack(self, names: NamesArg) -> Float[Tensor, "layer batch ..."]:
        """Stack the entries selected by ``names`` along a new leading layer axis.

        The entries are ordered by block index. Returns ``[layer, batch, (pos,) d]``.

        Raises:
            KeyError: nothing in the cache matches ``names`` (with close suggestions).
        """
        chosen = resolve_names(names, list(self._data))
        chosen.sort(key=lambda n: (layer_of(n) is None, layer_of(n) or 0))
        return torch.stack([self._data[n] for n in chosen])

    def layers(self, names: NamesArg) -> list[int]:
        """The block indices of the entries :meth:`stack` would stack, in order."""
        chosen = resolve_names(names, list(self._data))
        return sorted(x for x in (layer_of(n) for n in chosen) if x is not None)

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> ActivationCache:
        """A copy with every entry moved to ``device`` (floating entries cast to ``dtype``)."""
        data = {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
            for k, v in self._data.items()
        }
        return ActivationCache(data, self.input_ids, self.attention_mask, self.positions, self.meta)

    # Persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``activations.safetensors`` + ``cache.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"act::{k}": v.contiguous() for k, v in self._data.items()}
        if self.input_ids is not None:
            tensors["meta::input_ids"] = self.input_ids.contiguous()
        if self.attention_mask is not None:
            tensors["meta::attention_mask"] = self.attention_mask.contiguous()
        atomic_write(directory / _TENSORS, lambda p: save_file(tensors, p))
        pos = self.positions
        if isinstance(pos, slice):
            pos = {"slice": [pos.start, pos.stop, pos.step]}
        write_json(directory / _META, {"positions": pos, "meta": self.meta})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ActivationCache:
        """Read a cache written by :meth:`save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / _TENSORS).is_file():
            raise FileNotFoundError(
                f"{directory} holds no {_TENSORS}; expected a folder written by ActivationCache.save"
            )
        raw = load_file(str(directory / _TENSORS))
        info = json.loads((directory / _META).read_text()) if (directory / _META).is_file() else {}
        pos = info.get("positions")
        if isinstance(pos, dict) and "slice" in pos:
            pos = slice(*pos["slice"])
        data = {k[5:]: v for k, v in raw.items() if k.startswith("act::")}
        return cls(data, raw.get("meta::input_ids"), raw.get("meta::attention_mask"), pos, info.get("meta"))
