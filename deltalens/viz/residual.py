"""Residual-stream views: logit lens, probe accuracy by layer, activation overlap, ΔW norms."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from deltalens.viz.base import (
    FigureView,
    SeriesLog,
    apply_select,
    as_frame,
    auto_column,
    average_over_rest,
    color_map,
    default_rows,
    figure_legend,
    figure_png,
    mpl_text,
    new_figure,
    ordered,
    panel_name,
    pick_subset,
    provenance_of,
    require_columns,
    style_axes,
    text_color,
)


# ---------------------------------------------------------------------------------------
# logit lens
# ---------------------------------------------------------------------------------------
def final_norm_and_unembed(hf_model: Any, final_norm: Any = None) -> tuple[Any, Any]:
    """The final norm module and the unembedding of a Hugging Face causal LM.

    The norm's module path comes from the per-architecture hook map
    (``ln_final.hook_normalized``); the unembedding is ``get_output_embeddings()``.

    Args:
        hf_model: the wrapped model (a peft wrapper is looked through).
        final_norm: use this module as the final norm instead (any architecture).

    Raises:
        ValueError: the architecture is unknown and no ``final_norm`` was given, or the model
            has no output embeddings.
    """
    from deltalens.hooks.archs import arch_for
    from deltalens.hooks.backend import base_module

    inner = base_module(hf_model)
    unembed = inner.get_output_embeddings()
    if unembed is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings (get_output_embeddings() is None)")
    if final_norm is not None:
        return final_norm, unembed
    path = arch_for(inner.config).site("ln_final.hook_normalized")[0]
    try:
        return inner.get_submodule(path), unembed
    except AttributeError as e:
        raise ValueError(
            f"no final norm at {path!r} in {type(inner).__name__}; pass final_norm=<module> to logit_lens"
        ) from e


def _positions(positions: int | Sequence[int] | None, n: int) -> list[int]:
    if positions is None:
        chosen = list(range(n))
    else:
        chosen = [positions] if isinstance(positions, int) else list(positions)
    out = []
    for p in chosen:
        q = int(p) + n if int(p) < 0 else int(p)
        if not 0 <= q < n:
            raise ValueError(f"position {p} is outside the prompt's {n} tokens")
        out.append(q)
    return out


def logit_lens(
    model: Any,
    prompt: str,
    *,
    layers: Any = None,
    positions: int | Sequence[int] | None = None,
    top_k: int = 5,
    final_norm: Any = None,
    title: str | None = None,
) -> FigureView:
    """Top next-token predictions read off the residual stream after every layer.

    Each cached ``blocks.{L}.hook_resid_post`` goes through the model's final norm and its
    unembedding (``hf_model.get_output_embeddings()``); the last layer reproduces the model's own
    logits. Works on both backends, since it only uses ``run_with_cache`` and ``hf_model``.

    Args:
        model: a ``HookedModel``.
        prompt: one text.
        layers: a layer spec (``None`` = all, an int, ``"a:b"``, ``"65-90%"``, a list).
        positions: prompt positions to read (default all; negative counts from the end).
        top_k: predictions kept per (layer, position) in ``.data``.
        final_norm: override the final norm module (default: from the architecture's hook map).
        title: heading.

    Returns:
        A :class:`FigureView` (rows: layers, columns: positions, text: top-1 token, colour: its
        probability). ``.data`` has columns ``layer, position, input_token, rank, token_id,
        token, prob, logit``.

    Example:
        >>> view = viz.logit_lens(model, "The capital of France is", positions=-1)
        >>> view.data.query("rank == 0")[["layer", "token", "prob"]]

    Gotcha: Gemma's final logit soft-capping is applied too, so probabilities match the model's.
    """
    import pandas as pd
    import torch

    from deltalens.hooks.names import parse_layers
    from deltalens.viz.attention import str_tokens

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    chosen = parse_layers(layers, model.n_layers)
    names = [f"blocks.{layer}.hook_resid_post" for layer in chosen]
    cache = model.run_with_cache(prompt, names=names)
    ids = cache.input_ids[0]
    n = int(ids.shape[0])
    pos = _positions(positions, n)
    toks = str_tokens(model.tokenizer, ids.tolist())
    norm, unembed = final_norm_and_unembed(model.hf_model, final_norm)
    cfg = model.hf_model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    cap = getattr(cfg, "final_logit_softcapping", None)
    weight = unembed.weight
    rows = []
    with torch.inference_mode():
        for layer, name in zip(chosen, names):
            h = cache[name][0][pos].to(device=weight.device, dtype=weight.dtype)
            logits = unembed(norm(h)).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            probs = logits.softmax(-1)
            top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
            for i, p in enumerate(pos):
                for r in range(top.indices.shape[1]):
                    tid = int(top.indices[i, r])
                    rows.append(
                        {
                            "layer": layer,
                            "position": p,
                            "input_token": toks[p],
                            "rank": r,
                            "token_id": tid,
                            "token": str_tokens(model.tokenizer, [tid])[0],
                            "prob": float(top.values[i, r]),
                            "logit": float(logits[i, tid]),
                        }
                    )
    data = pd.DataFrame(rows)
    png, series = _lens_picture(data, chosen, pos, toks)
    prov = provenance_of(model)
    return FigureView(
        kind="logit_lens",
        title=title or "Logit lens: top-1 next token after each layer",
        data=data,
        caption=f"Prompt: {prompt!r}. Colour: probability of the top-1 token.",
        provenance={str((prov or {}).get("checkpoint") or (prov or {}).get("base") or "model"): prov}
        if prov
        else {},
        params={"layers": chosen, "positions": pos, "top_k": top_k, "prompt": prompt},
        png=png,
        series=series,
    )


def _lens_picture(data: Any, layers: list[int], pos: list[int], toks: list[str]) -> tuple[bytes, Any]:
    import numpy as np

    top1 = data[data["rank"] == 0]
    grid = np.full((len(layers), len(pos)), np.nan)
    text = [["" for _ in pos] for _ in layers]
    li = {layer: i for i, layer in enumerate(layers)}
    pi = {p: j for j, p in enumerate(pos)}
    log = SeriesLog()
    for r in top1.itertuples():
        grid[li[r.layer], pi[r.position]] = r.prob
        text[li[r.layer]][pi[r.position]] = r.token
    for layer in layers:
        sub = top1[top1["layer"] == layer]
        log.add("logit lens", f"layer {layer}", sub["position"], sub["prob"])
    w = min(22.0, 1.5 + 0.95 * len(pos))
    h = min(22.0, 1.3 + 0.42 * len(layers))
    fig, axes = new_figure(1, 1, (max(w, 4.0), max(h, 2.4)))
    ax = axes[0, 0]
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    for i in range(len(layers)):
        for j in range(len(pos)):
            v = grid[i, j]
            ax.text(
                j,
                i,
                mpl_text(text[i][j], 10),
                ha="center",
                va="center",
                fontsize=8,
                color=text_color(im, v),
            )
    ax.set_xticks(range(len(pos)), [mpl_text(toks[p], 10) for p in pos], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=8)
    ax.set_xlabel("input position (token)")
    ax.set_ylabel("layer (resid_post)")
    fig.colorbar(im, ax=ax, label="top-1 probability", shrink=0.8)
    return figure_png(fig), log.frame()


# ---------------------------------------------------------------------------------------
# line plots by layer
# ---------------------------------------------------------------------------------------
def _line_view(
    kind: str,
    df: Any,
    *,
    x: str,
    y: str,
    hue: str | None,
    col: str | None,
    row: str | None,
    band: str | None,
    baseline: str | None,
    chance: float | None,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None,
    max_panels: int = 6,
) -> FigureView:
    what = f"viz.{kind}"
    require_columns(df, [x, y, hue, col, row, band, baseline], what)
    values = [c for c in (y, band, baseline) if c]
    agg, note = average_over_rest(df, [c for c in (row, col, hue, x) if c], values)
    rows = ordered(agg[row]) if row else [None]
    cols = ordered(agg[col]) if col else [None]
    for name, vals in ((row, rows), (col, cols)):
        if name and len(vals) > max_panels:
            kept = pick_subset(sorted(vals), max_panels)
            note = (note + f" Showing {name} in {kept} of {len(vals)} values.").strip()
            vals[:] = kept
    hues = ordered(agg[hue]) if hue else [None]
    colors = color_map(hues)
    fig, axes = new_figure(len(rows), len(cols), (4.4, 3.2))
    log = SeriesLog()
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = axes[i, j]
            sub = agg
            if row:
                sub = sub[sub[row] == rv]
            if col:
                sub = sub[sub[col] == cv]
            pname = panel_name(row, rv, col, cv)
            for hv in hues:
                s = sub if hv is None else sub[sub[hue] == hv]
                s = s.dropna(subset=[y]).sort_values(x)
                if s.empty:
                    continue
                label = y if hv is None else str(hv)
                ax.plot(s[x], s[y], marker="o", ms=4, color=colors[hv], label=mpl_text(label, 30))
                log.add(pname, label, s[x], s[y])
                if band:
                    ax.fill_between(s[x], s[y] - s[band], s[y] + s[band], color=colors[hv], alpha=0.15, lw=0)
                if baseline:
                    ax.plot(s[x], s[baseline], ls="--", lw=1, color=colors[hv], alpha=0.7)
                    log.add(pname, f"{label} (random baseline)", s[x], s[baseline])
            if baseline:
                ax.plot([], [], ls="--", color="gray", label="random baseline")
            if chance is not None:
                ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance {chance:g}")
                log.add(pname, "chance", [float("nan")], [chance])
            if ylim:
                ax.set_ylim(*ylim)
            style_axes(ax, pname or None, x, ylabel)
            if sub[x].dtype.kind in "iu":
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure_legend(fig, axes)
    return FigureView(
        kind=kind,
        title=title,
        data=df,
        caption=note,
        params={"x": x, "y": y, "hue": hue, "col": col, "row": row, "band": band, "baseline": baseline},
        png=figure_png(fig),
        series=log.frame(),
    )


def probe_accuracy(
    table: Any,
    *,
    x: str = "layer",
    y: str = "accuracy",
    hue: str | None = "auto",
    col: str | None = None,
    row: str | None = None,
    err: str | None = "auto",
    baseline: str | None = "auto",
    chance: float | None = None,
    select: Mapping[str, Any] | None = None,
    title: str = "Linear probe accuracy by layer",
) -> FigureView:
    """Probe accuracy against layer, one line per model (or probe / concept).

    Args:
        table: tidy table, one row per (layer, model, ...): columns ``layer``, ``accuracy`` and
            optionally ``model`` / ``probe`` / ``concept``, ``accuracy_std``, ``chance``. The
            ``probes`` module's tables (``ProbeResult.table`` or ``.summary()`` with a ``model``
            column) work as they are; folds are averaged.
        x, y: the layer and accuracy columns.
        hue: the line grouping column; ``"auto"`` takes the first of ``model``, ``probe``,
            ``concept``, ``label``, ``split``, ``hook`` that varies; ``None`` for one line.
        col, row: one panel per value of these columns (small multiples).
        err: a standard-deviation column drawn as a band (``"auto"``: ``{y}_std`` if present).
        baseline: a per-layer baseline drawn dashed (``"auto"``: ``random_accuracy``, the accuracy
            along a random direction, if present; ``None`` omits it).
        chance: a dotted chance line (default: the mean of a ``chance`` or ``majority_accuracy``
            column if present).
        select: keep rows where ``column == value``; other varying columns are averaged (the
            caption says which).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` holds each line's ``(x, y)`` points.

    Example:
        >>> viz.probe_accuracy(probes_df, hue="model", chance=0.5).save("probes.png")
    """
    what = "viz.probe_accuracy"
    df = apply_select(as_frame(table, what), select, what)
    hue = auto_column(df, hue, ("model", "probe", "concept", "label", "split", "hook"), varying=True) or (
        auto_column(df, hue, ("model",))
    )
    err = auto_column(df, err, (f"{y}_std",))
    baseline = auto_column(df, baseline, ("random_accuracy",))
    if chance is None:
        chance_col = auto_column(df, "auto", ("chance", "majority_accuracy"))
        chance = float(df[chance_col].mean()) if chance_col else None
    return _line_view(
        "probe_accuracy", df, x=x, y=y, hue=hue, col=col, row=row, band=err, baseline=baseline,
        chance=chance, title=title, ylabel=y, ylim=None,
    )  # fmt: skip


def activation_overlap(
    table: Any,
    *,
    x: str = "layer",
    y: str = "mso",
    baseline: str | None = "auto",
    hue: str | None = "auto",
    col: str | None = "auto",
    row: str | None = "auto",
    select: Mapping[str, Any] | None = None,
    title: str = "Activation subspace overlap (MSO) by layer",
) -> FigureView:
    """Per-layer MSO between activation subspaces, with the random baseline dashed.

    Args:
        table: tidy table, one row per (layer, pair, ...): columns ``layer``, ``mso``, a random
            baseline (``mso_random`` or ``baseline``) and a pair (``pair`` such as ``"U-H1"``, or
            ``set_a``/``set_b``, or ``a``/``b``), optionally ``model``, ``energy_frac``/``eta``. The
            ``probes.activation_overlap`` table works as it is: its per-layer rows
            (``scope="layer"``) and uncentred rows are shown unless ``select`` says otherwise.
        x, y: the layer and MSO columns.
        baseline: random-baseline column (``"auto"``: ``mso_random`` or ``baseline``; ``None`` omits it).
        hue: line grouping (``"auto"``: the first of ``pair``, ``prompt_set``, ``model`` that varies).
        col: panel columns (``"auto"``: ``energy_frac`` or ``eta`` if it varies; at most 4 values).
        row: panel rows (``"auto"``: ``model`` if it varies and is not the hue).
        select: e.g. ``{"eta": 0.5}``; other varying columns are averaged (see the caption).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.series`` holds ``"{hue}"`` and ``"{hue} (random baseline)"`` lines.

    Example:
        >>> viz.activation_overlap(act_df, select={"eta": [0.1, 0.5], "centered": True})
    """
    what = "viz.activation_overlap"
    df = apply_select(as_frame(table, what), select, what)
    df, picked = default_rows(df, select, {"scope": "layer", "centered": False})
    if x in df.columns:
        df = df[df[x].notna()]
    for a, b in (("set_a", "set_b"), ("a", "b")):
        if "pair" not in df.columns and {a, b} <= set(df.columns):
            df = df.assign(pair=df[a].astype(str) + "-" + df[b].astype(str))
    baseline = auto_column(df, baseline, ("mso_random", "baseline"))
    hue = auto_column(df, hue, ("pair",)) or auto_column(df, hue, ("prompt_set", "model"), varying=True)
    col = auto_column(df, col, ("energy_frac", "eta"), varying=True)
    row = auto_column(df, row, tuple(c for c in ("model",) if c != hue), varying=True)
    view = _line_view(
        "activation_overlap", df, x=x, y=y, hue=hue, col=col, row=row, band=None, baseline=baseline,
        chance=None, title=title, ylabel="MSO", ylim=(0, 1.02), max_panels=4,
    )  # fmt: skip
    view.caption = " ".join(c for c in (picked, view.caption) if c)
    return view


# ---------------------------------------------------------------------------------------
# ΔW norms per layer and module
# ---------------------------------------------------------------------------------------
_LAYER_PARAM = re.compile(r"^(?:.*\.)?(?:layers|h|blocks|layer)\.(\d+)\.(.+)$")


def split_param_name(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "self_attn.q_proj")``.

    Biases keep a ``.bias`` suffix; tensors outside the blocks (embeddings, final norm,
    unembedding) give ``(None, name without ".weight")``.
    """
    m = _LAYER_PARAM.match(name)
    layer, rest = (int(m.group(1)), m.group(2)) if m else (None, name)
    if rest.endswith(".weight"):
        rest = rest[: -len(".weight")]
    rest = re.sub(r"^(?:base_model\.model\.)?(?:model\.|transformer\.)", "", rest) if layer is None else rest
    return layer, rest


def delta_norm_table(
    delta: Mapping[str, Any], reference: Mapping[str, Any] | None = None, update: str = "ΔW"
):
    """A tidy table of ``‖ΔW‖_F`` per tensor: ``update, name, layer, module, numel, norm, rel_norm``."""
    import pandas as pd
    import torch

    rows = []
    for name in delta:
        t = delta[name]
        norm = (
            float(torch.linalg.vector_norm(t.detach().float())) if isinstance(t, torch.Tensor) else float(t)
        )
        numel = int(t.numel()) if isinstance(t, torch.Tensor) else None
        rel = math.nan
        if reference is not None and name in reference:
            ref = float(torch.linalg.vector_norm(reference[name].detach().float()))
            rel = norm / ref if ref > 0 else math.nan
        layer, module = split_param_name(name)
        rows.append(
            {
                "update": update,
                "name": name,
                "layer": layer,
                "module": module,
                "numel": numel,
                "norm": norm,
                "rel_norm": rel,
            }
        )
    if not rows:
        raise ValueError("the delta holds no tensor")
    return pd.DataFrame(rows).astype({"layer": "Int64"})


def delta_norms(
    delta: Any,
    *,
    reference: Mapping[str, Any] | None = None,
    value: str | None = None,
    title: str = "‖ΔW‖ per layer and module",
) -> FigureView:
    """Heatmaps of the Frobenius norm of ΔW per (module, layer), plus bars for non-block tensors.

    Args:
        delta: a ``Mapping[str, Tensor]`` of ΔW (e.g. a ``WeightDelta``), several of them as
            ``{update label: mapping}`` (one panel each, shared colour scale), or a tidy table with
            columns ``name, norm`` (and optionally ``update``, ``rel_norm``).
        reference: the weights ΔW is relative to (e.g. ``model.state_dict()``); adds ``rel_norm``
            = ‖ΔW‖ / ‖W‖ and plots it.
        value: ``"norm"`` or ``"rel_norm"`` (default: ``rel_norm`` when a reference is given).
        title: heading.

    Returns:
        A :class:`FigureView`; ``.data`` has columns ``update, name, layer, module, numel, norm,
        rel_norm``; heatmap cells are in ``.series`` (``series`` = module, ``x`` = layer).

    Example:
        >>> useful, harmful = dl.weight_delta(aligned, useful_ft), dl.weight_delta(aligned, harmful_ft)
        >>> viz.delta_norms({"useful": useful, "harmful": harmful}, reference=aligned.state_dict())
    """
    import pandas as pd

    if isinstance(delta, pd.DataFrame):
        require_columns(delta, ["name", "norm"], "viz.delta_norms")
        data = delta.copy()
        parsed = [split_param_name(n) for n in data["name"]]
        if "layer" not in data:
            data["layer"] = pd.array([p[0] for p in parsed], dtype="Int64")
        if "module" not in data:
            data["module"] = [p[1] for p in parsed]
        if "update" not in data:
            data["update"] = "ΔW"
        if "rel_norm" not in data:
            data["rel_norm"] = math.nan
    elif isinstance(delta, Mapping) and delta and all(isinstance(v, Mapping) for v in delta.values()):
        data = pd.concat(
            [delta_norm_table(d, reference, str(k)) for k, d in delta.items()], ignore_index=True
        )
    elif isinstance(delta, Mapping):
        data = delta_norm_table(delta, reference)
    else:
        raise TypeError(
            "delta_norms takes a Mapping[str, Tensor], a dict of them, or a DataFrame; "
            f"got {type(delta).__name__}"
        )
    value = value or ("rel_norm" if data["rel_norm"].notna().any() else "norm")
    if value not in ("norm", "rel_norm"):
        raise ValueError(f"value must be 'norm' or 'rel_norm', got {value!r}")
    png, series = _norms_picture(data, value, title)
    return FigureView(
        kind="delta_norms",
        title=title,
        data=data,
        caption="Colour: " + ("‖ΔW‖_F / ‖W‖_F" if value == "rel_norm" else "‖ΔW‖_F") + " per tensor.",
        params={"value": value},
        png=png,
        series=series,
    )


def _norms_picture(data: Any, value: str, title: str) -> tuple[bytes, Any]:
    import numpy as np

    updates = list(dict.fromkeys(data["update"]))
    blocks = data[data["layer"].notna()]
    other = data[data["layer"].isna()]
    modules = list(dict.fromkeys(blocks["module"])) if not blocks.empty else []
    layers = sorted(int(x) for x in blocks["layer"].dropna().unique())
    vmax = float(np.nanmax(blocks[value])) if not blocks.empty else 1.0
    n_cols = len(updates) + (1 if not other.empty else 0)
    fig, axes = new_figure(
        1, n_cols, (max(3.6, 1.6 + 0.35 * len(layers)), max(3.0, 0.9 + 0.3 * len(modules)))
    )
    log = SeriesLog()
    im = None
    for k, upd in enumerate(updates):
        ax = axes[0, k]
        sub = blocks[blocks["update"] == upd]
        grid = np.full((len(modules), len(layers)), np.nan)
        for r in sub.itertuples():
            grid[modules.index(r.module), layers.index(int(r.layer))] = getattr(r, value)
        for i, mod in enumerate(modules):
            log.add(str(upd), mod, layers, grid[i])
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax or 1.0, aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_yticks(
            range(len(modules)),
            [mpl_text(m, 28) for m in modules] if k == 0 else [""] * len(modules),
            fontsize=7,
        )
        ax.set_xlabel("layer")
        ax.set_title(mpl_text(upd, 40), fontsize=10)
    if im is not None and layers:
        fig.colorbar(im, ax=axes[0, : len(updates)].tolist(), shrink=0.8, label=value)
    if not other.empty:
        ax = axes[0, -1]
        names = list(dict.fromkeys(other["module"]))
        colors = color_map(updates)
        width = 0.8 / len(updates)
        for k, upd in enumerate(updates):
            sub = other[other["update"] == upd].set_index("module").reindex(names)
            ax.barh(
                np.arange(len(names)) + k * width,
                sub[value],
                height=width,
                color=colors[upd],
                label=mpl_text(upd, 30),
            )
            log.add("outside blocks", str(upd), names, sub[value])
        ax.invert_yaxis()
        ax.set_yticks(np.arange(len(names)) + 0.4 - width / 2, [mpl_text(n, 24) for n in names], fontsize=7)
        style_axes(ax, "outside blocks", value)
        if len(updates) > 1:
            ax.legend(fontsize=7, frameon=False)
    return figure_png(fig), log.frame()
