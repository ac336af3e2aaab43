"""Collect activations over a prompt set: batched, in memory or streamed to disk, resumable.

On disk a collection is a folder::

    index.json              what was asked (prompts hash, hook names, positions, dtype, model
                            provenance), the shard size and the finished shards
    prompts.jsonl           one {"text", "label", "group"} object per prompt, in order
    shard-00000.safetensors one [rows, d] tensor per hook name for prompts start:stop

Each shard is written to a temporary file and moved into place with ``os.replace``, then the index
is updated the same way, so an interrupted run leaves only finished shards behind and a rerun
with the same arguments computes only the missing ones.

Edits and resuming: the index also records the model's active edits when the collection started
(``HookedModel.active_edits()``: hooked names and the weight edit in force). Hook functions cannot
be compared, so a folder is resumed (or reused when finished) only when no edit was active when it
was written and none is active now; anything else (a ``steer`` hook or a ``project`` edit, then or
now, or an index from deltalens 0.1 that recorded nothing) is refused with a ``ValueError``, and
``overwrite=True`` recomputes every row under the current edits. An edit that appears or
disappears while a collection is being written stops it with a ``RuntimeError``.

Example:
    >>> from deltalens.probes import collect
    >>> acts = collect(model, prompts, "blocks.*.hook_resid_post", labels=labels, out="acts/")
    >>> acts.stack().shape            # [n_prompts, layer, d_model], read from the shards on demand
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from deltalens.atomic import atomic_write, write_text
from deltalens.data import PromptSet
from deltalens.hashing import text_hash
from deltalens.hooks.names import NamesArg, resolve_names
from deltalens.hooks.provenance import Provenance
from deltalens.probes.collected import FORMAT, INDEX, PROMPTS, Collected

if TYPE_CHECKING:
    from deltalens.hooks.cache import ActivationCache
    from deltalens.hooks.model import HookedModel

_SHARD_BYTES = 64 * 2**20


class NonFiniteActivationError(ValueError):
    """An activation contains NaN or ±inf (often fp16 overflow or a broken checkpoint)."""


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """Passed to ``collect(on_shard=...)`` after each shard is safely on disk."""

    index: int
    start: int
    stop: int
    n_shards: int
    path: Path


def _prompt_texts(prompts: Sequence[str] | PromptSet) -> tuple[list[str], list[Any] | None, list[Any] | None]:
    """Texts, labels and groups of ``prompts`` (labels and groups only from a ``PromptSet``)."""
    if isinstance(prompts, PromptSet):
        return list(prompts.texts), list(prompts.labels), list(prompts.groups)
    if isinstance(prompts, str):
        prompts = [prompts]
    texts = list(prompts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"prompts must be strings; prompt {bad[0]} is a {type(texts[bad[0]]).__name__}")
    return texts, None, None


def _column(values: Sequence[Any] | None, n: int, what: str) -> list[Any] | None:
    if values is None:
        return None
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != n:
        raise ValueError(
            f"{what} has {len(values)} entries but there are {n} prompts; expected one per prompt"
        )
    if all(v is None for v in values):
        return None
    return values


def _pool(cache: ActivationCache, name: str, positions: str | int) -> Tensor:
    x = cache[name]
    if positions != "mean":
        return x
    mask = cache.attention_mask.to(x.dtype)[..., None]
    return (x * mask).sum(1) / mask.sum(1)


def _check_finite(acts: dict[str, Tensor], offset: int, order: Sequence[int], texts: Sequence[str]) -> None:
    for name, x in acts.items():
        if bool(torch.isfinite(x).all()):
            continue
        row = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0])
        i = order[offset + row]
        kind = "NaN" if bool(torch.isnan(x[row]).any()) else "inf"
        raise NonFiniteActivationError(
            f"hook {name!r} has non-finite values ({kind}) for prompt {i} ({texts[i][:60]!r}); expected "
            "finite activations. Check the checkpoint and dtype (fp16 overflows; try dtype=float32)."
        )


_NO_EDITS: dict[str, Any] = {"hooks": [], "weights": None}


def _active_edits(model: HookedModel) -> dict[str, Any]:
    """``model.active_edits()`` (no edits for a model without that method), as JSON-able data."""
    get = getattr(model, "active_edits", None)
    edits = get() if callable(get) else _NO_EDITS
    return {"hooks": sorted(edits.get("hooks") or []), "weights": edits.get("weights")}


def _describe_edits(edits: dict[str, Any]) -> str:
    hooks, weights = edits.get("hooks") or [], edits.get("weights")
    parts = [f"hooks on {', '.join(hooks[:3])}{', ...' if len(hooks) > 3 else ''}"] if hooks else []
    parts += [f"weight edit {weights!r}"] if weights else []
    return " and ".join(parts) or "none"


def _edits_conflict(directory: Path, recorded: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """Why the collection in ``directory`` (written under ``recorded`` edits) cannot be resumed now."""
    if recorded is None:
        return (
            f"{directory} holds a collection that does not record which edits were active (written by an "
            "older deltalens), so rows from it may not match rows computed now"
        )
    if now != _NO_EDITS:
        return (
            f"{directory} holds a collection and the model has active edits now ({_describe_edits(now)}); "
            "edits are known only by name (hook functions cannot be compared), so resuming could mix rows "
            "computed under different edits"
        )
    if recorded != _NO_EDITS:
        return (
            f"{directory} holds a collection written with edits active ({_describe_edits(recorded)}) but "
            "the model has none now; resuming would mix edited and unedited rows"
        )
    return None


def _provenance(model: HookedModel) -> dict[str, Any] | None:
    """The model's :class:`~deltalens.hooks.provenance.Provenance` as a dict (None without one)."""
    prov = getattr(model, "provenance", None)
    return prov.to_dict() if isinstance(prov, Provenance) else None


@dataclass(frozen=True)
class _Job:
    """What :func:`collect` runs: the model, the prompts, the hooks, the pooling, batch size and dtype."""

    model: HookedModel
    texts: list[str]
    names: list[str]
    positions: str | int
    batch_size: int
    dtype: torch.dtype
    chat: bool = False
    template: str | None = None

    def run(self, idx: list[int], bar: Any = None) -> dict[str, Tensor]:
        """Activations for ``texts[idx]``, ``{name: [len(idx), d]}``; batches of similar length."""
        texts, positions, dtype = self.texts, self.positions, self.dtype
        order = sorted(idx, key=lambda i: len(texts[i]))
        out: dict[str, Tensor] = {}
        rank = {i: r for r, i in enumerate(idx)}
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            pos = None if positions == "mean" else positions
            cache = self.model.run_with_cache(
                [texts[i] for i in chunk], names=self.names, positions=pos, chat=self.chat, template=self.template
            )
            acts = {n: _pool(cache, n, positions).to(dtype) for n in self.names}
            _check_finite(acts, s, order, texts)
            rows = torch.tensor([rank[i] for i in chunk])
            for n, x in acts.items():
                if n not in out:
                    out[n] = torch.empty((len(idx), *x.shape[1:]), dtype=dtype)
                out[n][rows] = x
            if bar is not None:
                bar.update(len(chunk))
        return out

    def spec(self) -> dict[str, Any]:
        """What was asked, as recorded in (and compared against) a collection's ``index.json``."""
        prov = _provenance(self.model) or {}
        model_id = {k: prov.get(k) for k in ("content_hash", "adapter", "backend", "dtype", "arch")}
        return {
            "prompts_sha256": text_hash(self.texts)[:16],
            "n_prompts": len(self.texts),
            "names": self.names,
            "positions": self.positions,
            "chat": self.chat,
            "template": self.template,
            "dtype": str(self.dtype).replace("torch.", ""),
            "model": model_id,
        }

    def shard_size(self) -> int:
        """Prompts per shard for about 64 MiB per shard, a multiple of the batch size."""
        d = int(getattr(self.model, "d_model", 0) or 1)
        per_prompt = max(1, len(self.names) * d * torch.empty((), dtype=self.dtype).element_size())
        return max(self.batch_size, (_SHARD_BYTES // per_prompt) // self.batch_size * self.batch_size)


def _inputs(
    prompts: Sequence[str] | PromptSet, labels: Sequence[Any] | None, groups: Sequence[Any] | None
) -> tuple[list[str], list[Any] | None, list[Any] | None]:
    """Texts, labels and groups (given ones first, else the ``PromptSet``'s), checked against the texts."""
    texts, set_labels, set_groups = _prompt_texts(prompts)
    n = len(texts)
    if n == 0:
        raise ValueError("no prompts to collect; expected a non-empty list of strings")
    labels = _column(labels if labels is not None else set_labels, n, "labels")
    return texts, labels, _column(groups if groups is not None else set_groups, n, "groups")


def _check_batching(batch_size: int, positions: Any) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    if not (
        positions in ("last", "mean") or (isinstance(positions, int) and not isinstance(positions, bool))
    ):
        raise ValueError(
            f"positions={positions!r}; expected 'last', 'mean' or an int (one vector per prompt)"
        )


def _hook_names(model: HookedModel, names: NamesArg) -> list[str]:
    """The model's hook names matching ``names``; attention patterns are refused."""
    chosen = resolve_names(names, model.hook_names)
    patterns = [c for c in chosen if c.endswith("hook_pattern")]
    if patterns:
        raise ValueError(
            f"attention patterns ({patterns[0]!r}, ...) have no fixed size per prompt; collect "
            "residual / attn_out / mlp_out hooks instead"
        )
    return chosen


def _meta(model: HookedModel) -> dict[str, Any]:
    """``n_layers`` and the provenance of ``model``, kept on the :class:`Collected`."""
    meta: dict[str, Any] = {"n_layers": int(model.n_layers)}
    prov = _provenance(model)
    if prov is not None:
        meta["provenance"] = prov
    return meta


def collect(
    model: HookedModel,
    prompts: Sequence[str] | PromptSet,
    names: NamesArg = "blocks.*.hook_resid_post",
    positions: str | int = "last",
    *,
    batch_size: int = 16,
    out: str | Path | None = None,
    labels: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
    dtype: torch.dtype = torch.float32,
    shard_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_shard: Callable[[ShardInfo], None] | None = None,
    chat: bool = False,
    template: str | None = None,
) -> Collected:
    """Cache one activation vector per prompt and hook, batch by batch.

    Args:
        model: a :class:`~deltalens.hooks.model.HookedModel`.
        prompts: texts or a :class:`~deltalens.data.PromptSet` (whose labels / groups are used unless given).
        names: hook names, globs, a list or a predicate (``attn.hook_pattern`` is not supported).
        positions: ``"last"`` (last real token), ``"mean"`` (over real tokens) or an int (padded position).
        batch_size: prompts per forward pass (prompts of similar length are batched together).
        out: a folder to stream safetensors shards into (resumable); None keeps all in memory.
        labels, groups: one per prompt, kept for probes and splits; dtype: storage dtype.
        shard_size: prompts per shard (default about 64 MiB; a resumed run keeps its own size).
        overwrite: with ``out``, discard an existing collection made with other arguments or edits.
        progress: show a tqdm bar; on_shard: called with a :class:`ShardInfo` after each shard.
        chat, template: wrap prompts in the chat template or a ``"...{prompt}..."`` string (resume key).

    Returns:
        A :class:`Collected`; ``.stack()`` gives ``[n_prompts, layer, d]``.

    Raises:
        NonFiniteActivationError: an activation is NaN / inf (names the hook and prompt index).
        ValueError: no prompts, mismatched labels / groups, or an ``out`` folder that cannot be resumed
            (other arguments, or edits active then or now: see the module docstring).
        RuntimeError: the model's active edits changed while shards were being written.

    Example:
        >>> collect(model, ps, out="runs/acts", batch_size=32).stack(layers="65-90%")   # [n, layer, d]
    """

    texts, labels, groups = _inputs(prompts, labels, groups)
    _check_batching(batch_size, positions)
    job = _job(model, texts, names, positions, batch_size, dtype, chat, template)
    meta = _meta(model)
    bar = _bar(len(texts), progress)
    try:
        if out is None:
            kept = dict(prompts=texts, labels=labels, groups=groups, positions=positions, meta=meta)
            return Collected(names=job.names, data=job.run(list(range(len(texts))), bar), **kept)
        directory = _stream(job, Path(out), meta, shard_size, overwrite, bar, on_shard)
    finally:
        bar.close()
    _write_prompts(directory, texts, labels, groups)
    return Collected.open(directory)


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="collect", unit="prompt", disable=not progress)


def _job(
    model: HookedModel, texts: list[str], names: NamesArg, positions: str | int, batch_size: int,
    dtype: torch.dtype, chat: bool, template: str | None,
) -> _Job:
    if template is not None or chat:
        model.format_prompts(texts[:1], chat=chat, template=template)  # a bad template fails before any work
    return _Job(model, texts, _hook_names(model, names), positions, batch_size, dtype, chat, template)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _write_prompts(
    directory: Path, texts: list[str], labels: list[Any] | None, groups: list[Any] | None
) -> None:
    """``prompts.jsonl``: one ``{"text", "label", "group"}`` object per prompt, in order."""
    n = len(texts)
    write_text(
        directory / PROMPTS,
        "".join(
            json.dumps({"text": t, "label": _plain(lab), "group": _plain(g)}) + "\n"
            for t, lab, g in zip(texts, labels or [None] * n, groups or [None] * n)
        ),
    )


def _resumable(
    directory: Path, spec: dict[str, Any], edits: dict[str, Any], shard_size: int, overwrite: bool
) -> tuple[dict[str, Any] | None, int]:
    """The index of the collection in ``directory`` to resume (None: start afresh) and the shard size.

    Raises:
        ValueError: the folder holds another collection, or one whose edits differ from (or cannot be
            compared with) the model's active ``edits`` (and not ``overwrite``); or a foreign index.
    """
    index_path = directory / INDEX
    if not index_path.is_file():
        return None, shard_size
    index = json.loads(index_path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path} is not a deltalens collection index (format {index.get('format')!r})")
    diff = [k for k, v in spec.items() if index["spec"].get(k) != v]
    if diff:
        old = index["spec"]
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {spec[k]!r} now" for k in diff[:2])
        why = f"{directory} holds a collection made with other {', '.join(diff)} ({detail})"
        hint = "expected the same arguments to resume. Use another folder or overwrite=True."
    else:
        why = _edits_conflict(directory, index.get("edits"), edits)
        hint = "resuming is refused. Remove the edits, use another folder, or overwrite=True to recompute every row."
    if why is None:
        return index, index["shard_size"]  # resume with the size the run started with
    if not overwrite:
        raise ValueError(f"{why}; {hint}")
    for f in index.get("shards", []):
        (directory / f["file"]).unlink(missing_ok=True)
    return None, shard_size


def _check_edits_unchanged(model: HookedModel, edits: dict[str, Any], directory: Path) -> None:
    """Refuse to write another shard when the model's edits changed since the collection started."""
    now = _active_edits(model)
    if now != edits:
        raise RuntimeError(
            f"the model's active edits changed while collecting into {directory} (from "
            f"{_describe_edits(edits)} to {_describe_edits(now)}); expected the same edits for every shard"
        )


def _save_shard(path: Path, acts: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in acts.items()}, p))


def _stream(
    job: _Job,
    directory: Path,
    meta: dict[str, Any],
    shard_size: int | None,
    overwrite: bool,
    bar: Any,
    on_shard: Callable[[ShardInfo], None] | None,
) -> Path:
    """Write the shards ``directory`` lacks (and the index after each), resuming a matching collection."""
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / INDEX
    spec, edits = job.spec(), _active_edits(job.model)
    size = job.shard_size() if shard_size is None else shard_size
    index, shard_size = _resumable(directory, spec, edits, size, overwrite)
    n = len(job.texts)
    bounds = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    if index is None:
        index = {"format": FORMAT, "spec": spec, "meta": meta, "shard_size": shard_size, "shards": []}
        index["edits"] = edits
    done = {f["index"]: f for f in index["shards"] if (directory / f["file"]).is_file()}
    index["shards"] = sorted(done.values(), key=lambda f: f["index"])
    index["n_shards"] = len(bounds)
    bar.update(sum(f["stop"] - f["start"] for f in done.values()))
    for i, (start, stop) in enumerate(bounds):
        if i in done:
            continue
        _check_edits_unchanged(job.model, edits, directory)
        acts = job.run(list(range(start, stop)))
        bar.update(stop - start)
        path = directory / f"shard-{i:05d}.safetensors"
        _save_shard(path, acts)
        index["shards"].append({"index": i, "file": path.name, "start": start, "stop": stop})
        index["shards"].sort(key=lambda f: f["index"])
        write_text(index_path, json.dumps(index, indent=1))
        if on_shard is not None:
            on_shard(ShardInfo(index=i, start=start, stop=stop, n_shards=len(bounds), path=path))
    write_text(index_path, json.dumps(index, indent=1))
    return directory
