"""Edge attribution patching (EAP, EAP-IG) and circuit faithfulness by edge patching.

The graph. Nodes are ``embed`` (``hook_embed`` + ``hook_pos_embed``, i.e. ``blocks.0.hook_resid_pre``),
each head ``a{L}.h{H}`` (its ``blocks.L.attn.hook_result[..., H, :]``, the o-bias aside), each MLP
``m{L}`` (``blocks.L.hook_mlp_out``) and ``logits``. Every node downstream of another reads its *own*
copy of the residual stream: head H of layer L reads ``hook_resid_pre`` of L through the first norm
into its query row ``hook_q[..., H, :]``; the MLP of L reads ``hook_resid_mid`` of L; ``logits`` read
the last ``hook_resid_post``. An edge ``u -> v`` exists when ``u`` writes before ``v`` reads (heads of
layer L feed the MLP of L). Keys and values: under grouped-query attention a key / value head is
shared by the query heads of its group; here it reads the *mean* of their input copies (an equal
split). Without GQA (GPT-2) each head's own copy feeds its own key and value rows, exactly
TransformerLens's ``use_split_qkv_input``; with GQA the per-group totals of the scores equal those of
TransformerLens's split input with ungrouped keys / values, and the group's key / value part is split
equally between its query heads.

Scores (Syed et al. 2023; Hanna et al. 2024, as in the EAP-IG repository). With ``x_v`` node v's
input copy and ``a_u`` node u's output::

    score(u -> v) = sum over batch, positions, d_model of (a_u(corrupted) - a_u(clean)) * d metric / d x_v

The gradient is taken with respect to v's own input copy (not ``hook_resid_pre``, which every later
reader shares): from the gradients at ``hook_q / hook_k / hook_v`` and ``hook_mlp_out``, pulled back
through the model's own norm and projections with autograd (:mod:`deltalens.hooks.nodes`). Sign: a
score is the first-order estimate of ``metric(clean run with edge u -> v carrying its corrupted
value) - metric(clean run)``; for a metric that prefers the clean answer, important edges score
negative. EAP-IG averages the gradient over ``steps`` runs whose input embeddings are
``corrupted + k / steps * (clean - corrupted)``, ``k = 1..steps`` (``steps=1`` is EAP).

Faithfulness patches every edge *outside* a circuit: ``x_v = (v's residual input in the current run)
- sum over removed u -> v of (a_u(current) - a_u(corrupted))``. All edges kept gives the clean run,
none kept the corrupted run.

Example:
    >>> c = circuits.edge_attribution(model, clean, corrupted, metric, method="eap-ig", steps=5)
    >>> circuits.faithfulness(model, c, clean, corrupted, metric, sizes=[10, 50, 200])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deltalens.circuits.stages import as_models, is_single, join_stages
from deltalens.hooks.names import TOP_HOOKS

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float
    from torch import Tensor

    from deltalens.circuits.graph import Circuit
    from deltalens.hooks.batch import Batch
    from deltalens.hooks.model import HookedModel
    from deltalens.hooks.nodes import NodeModules

METHODS: tuple[str, ...] = ("eap", "eap-ig")
SIGN = "score ~ metric(clean with edge u->v corrupted) - metric(clean), first order, summed over batch and positions"


# ---------------------------------------------------------------- the graph's layout
@dataclass(frozen=True)
class Layout:
    """Indices of sources and targets. Sources: embed, then per layer its heads and its MLP.

    Targets: per layer its heads and its MLP, then logits. Source ``s`` feeds target ``t`` iff
    ``s < n_src[t]``.
    """

    n_layers: int
    n_heads: int

    @property
    def sources(self) -> list[str]:
        """Source node names in index order: ``embed``, then per layer ``a{L}.h0 .. a{L}.h{H-1}``, ``m{L}``."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return out

    @property
    def targets(self) -> list[str]:
        """Target node names in index order: the sources without ``embed``, then ``logits``."""
        return self.sources[1:] + ["logits"]

    def n_src(self) -> list[int]:
        """How many sources (a prefix) feed each target."""
        h1 = self.n_heads + 1
        out = []
        for layer in range(self.n_layers):
            out += [1 + layer * h1] * self.n_heads + [1 + layer * h1 + self.n_heads]
        return out + [1 + self.n_layers * h1]

    def valid(self) -> Tensor:
        """``[source, target]`` bool: True where source ``s`` feeds target ``t`` (an edge of the graph)."""
        import torch

        return torch.arange(len(self.sources))[:, None] < torch.tensor(self.n_src())[None, :]

    def layers(self, names: list[str]) -> list[int]:
        """The layer of each node name (see :func:`deltalens.circuits.graph.node_layer`)."""
        from deltalens.circuits.graph import node_layer

        return [node_layer(n, self.n_layers) for n in names]


# ---------------------------------------------------------------- checks
def _check_args(method: str, steps: int, metric: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(repr(m) for m in METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: expected an int >= 1 (interpolation steps of EAP-IG)")
    if not callable(metric):
        raise TypeError(
            f"metric={metric!r}: expected a callable metric(logits [batch, pos, vocab]) -> scalar"
        )


def _batches(model: HookedModel, clean: Any, corrupted: Any) -> tuple[Batch, Batch]:
    """Tokenise both inputs; they must have the same shape (positions are compared one to one)."""
    from deltalens.hooks.nodes import check_edge_arch

    check_edge_arch(model)
    a, b = model.tokenize(clean), model.tokenize(corrupted)
    if a.input_ids.shape != b.input_ids.shape:
        raise ValueError(
            f"clean and corrupted tokenize to different shapes {tuple(a.input_ids.shape)} vs "
            f"{tuple(b.input_ids.shape)}: edge patching pairs positions one to one, so give prompts of equal token length"
        )
    return a, b


# ---------------------------------------------------------------- activations and gradients
def node_outputs(model: HookedModel, batch: Batch) -> Float[Tensor, "batch pos source d_model"]:
    """``[batch, pos, source, d_model]``: every source node's output (``embed``, each head's ``hook_result``,
    each ``hook_mlp_out``), stacked in :class:`Layout` source order, on the model's device."""
    return _stack_sources(model, _source_cache(model, batch))


def _source_cache(model: HookedModel, batch: Batch, extra: Sequence[str] = ()) -> dict[str, Tensor]:
    """One forward pass caching the source nodes' outputs (and the hooks ``extra``), on the model's device."""
    names = ["blocks.0.hook_resid_pre", "blocks.*.attn.hook_result", "blocks.*.hook_mlp_out", *extra]
    return model.run_with_cache(batch.input_ids, names, attention_mask=batch.attention_mask, device=model.device)


def _stack_sources(model: HookedModel, cache: dict[str, Tensor]) -> Float[Tensor, "batch pos source d_model"]:
    import torch

    parts = [cache["blocks.0.hook_resid_pre"][:, :, None]]
    for layer in range(model.n_layers):
        parts += [
            cache[f"blocks.{layer}.attn.hook_result"],
            cache[f"blocks.{layer}.hook_mlp_out"][:, :, None],
        ]
    return torch.cat(parts, 2)


def _own_qkv(
    nodes: NodeModules, layer: int, xs: Float[Tensor, "batch pos head d_model"]
) -> tuple[Tensor, Tensor, Tensor]:
    """Each head's own query and each key / value head's own key / value, from the heads' input copies ``xs``.

    Returns ``(q [batch, pos, d_head, head], k, v [batch, pos, d_head, kv_head])``; a key / value
    head reads the mean of its query heads' copies (without grouped-query attention, each head's own).
    """
    h, g = nodes.n_heads, nodes.n_kv_heads
    q, k, v = nodes.qkv(layer, xs)
    if g != h:  # the group mean of a group of one is xs itself: k, v of the call above
        _, k, v = nodes.qkv(layer, xs.unflatten(-2, (g, h // g)).mean(-2))
    return q.diagonal(dim1=-3, dim2=-2), k.diagonal(dim1=-3, dim2=-2), v.diagonal(dim1=-3, dim2=-2)


def _head_pullback(
    nodes: NodeModules, layer: int, resid: Tensor, gq: Tensor, gk: Tensor, gv: Tensor
) -> Tensor:
    """``[batch, pos, head, d_model]``: d metric / d (each head's own copy of ``resid``)."""
    import torch

    h = nodes.n_heads
    with torch.enable_grad():
        xs = resid.detach().clone()[..., None, :].expand(*resid.shape[:-1], h, resid.shape[-1])
        xs = xs.clone().requires_grad_(True)
        q, k, v = _own_qkv(nodes, layer, xs)  # [b, p, d_head, head | kv_head]
        total = sum((a * b.transpose(-1, -2)).sum() for a, b in ((q, gq), (k, gk), (v, gv)))
        (grad,) = torch.autograd.grad(total, xs)
    return grad


def _mlp_pullback(nodes: NodeModules, layer: int, resid_mid: Tensor, g_out: Tensor) -> Tensor:
    import torch

    with torch.enable_grad():
        x = resid_mid.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(nodes.mlp(layer, x), x, grad_outputs=g_out)
    return grad


def input_gradients(
    model: HookedModel, nodes: NodeModules, batch: Batch, metric: Callable, edits: dict | None = None
) -> Float[Tensor, "batch pos target d_model"]:
    """``[batch, pos, target, d_model]``: d metric / d (each target node's own input copy), in
    :class:`Layout` target order (each head's q/k/v input, each MLP's input, the logits' input).

    One forward and backward pass (with ``edits`` as extra hooks), then per layer the gradients at
    ``hook_q / k / v`` and ``hook_mlp_out`` pulled back through the node's own computation.
    """
    import torch

    n = model.n_layers
    names = [
        f"blocks.{lay}.{h}" for lay in range(n) for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
    ]
    names += [f"blocks.{lay}.attn.hook_{c}" for lay in range(n) for c in "qkv"] + [
        f"blocks.{n - 1}.hook_resid_post"
    ]
    with model.hooks(edits or {}):
        acts, grads = model.gradients(
            batch.input_ids, metric, names, attention_mask=batch.attention_mask, return_activations=True, device=None
        )
    out = []
    for layer in range(n):
        b = f"blocks.{layer}"
        pre = acts[f"{b}.hook_resid_pre"]
        gq, gk, gv = (grads[f"{b}.attn.hook_{c}"] for c in "qkv")
        out.append(_head_pullback(nodes, layer, pre, gq, gk, gv))
        mid = pre + acts[f"{b}.hook_attn_out"]
        out.append(_mlp_pullback(nodes, layer, mid, grads[f"{b}.hook_mlp_out"])[:, :, None])
    out.append(grads[f"blocks.{n - 1}.hook_resid_post"][:, :, None])
    return torch.cat(out, 2)


def _interpolation(names: Sequence[str], clean: dict, corrupted: dict) -> Callable[[float], dict]:
    """``alpha -> hooks`` setting the input embeddings ``names`` to ``corrupted + alpha (clean - corrupted)``,
    from the two runs' caches of them."""
    a, b = clean, corrupted

    def hooks(alpha: float) -> dict:
        return {n: (lambda x, n=n: b[n] + alpha * (a[n] - b[n])) for n in names}

    return hooks


def edge_scores(
    model: HookedModel, clean: Batch, corrupted: Batch, metric: Callable, method: str, steps: int
) -> Float[Tensor, "source target"]:
    """The dense ``[source, target]`` score matrix (see the module doc); invalid pairs are 0."""
    import torch

    from deltalens.hooks.nodes import NodeModules

    nodes = NodeModules(model)
    embeds = [n for n in TOP_HOOKS if n in model.hook_names] if method != "eap" else []
    a, b = _source_cache(model, clean, embeds), _source_cache(model, corrupted, embeds)
    delta = _stack_sources(model, b) - _stack_sources(model, a)
    if method == "eap":
        grads = input_gradients(model, nodes, clean, metric)
    else:
        interp = _interpolation(embeds, a, b)
        grads = sum(
            input_gradients(model, nodes, clean, metric, interp(k / steps)) for k in range(1, steps + 1)
        )
        grads = grads / steps
    scores = torch.einsum("bpsd,bptd->st", delta.double(), grads.double())
    return scores.cpu() * Layout(model.n_layers, nodes.n_heads).valid()


def _frame(scores: Tensor, lay: Layout) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    t_idx, s_idx = lay.valid().T.nonzero(as_tuple=True)  # target-major: edges grouped by target
    src, tgt = np.array(lay.sources), np.array(lay.targets)
    return pd.DataFrame(
        {
            "source": src[s_idx.numpy()],
            "target": tgt[t_idx.numpy()],
            "score": scores[s_idx, t_idx].numpy().astype("float64"),
            "source_layer": np.array(lay.layers(lay.sources))[s_idx.numpy()],
            "target_layer": np.array(lay.layers(lay.targets))[t_idx.numpy()],
        }
    )


def edge_attribution(
    models: Any,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Tensor], Tensor],
    method: str = "eap",
    steps: int = 5,
    progress: bool = False,
) -> Circuit:
    """Score every edge of the graph (see the module doc) by EAP or EAP-IG.

    Args:
        models: a :class:`~deltalens.hooks.model.HookedModel`, a list or a dict of them (one
            ``stage`` per model; :func:`~deltalens.circuits.stages.as_models`).
        clean, corrupted: prompts or token ids of equal token shape, paired position by position.
        metric: ``metric(logits [batch, pos, vocab]) -> scalar`` (e.g. a summed logit difference).
        method: ``"eap"`` or ``"eap-ig"``.
        steps: EAP-IG interpolation steps (``1`` is EAP).

    Returns:
        A :class:`~deltalens.circuits.graph.Circuit` with every edge of the graph (a ``stage``
        column for several models); ``meta`` holds the sign convention, steps and provenance.

    Raises:
        ValueError: a bad ``method`` / ``steps``, inputs of different token shape, an
            unsupported architecture or models of different shapes — before any forward pass.
    """
    from tqdm.auto import tqdm

    from deltalens.circuits.graph import Circuit

    _check_args(method, steps, metric)
    ms = as_models(models)
    batches = {stage: _batches(m, clean, corrupted) for stage, m in ms.items()}
    lay = _common_layout(ms)
    frames = {
        stage: _frame(edge_scores(m, *batches[stage], metric, method, steps), lay)
        for stage, m in tqdm(ms.items(), desc="edge attribution", disable=not progress)
    }
    meta = {
        "sign": SIGN,
        "kv": "a key/value head reads the mean of its query heads' input copies",
        "provenance": {s: m.provenance.to_dict() for s, m in ms.items()},
        **({"steps": steps} if method == "eap-ig" else {}),
        **({"stage": next(iter(ms))} if is_single(models) else {"stages": list(ms)}),
    }
    name = getattr(metric, "__name__", type(metric).__name__)
    return Circuit(join_stages(models, frames), lay.n_layers, lay.n_heads, method, name, meta)


def _common_layout(ms: dict[str, HookedModel]) -> Layout:
    shapes = {s: (m.n_layers, m.n_heads) for s, m in ms.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"models differ in (n_layers, n_heads): {shapes}; a circuit compares one architecture"
        )
    return Layout(*next(iter(shapes.values())))


# ---------------------------------------------------------------- edge patching
class EdgePatch:
    """Hook functions for one forward pass in which the edges marked ``removed`` carry corrupted values.

    Node v's input becomes ``x_v - sum over removed u -> v of (a_u(current) - a_u(corrupted))``: heads
    get their q / k / v recomputed from their edited copies (keys / values from the mean over the
    group, as in the module doc), MLPs their output recomputed from theirs, and the last
    ``hook_resid_post`` is edited for the logits. Nodes with no removed input edge are left alone.

    Args:
        nodes: the model's :class:`~deltalens.hooks.nodes.NodeModules`.
        corrupted: :func:`node_outputs` of the corrupted run, ``[batch, pos, source, d_model]``.
        removed: ``[source, target]`` bool, True for the edges to patch (only graph edges count).
    """

    def __init__(self, nodes: NodeModules, n_layers: int, corrupted: Tensor, removed: Tensor) -> None:
        self.nodes, self.n_layers, self.corr = nodes, n_layers, corrupted
        self.lay = Layout(n_layers, nodes.n_heads)
        self.n_src = self.lay.n_src()
        self.removed = removed
        self.deltas: list[Tensor] = []
        self.pre: dict[int, Tensor] = {}
        self.mid: dict[int, Tensor] = {}
        self.qkv_: dict[int, tuple[Tensor, Tensor, Tensor] | None] = {}

    def hooks(self) -> dict[str, Callable]:
        """``{hook name: fn}`` for :meth:`HookedModel.hooks`."""
        from functools import partial

        out: dict[str, Callable] = {}
        for layer in range(self.n_layers):
            b = f"blocks.{layer}"
            out[f"{b}.hook_resid_pre"] = partial(self._pre, layer)
            for i, c in enumerate("qkv"):
                out[f"{b}.attn.hook_{c}"] = partial(self._qkv, layer, i)
            out[f"{b}.attn.hook_result"] = partial(self._result, layer)
            out[f"{b}.hook_attn_out"] = partial(self._attn_out, layer)
            out[f"{b}.hook_mlp_out"] = partial(self._mlp, layer)
        out[f"blocks.{self.n_layers - 1}.hook_resid_post"] = self._logits
        return out

    def _removed_into(self, t0: int, t1: int) -> Tensor | None:
        """``[batch, pos, t1 - t0, d_model]``: the removed sources' differences summed per target."""
        import torch

        r = self.removed[: self.n_src[t0], t0:t1]
        if not bool(r.any()):
            return None
        d = torch.cat(self.deltas, 2)
        return torch.einsum("bpsd,st->bptd", d, r.to(device=d.device, dtype=d.dtype))

    def _first_target(self, layer: int) -> int:
        return layer * (self.nodes.n_heads + 1)

    def _pre(self, layer: int, x: Tensor) -> None:
        self.pre[layer] = x
        if layer == 0:
            self.deltas.append((x - self.corr[:, :, 0])[:, :, None])

    def _qkv(self, layer: int, i: int, x: Tensor) -> Tensor | None:
        if layer not in self.qkv_:
            t0 = self._first_target(layer)
            c = self._removed_into(t0, t0 + self.nodes.n_heads)
            if c is None:
                self.qkv_[layer] = None
            else:
                q, k, v = (t.movedim(-1, -2) for t in _own_qkv(self.nodes, layer, self.pre[layer][:, :, None] - c))
                self.qkv_[layer] = (q, k, v)
        new = self.qkv_[layer]
        return None if new is None else new[i].to(x.dtype)

    def _result(self, layer: int, x: Tensor) -> None:
        s = 1 + self._first_target(layer)
        self.deltas.append(x - self.corr[:, :, s : s + self.nodes.n_heads])

    def _attn_out(self, layer: int, x: Tensor) -> None:
        self.mid[layer] = self.pre[layer] + x

    def _mlp(self, layer: int, x: Tensor) -> Tensor | None:
        t = self._first_target(layer) + self.nodes.n_heads
        c = self._removed_into(t, t + 1)
        new = x if c is None else self.nodes.mlp(layer, self.mid[layer] - c[:, :, 0]).to(x.dtype)
        self.deltas.append((new - self.corr[:, :, t + 1])[:, :, None])
        return None if c is None else new

    def _logits(self, x: Tensor) -> Tensor | None:
        t = len(self.n_src) - 1
        c = self._removed_into(t, t + 1)
        return None if c is None else x - c[:, :, 0].to(x.dtype)


def patched_metric(
    model: HookedModel, nodes: NodeModules, batch: Batch, corrupted: Tensor, removed: Tensor, metric: Callable
) -> float:
    """``metric`` of the clean ``batch`` with the ``removed`` edges patched (see :class:`EdgePatch`).

    Args:
        corrupted: :func:`node_outputs` of the corrupted run, ``[batch, pos, source, d_model]``.
        removed: ``[source, target]`` bool (:class:`Layout` order), True for the edges to patch.
    """
    patch = EdgePatch(nodes, model.n_layers, corrupted, removed)
    with model.hooks(patch.hooks()):
        logits = model.logits(batch.input_ids, attention_mask=batch.attention_mask)
    return float(metric(logits))


def _metric_of(model: HookedModel, batch: Batch, metric: Callable) -> float:
    return float(metric(model.logits(batch.input_ids, attention_mask=batch.attention_mask)))


def _edge_index(c: Circuit, lay: Layout) -> tuple[list[int], list[int]]:
    """Source and target indices of ``c``'s edges, ordered by ``|score|`` descending."""
    src = {n: i for i, n in enumerate(lay.sources)}
    tgt = {n: i for i, n in enumerate(lay.targets)}
    n_src = lay.n_src()
    df = c.top(len(c)).to_frame()
    s_idx, t_idx = [], []
    for s, t in zip(df["source"], df["target"]):
        if s not in src or t not in tgt or src[s] >= n_src[tgt[t]]:
            raise ValueError(
                f"edge {s} -> {t} is not an edge of a {lay.n_layers}-layer, {lay.n_heads}-head model"
            )
        s_idx.append(src[s])
        t_idx.append(tgt[t])
    return s_idx, t_idx


def default_sizes(n: int) -> list[int]:
    """``0, 1, 2, 5, 10, 20, 50, ...`` below ``n``, then ``n``."""
    out, base = [0], 1
    while base < n:
        out += [x for x in (base, 2 * base, 5 * base) if x < n]
        base *= 10
    return [*out, n] if n > 0 else out


def _faithfulness_one(
    model: HookedModel,
    c: Circuit,
    clean: Batch,
    corrupted: Batch,
    metric: Callable,
    sizes: list[int],
    progress: bool,
) -> pd.DataFrame:
    import pandas as pd
    from tqdm.auto import tqdm

    from deltalens.hooks.nodes import NodeModules

    nodes, lay = NodeModules(model), Layout(model.n_layers, model.n_heads)
    s_idx, t_idx = _edge_index(c, lay)
    corr = node_outputs(model, corrupted)
    m_clean, m_corr = _metric_of(model, clean, metric), _metric_of(model, corrupted, metric)
    valid = lay.valid()
    rows = []
    for n in tqdm(sizes, desc="faithfulness", disable=not progress):
        removed = valid.clone()
        removed[s_idx[:n], t_idx[:n]] = False
        value = patched_metric(model, nodes, clean, corr, removed, metric)
        frac = (value - m_corr) / (m_clean - m_corr) if m_clean != m_corr else float("nan")
        rows.append(
            {
                "n_edges": n,
                "metric": value,
                "fraction": frac,
                "metric_clean": m_clean,
                "metric_corrupted": m_corr,
            }
        )
    return pd.DataFrame(rows)


def faithfulness(
    model: Any,
    circuit: Circuit,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Tensor], Tensor],
    sizes: Sequence[int] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The metric with only a circuit's top-n edges kept, for a sweep of n (see the module doc).

    Every edge of the full graph outside the kept ones carries its corrupted value.
    ``fraction = (metric - metric_corrupted) / (metric_clean - metric_corrupted)``: the full graph
    gives the clean metric (1.0), the empty graph the corrupted run's metric (0.0).

    Args:
        model: a model, or a list / dict of them matching ``circuit``'s stages.
        circuit: a :class:`~deltalens.circuits.graph.Circuit` (e.g. from :func:`edge_attribution`).
        clean, corrupted, metric: as for :func:`edge_attribution`.
        sizes: the numbers of top edges to keep (default ``0, 1, 2, 5, 10, ...`` and all of them).

    Returns:
        Columns ``n_edges``, ``metric``, ``fraction``, ``metric_clean``, ``metric_corrupted`` (and a
        leading ``stage`` for several models).

    Raises:
        ValueError: bad ``sizes``, inputs of different token shape, a circuit of another shape or
            whose stages do not match the models — before any forward pass.
    """
    from deltalens.circuits.graph import Circuit

    if not isinstance(circuit, Circuit):
        raise TypeError(
            f"circuit is a {type(circuit).__name__}, not a Circuit (make one with edge_attribution)"
        )
    _check_args("eap", 1, metric)
    ms = as_models(model)
    per_stage = {stage: _stage_circuit(circuit, stage, ms) for stage in ms}
    sizes_ = {stage: _check_sizes(sizes, len(c)) for stage, c in per_stage.items()}
    for stage, m in ms.items():
        if (circuit.n_layers, circuit.n_heads) != (m.n_layers, m.n_heads):
            raise ValueError(
                f"circuit is for {circuit.n_layers} layers x {circuit.n_heads} heads; model {stage!r} differs"
            )
    batches = {stage: _batches(m, clean, corrupted) for stage, m in ms.items()}
    frames = {
        stage: _faithfulness_one(m, per_stage[stage], *batches[stage], metric, sizes_[stage], progress)
        for stage, m in ms.items()
    }
    return join_stages(model, frames)


def _stage_circuit(circuit: Circuit, stage: str, ms: dict) -> Circuit:
    if not circuit.stages:
        return circuit
    if stage in circuit.stages:
        return circuit.stage(stage)
    raise ValueError(
        f"circuit holds stages {circuit.stages} but a model is labelled {stage!r}; pass circuit.stage(name) "
        f"or a dict of models keyed by those stages (got {list(ms)})"
    )


def _check_sizes(sizes: Sequence[int] | None, n: int) -> list[int]:
    if sizes is None:
        return default_sizes(n)
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= n]
    if bad or isinstance(sizes, str):
        raise ValueError(f"sizes={list(sizes)!r}: expected ints from 0 to the circuit's {n} edges")
    return list(sizes)
