"""Attention patterns with CircuitsVis, fully offline.

The CircuitsVis browser bundle that ships inside the ``circuitsvis`` package is read once and
inlined in a ``<script>``; nothing is fetched from a CDN and nothing probes the network (the
package's own ``_repr_html_`` does both, so it is never called here).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.viz.base import NEGATIVE, POSITIVE, View, content_id, esc, js_json, provenance_of

if TYPE_CHECKING:
    from torch import Tensor

    from deltalens.hooks.cache import ActivationCache
    from deltalens.hooks.model import HookedModel

    Source = HookedModel | ActivationCache | Mapping[str, Tensor]
    """What :func:`attention` reads a pattern from."""

_ELEMENT = "AttentionHeads"


@functools.lru_cache(maxsize=1)
def circuitsvis_script() -> str:
    """The CircuitsVis browser bundle as one inline ``<script>`` element (read once, then cached).

    Raises:
        FileNotFoundError: the installed ``circuitsvis`` has no bundled ``dist/cdn/iife.js``.
    """
    import importlib.util

    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("attention views need the 'circuitsvis' package: pip install circuitsvis")
    bundle = Path(next(iter(spec.submodule_search_locations))) / "dist" / "cdn" / "iife.js"
    if not bundle.is_file():
        raise FileNotFoundError(
            f"circuitsvis has no bundled browser script at {bundle}; reinstall circuitsvis"
        )
    js = bundle.read_text(encoding="utf-8")
    js = js.replace("</script", "<\\/script").replace("<!--", "<\\!--")
    js = js.replace("//# sourceMappingURL=iife.js.map", "")
    return f'<script data-dl-asset="circuitsvis">\n{js}\n</script>\n'


@dataclass(kw_only=True, repr=False, eq=False)
class AttentionView(View):
    """Attention patterns of one layer for one or more models, drawn by CircuitsVis in the browser.

    Attributes:
        tokens: ``{model label: [token strings]}``.
        patterns: ``{model label: numpy array [head, query, key]}``.
        layer: the block index.
        heads: the head indices shown.
        data: a tidy ``DataFrame`` with columns ``model, head, query, key, query_token,
            key_token, weight``.
        difference: ``{"b − a": numpy array [head, query, key]}`` of two models' patterns on the
            same tokens (from :func:`attention_compare`), drawn as a red/blue panel; else empty.
    """

    tokens: dict[str, list[str]] = field(default_factory=dict)
    patterns: dict[str, Any] = field(default_factory=dict)
    difference: dict[str, Any] = field(default_factory=dict)
    layer: int = 0
    heads: list[int] = field(default_factory=list)
    decimals: int = 4

    def _props(self, label: str) -> dict[str, Any]:
        import numpy as np

        pattern = np.round(np.asarray(self.patterns[label], dtype=np.float64), self.decimals)
        return {
            "attention": pattern.tolist(),
            "tokens": list(self.tokens[label]),
            "attentionHeadNames": [f"L{self.layer}H{h}" for h in self.heads],
            "maskUpperTri": True,
        }

    @property
    def uid(self) -> str:
        payload = [(label, js_json(self._props(label))) for label in self.patterns]
        return content_id(self.kind, self.title, self.layer, payload, prefix="dl-attention")

    def assets(self) -> dict[str, str]:
        return {"circuitsvis": circuitsvis_script()}

    def body_html(self, id_suffix: str = "") -> str:
        uid = self.uid + id_suffix
        cols = []
        calls = []
        for i, label in enumerate(self.patterns):
            root = f"{uid}-{i}"
            heading = f'<div class="dl-title">{esc(label)}</div>' if len(self.patterns) > 1 or label else ""
            cols.append(
                f'<div class="dl-col" style="flex:1 1 420px;min-width:360px">{heading}'
                f'<div class="dl-cv-root" id="{root}" data-cv="{root}"></div>'
                f"<noscript>This attention view needs JavaScript.</noscript></div>"
            )
            calls.append(f'["{root}",{js_json(self._props(label))}]')
        script = (
            "<script>(function(){var items=[" + ",".join(calls) + "];"
            # find each root inside this view (the same view may be shown twice on one page)
            "var s=document.currentScript,box=s&&s.parentNode;"
            "items.forEach(function(it){var el=box&&box.querySelector('[data-cv=\"'+it[0]+'\"]');"
            "if(!el)el=document.getElementById(it[0]);if(!el||el.getAttribute('data-drawn'))return;"
            "if(typeof CircuitsVis==='undefined'){el.textContent='CircuitsVis script missing';return;}"
            "if(document.querySelectorAll('#'+it[0]).length>1){window.dlCvCount=(window.dlCvCount||0)+1;"
            "el.id=it[0]+'-r'+window.dlCvCount;}"
            "el.setAttribute('data-drawn','1');"
            f"try{{CircuitsVis.render(el.id,CircuitsVis.{_ELEMENT},it[1]);}}"
            "catch(e){el.textContent='attention view failed to render: '+e;}});})();</script>"
        )
        for label, diff in self.difference.items():
            cols.append(diff_panel(diff, self.tokens[next(iter(self.tokens))], self.heads, self.layer, label))
        cap = f'<p class="dl-caption">{esc(self.caption)}</p>' if self.caption else ""
        return (
            f'<div class="dl-view dl-attention" id="{uid}" data-kind="attention">'
            f'<div class="dl-title">{esc(self.title)}</div>'
            f'<div class="dl-row" style="display:flex;flex-wrap:wrap;gap:18px">{"".join(cols)}</div>{cap}'
            f"{script}</div>\n"
        )


def diff_panel(diff: Any, tokens: Sequence[str], heads: Sequence[int], layer: int, label: str) -> str:
    """Inline SVG grids of an attention difference ``[head, query, key]`` (blue: more attention in
    the second model, red: less; one colour scale for all heads); each cell has a tooltip."""
    import numpy as np

    diff = np.asarray(diff, dtype=np.float64)
    n = diff.shape[-1]
    largest = float(np.abs(diff).max()) or 1.0
    cell = max(4.0, min(16.0, 240.0 / n))
    pos, neg = (tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in (POSITIVE, NEGATIVE))
    grids = []
    for i, h in enumerate(heads):
        rects = []
        for q in range(n):
            for k in range(q + 1):
                v = float(diff[i, q, k])
                t = abs(v) / largest
                rgb = pos if v >= 0 else neg
                fill = "#" + "".join(f"{round(255 + (c - 255) * t):02x}" for c in rgb)
                tip = f"L{layer}H{h} {tokens[q]!r} → {tokens[k]!r}: {v:+.4f}"
                rects.append(
                    f'<rect x="{k * cell:.1f}" y="{q * cell:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
                    f'fill="{fill}" data-value="{v!r}"><title>{esc(tip)}</title></rect>'
                )
        side = n * cell
        grids.append(
            f'<figure style="margin:0 8px 8px 0;display:inline-block" data-head="{h}">'
            f'<figcaption style="font-size:.8em">L{layer}H{h}</figcaption>'
            f'<svg class="dl-attn-diff-grid" viewBox="0 0 {side:.0f} {side:.0f}" width="{side:.0f}" '
            f'height="{side:.0f}" style="border:1px solid #ddd">{"".join(rects)}</svg></figure>'
        )
    note = f"blue: more attention, red: less (largest |difference| {largest:.3g}); hover a cell"
    return (
        f'<div class="dl-col dl-attn-diff" style="flex:1 1 420px;min-width:360px" data-label="{esc(label)}">'
        f'<div class="dl-title">{esc(label)}</div><p class="dl-caption">{esc(note)}</p>{"".join(grids)}</div>'
    )


def str_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Decode each token id on its own (so byte-level BPE tokens read as text)."""
    if tokenizer is None:
        return [f"<{int(i)}>" for i in ids]
    return [tokenizer.decode([int(i)]) for i in ids]


def _pattern_from(
    source: Source,
    prompt: str | None,
    layer: int,
    batch_index: int,
    tokens: Sequence[str] | None,
    tokenizer: Any,
) -> tuple[Any, list[str], dict[str, Any] | None]:
    """``(pattern [head, q, k] as numpy, tokens, provenance)`` from a model or an ActivationCache."""
    import torch

    name = f"blocks.{layer}.attn.hook_pattern"
    if hasattr(source, "run_with_cache"):
        if prompt is None:
            raise ValueError("attention(model, prompt): a prompt is needed when a model is given")
        n_layers = getattr(source, "n_layers", None)
        if n_layers is not None and not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is outside this model's blocks 0..{n_layers - 1}")
        cache = source.run_with_cache(prompt, names=name)
        tokenizer = tokenizer or getattr(source, "tokenizer", None)
    elif isinstance(source, Mapping):
        cache = source
    else:
        raise TypeError(f"attention() takes a HookedModel or an ActivationCache, got {type(source).__name__}")
    if name not in cache:
        have = [k for k in cache if k.endswith("attn.hook_pattern")]
        raise KeyError(
            f"the cache has no {name!r}; cache it with run_with_cache(..., names={name!r})"
            + (f" (it holds {have})" if have else "")
        )
    pat = cache[name]
    if pat.ndim != 4:
        raise ValueError(f"{name} should be [batch, head, query, key]; got shape {tuple(pat.shape)}")
    if not 0 <= batch_index < pat.shape[0]:
        raise IndexError(f"batch_index {batch_index} is outside the cached batch of {pat.shape[0]}")
    pat = pat[batch_index].detach().to(torch.float32).cpu()
    ids = getattr(cache, "input_ids", None)
    mask = getattr(cache, "attention_mask", None)
    if ids is not None:
        row = ids[batch_index]
        keep = mask[batch_index].bool() if mask is not None else torch.ones_like(row, dtype=torch.bool)
        pat = pat[:, keep][:, :, keep]
        row = row[keep]
        toks = list(tokens) if tokens is not None else str_tokens(tokenizer, row.tolist())
    elif tokens is not None:
        toks = list(tokens)
    else:
        toks = [f"<{i}>" for i in range(pat.shape[-1])]
    if len(toks) != pat.shape[-1]:
        raise ValueError(f"{len(toks)} tokens given for an attention pattern over {pat.shape[-1]} positions")
    return pat.numpy(), toks, provenance_of(source)


def _heads(heads: int | Sequence[int] | None, n: int) -> list[int]:
    chosen = (
        list(range(n)) if heads is None else [heads] if isinstance(heads, int) else [int(h) for h in heads]
    )
    bad = [h for h in chosen if not 0 <= h < n]
    if bad:
        raise ValueError(f"heads {bad} are outside 0..{n - 1} (this layer has {n} heads)")
    if not chosen:
        raise ValueError("heads is empty; pass None for every head")
    return chosen


def _tidy(tokens: dict[str, list[str]], patterns: dict[str, Any], heads: list[int]):
    import pandas as pd

    frames = []
    for label, pat in patterns.items():
        h, q, k = pat.shape
        toks = tokens[label]
        idx = pd.MultiIndex.from_product([range(h), range(q), range(k)], names=["h", "query", "key"])
        df = idx.to_frame(index=False)
        df["head"] = [heads[i] for i in df["h"]]
        df["query_token"] = [toks[i] for i in df["query"]]
        df["key_token"] = [toks[i] for i in df["key"]]
        df["weight"] = pat.reshape(-1)
        df.insert(0, "model", label)
        frames.append(
            df.drop(columns="h")[["model", "head", "query", "key", "query_token", "key_token", "weight"]]
        )
    return pd.concat(frames, ignore_index=True)


def attention(
    model_or_cache: Source,
    prompt: str | None = None,
    *,
    layer: int = 0,
    heads: int | Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    tokenizer: Any = None,
    batch_index: int = 0,
    title: str | None = None,
    label: str = "",
) -> AttentionView:
    """Attention patterns of one layer, drawn with CircuitsVis (interactive, offline).

    Args:
        model_or_cache: a ``HookedModel`` (either backend; it is run on ``prompt``) or an
            ``ActivationCache`` holding ``blocks.{layer}.attn.hook_pattern``.
        prompt: the text to run (needed with a model).
        layer: block index.
        heads: one head, a list of heads, or None for all.
        tokens: token strings (default: decoded from the cache's ``input_ids``).
        tokenizer: decodes ``input_ids`` when a cache is given (a model brings its own).
        batch_index: which row of a batched cache to show (padding is dropped).
        title: heading (default ``"Attention, layer {layer}"``).
        label: the model's name, shown above the pattern.

    Returns:
        An :class:`AttentionView`; ``view.patterns[label]`` is ``[head, query, key]``.

    Example:
        >>> view = viz.attention(model, "The cat sat on the mat", layer=1, heads=[0, 2])
        >>> view.save("attn.html")     # opens offline; the CircuitsVis script is inlined

    Gotcha: padding positions are removed using the cache's attention mask, so a batched cache
    shows the same pattern as the prompt run alone.
    """
    pat, toks, prov = _pattern_from(model_or_cache, prompt, layer, batch_index, tokens, tokenizer)
    chosen = _heads(heads, pat.shape[0])
    pat = pat[chosen]
    tokens_map, patterns = {label: toks}, {label: pat}
    return AttentionView(
        kind="attention",
        title=title or f"Attention, layer {layer}",
        data=_tidy(tokens_map, patterns, chosen),
        provenance={label or "model": prov} if prov else {},
        params={"layer": layer, "heads": chosen, "prompt": prompt},
        tokens=tokens_map,
        patterns=patterns,
        layer=layer,
        heads=chosen,
    )


def attention_compare(
    models: Mapping[str, Source],
    prompt: str | None = None,
    layer: int = 0,
    *,
    heads: int | Sequence[int] | None = None,
    title: str | None = None,
    diff: bool | None = None,
    **kwargs: Any,
) -> AttentionView:
    """The same layer's attention for several models side by side (e.g. base vs fine-tuned).

    Args:
        models: ``{label: HookedModel or ActivationCache}``, shown left to right.
        prompt: the text to run through every model.
        layer: block index.
        heads: one head, a list of heads, or None for all.
        title: heading (default ``"Attention, layer {layer}: a vs b"``).
        diff: add a panel of the second pattern minus the first (``view.difference``); default:
            when there are exactly two models and they saw the same tokens.
        **kwargs: passed to :func:`attention` (``tokens``, ``tokenizer``, ``batch_index``).

    Returns:
        One :class:`AttentionView` with one column per model; the CircuitsVis script is inlined once.

    Example:
        >>> viz.attention_compare({"W_A": aligned, "harmful FT": harmful}, "How do I pick a lock?", layer=3)
    """
    if not models:
        raise ValueError("attention_compare needs at least one model: {label: model}")
    tokens_map: dict[str, list[str]] = {}
    patterns: dict[str, Any] = {}
    prov: dict[str, dict[str, Any]] = {}
    chosen: list[int] = []
    for label, src in models.items():
        view = attention(src, prompt, layer=layer, heads=heads, label=str(label), **kwargs)
        tokens_map.update(view.tokens)
        patterns.update(view.patterns)
        prov.update(view.provenance)
        chosen = view.heads
    names = " vs ".join(str(k) for k in models)
    difference = _difference(tokens_map, patterns, diff)
    return AttentionView(
        kind="attention",
        title=title or f"Attention, layer {layer}: {names}",
        difference=difference,
        data=_tidy(tokens_map, patterns, chosen),
        provenance=prov,
        params={"layer": layer, "heads": chosen, "prompt": prompt, "models": list(map(str, models))},
        tokens=tokens_map,
        patterns=patterns,
        layer=layer,
        heads=chosen,
    )


def _difference(tokens: dict[str, list[str]], patterns: dict[str, Any], diff: bool | None) -> dict[str, Any]:
    """``{"b − a": pattern_b - pattern_a}`` for two models on the same tokens (see ``diff``)."""
    labels = list(patterns)
    same = len(labels) == 2 and tokens[labels[0]] == tokens[labels[1]]
    if diff is None:
        diff = same
    if not diff:
        return {}
    if not same:
        raise ValueError(
            f"attention_compare: diff=True needs exactly two models that saw the same tokens; got {labels}"
            + ("" if len(labels) != 2 else " whose tokenizers split the prompt differently")
        )
    a, b = labels
    return {f"{b} − {a}": patterns[b] - patterns[a]}
