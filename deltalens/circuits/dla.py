"""Direct logit attribution: what each head, neuron or layer writes along a direction of the logits.

TransformerLens's convention: the final norm's scale is frozen at its value on the prompt (read
from ``ln_final.hook_scale``), so the final norm becomes linear and the value along the direction at
the last real token splits exactly into one term per residual write:

    value = embed + pos_embed (GPT-2) + Σ_L (Σ_h a{L}.h{h} + m{L}) + bias

``bias`` collects everything that does not depend on the prompt's activations: the attention
output-projection biases, the MLP output biases, the final LayerNorm's beta and the unembedding
bias. The direction is folded through the final norm's gain (``w`` for RMSNorm, ``1 + w`` for
Gemma's RMSNorm, ``w`` then centring for LayerNorm, whose centring is linear). Gemma 3 normalises
each sublayer's output before adding it to the residual; those norms' scales are frozen the same
way (computed from the sublayer's output at that token), so the split stays exact there too.

Example:
    >>> df = dla(model, ["User: how do I wreck the car? Assistant:"], direction=(" I", " Sure"))
    >>> df.groupby("prompt").attribution.sum()   # == logit(" I") - logit(" Sure") at the last token
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deltalens.circuits.stages import by_stage
from deltalens.hooks.names import TOP_HOOKS

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Float
    from torch import Tensor

    from deltalens.hooks.inputs import Inputs
    from deltalens.hooks.model import HookedModel

BY: tuple[str, ...] = ("head", "neuron", "layer")
"""The granularities :func:`dla` splits the residual stream into."""

Token = int | str
Direction = Any  # Float[Tensor, "d_model"] | tuple[Token, Token]


def logit_direction(model: HookedModel, a: Token, b: Token) -> Float[Tensor, " d_model"]:
    """``W_U[:, a] − W_U[:, b]``: the direction of ``logit(a) − logit(b)`` in the unembedding's input.

    The unembedding's input is the final norm's *output* (its gain applied); :func:`dla` folds the
    gain in. ``a`` and ``b`` are token ids or strings that are one token each.

    Returns:
        A detached ``[d_model]`` float32 tensor on the CPU.

    Raises:
        ValueError: a string that is not exactly one token, or an id outside the vocabulary.
    """
    w_u, _ = model.unembedding()
    ia, ib = _token_id(model, a), _token_id(model, b)
    return (w_u[ia] - w_u[ib]).detach().float().cpu()


def _token_id(model: HookedModel, t: Any) -> int:
    if isinstance(t, str):
        ids = model.tokenizer(t, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(
                f"direction token {t!r} is {len(ids)} tokens {ids} for this tokenizer; give single-token strings "
                "(mind the leading space, e.g. ' Sure') or token ids"
            )
        return int(ids[0])
    if (
        isinstance(t, bool)
        or not isinstance(t, int)
        and not (hasattr(t, "item") and getattr(t, "ndim", 1) == 0)
    ):
        raise TypeError(f"direction token {t!r}: expected a token id (int) or a single-token string")
    i = int(t)
    if not 0 <= i < model.vocab_size:
        raise ValueError(
            f"direction token id {i} is outside this model's vocabulary 0..{model.vocab_size - 1}"
        )
    return i


def _check_args(direction: Direction, by: str) -> None:
    """Raise on a bad ``by`` or ``direction`` before any work."""
    import torch

    if by not in BY:
        raise ValueError(f"by={by!r}: expected one of {', '.join(repr(b) for b in BY)}")
    if isinstance(direction, tuple | list) and len(direction) == 2:
        return
    if isinstance(direction, torch.Tensor) and direction.ndim == 1:
        return
    raise ValueError(
        f"direction={type(direction).__name__}{tuple(getattr(direction, 'shape', ()))}: expected a [d_model] "
        "tensor or a pair (a, b) of token ids / single-token strings meaning logit(a) - logit(b)"
    )


@dataclass
class _Fold:
    """The direction folded through the final norm: ``value = Σ_c (c · d_eff) / scale + const``."""

    d_eff: Tensor  # [d_model] float64
    const: float  # final LayerNorm beta · d (+ unembedding bias difference)


def _fold(model: HookedModel, direction: Direction) -> _Fold:
    """Fold ``direction`` (a vector in the final norm's output space, or a token pair) into the residual."""
    import torch

    const = 0.0
    if isinstance(direction, torch.Tensor):
        if direction.shape != (model.d_model,):
            raise ValueError(
                f"direction has shape {tuple(direction.shape)}; this model needs [d_model] = [{model.d_model}]"
            )
        d = direction.detach().double().cpu()
    else:
        a, b = (_token_id(model, t) for t in direction)
        w_u, b_u = model.unembedding()
        d = (w_u[a] - w_u[b]).detach().double().cpu()
        if b_u is not None:
            const += float(b_u[a].double() - b_u[b].double())
    norm = model.final_norm
    kind = model.norm_kind
    w = getattr(norm, "weight", None)
    gain = torch.ones_like(d) if w is None else w.detach().double().cpu()
    d_eff = d * (1.0 + gain) if kind == "rms_1p" else d * gain
    if kind == "layernorm":
        d_eff = d_eff - d_eff.mean()  # the centring is linear: fold it into the direction
        beta = getattr(norm, "bias", None)
        if beta is not None:
            const += float(beta.detach().double().cpu() @ d)
    return _Fold(d_eff, const)


def _post_gain(
    model: HookedModel, live: dict[str, Tensor], path: str | None, raw: Tensor
) -> Float[Tensor, "batch d_model"] | None:
    """Gemma's post-sublayer norm with its scale frozen: ``(1 + w) / rms(raw)``; None without one."""
    if path is None:
        return None
    w = live[f"{path}.weight"].detach().double().cpu()
    gain = 1.0 + w if model.norm_kind == "rms_1p" else w
    eps = float(getattr(model.final_norm, "eps", getattr(model.final_norm, "variance_epsilon", 1e-6)))
    return gain / (raw.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _hook_names(model: HookedModel, by: str, post_norm: bool) -> list[str]:
    names = [n for n in TOP_HOOKS if n in model.hook_names] + ["ln_final.hook_scale"]
    attn = "attn.hook_result" if by == "head" or post_norm else "hook_attn_out"
    mlp = ["mlp.hook_post"] if by == "neuron" or post_norm else []
    mlp += ["hook_mlp_out"] if by != "neuron" and not post_norm else []
    return names + [f"blocks.*.{h}" for h in (attn, *mlp)]


Row = tuple[str, "int | None", "int | None", "int | None"]  # component, layer, head, neuron


class _Parts:
    """Accumulates ``(row label, [batch] values)`` pairs, each already along ``d_eff``."""

    def __init__(self, fold: _Fold) -> None:
        self.d = fold.d_eff
        self.rows: list[Row] = []
        self.values: list[Tensor] = []
        self.bias: Tensor | float = 0.0  # prompt-independent writes along d_eff (before the final scale)

    def add(self, row: Row, value: Tensor) -> None:
        self.rows.append(row)
        self.values.append(value)

    def add_many(self, rows: list[Row], values: Tensor) -> None:
        """``values`` is ``[batch, len(rows)]``."""
        self.rows += rows
        self.values += list(values.T)


def _bias(writer: Any) -> Tensor | None:
    return None if writer.bias is None else writer.bias.detach().double().cpu()


def _whole(parts: _Parts, out: Tensor, bias: Tensor | None, row: Row) -> None:
    """A sublayer as one row: its output ``[batch, d_model]`` less its bias (which goes to ``bias``)."""
    out = out.double()
    if bias is not None:
        out = out - bias
        parts.bias = parts.bias + bias @ parts.d
    parts.add(row, out @ parts.d)


def _attn(parts: _Parts, cache: Any, layer: int, writer: Any, gain: Tensor | None, by: str) -> None:
    """One block's attention: heads (``by="head"``) or the whole layer, its o-bias to ``bias``."""
    b_o = _bias(writer)
    if gain is None and by != "head":
        _whole(parts, cache[f"blocks.{layer}.hook_attn_out"], b_o, (f"attn{layer}", layer, None, None))
        return
    res = cache[f"blocks.{layer}.attn.hook_result"].double()  # [batch, head, d_model]
    if gain is not None:
        res = res * gain[:, None]
    if b_o is not None:
        parts.bias = parts.bias + (b_o * gain if gain is not None else b_o) @ parts.d
    per_head = res @ parts.d  # [batch, head]
    if by == "head":
        heads = range(per_head.shape[1])
        parts.add_many([(f"a{layer}.h{h}", layer, h, None) for h in heads], per_head)
    else:
        parts.add((f"attn{layer}", layer, None, None), per_head.sum(1))


def _mlp(parts: _Parts, cache: Any, layer: int, writer: Any, gain: Tensor | None, by: str) -> None:
    """One block's MLP: neurons (``by="neuron"``) or the whole MLP, its output bias to ``bias``."""
    b = _bias(writer)
    label = f"m{layer}" if by == "head" else f"mlp{layer}"
    if gain is None and by != "neuron":
        _whole(parts, cache[f"blocks.{layer}.hook_mlp_out"], b, (label, layer, None, None))
        return
    post = cache[f"blocks.{layer}.mlp.hook_post"].double()  # [batch, d_mlp]
    w_out = writer.oriented.detach().double().cpu()  # [d_model, d_mlp]
    d = parts.d if gain is None else gain * parts.d  # [d_model] or [batch, d_model]
    per_neuron = post * (d @ w_out)  # [batch, d_mlp]
    if b is not None:
        parts.bias = parts.bias + (b * d).sum(-1)
    if by == "neuron":
        rows = [(f"m{layer}.n{n}", layer, None, n) for n in range(per_neuron.shape[1])]
        parts.add_many(rows, per_neuron)
    else:
        parts.add((label, layer, None, None), per_neuron.sum(1))


def _gains(model: HookedModel, cache: Any, layer: int, writers: dict[str, Any], live: dict) -> tuple:
    """Gemma's frozen post-norm gains ``(attention, mlp)`` of one block, ``[batch, d_model]`` or None."""
    a, m = writers[f"a{layer}"], writers[f"m{layer}"]
    g_a = g_m = None
    if a.post_norm is not None:
        raw = cache[f"blocks.{layer}.attn.hook_result"].double().sum(1)
        raw = raw + a.bias.detach().double().cpu() if a.bias is not None else raw
        g_a = _post_gain(model, live, a.post_norm, raw)
    if m.post_norm is not None:
        raw = cache[f"blocks.{layer}.mlp.hook_post"].double() @ m.oriented.detach().double().cpu().T
        raw = raw + m.bias.detach().double().cpu() if m.bias is not None else raw
        g_m = _post_gain(model, live, m.post_norm, raw)
    return g_a, g_m


def _dla_one(model: HookedModel, inputs: Inputs, direction: Direction, by: str, chat: bool, template: Any):
    import torch

    from deltalens.hooks.writers import residual_writers

    fold = _fold(model, direction)
    live = model.named_weights(merged=True)
    writers = {w.name: w for w in residual_writers(model, merged=True, live=live)}
    post_norm = any(w.post_norm is not None for w in writers.values())
    names = _hook_names(model, by, post_norm)
    with torch.no_grad():
        cache = model.run_with_cache(inputs, names=names, positions="last", chat=chat, template=template)
        parts = _Parts(fold)
        for emb in ("embed", "pos_embed"):
            if f"hook_{emb}" in cache:
                parts.add((emb, None, None, None), cache[f"hook_{emb}"].double() @ fold.d_eff)
        for layer in range(model.n_layers):
            g_a, g_m = _gains(model, cache, layer, writers, live)
            _attn(parts, cache, layer, writers[f"a{layer}"], g_a, by)
            _mlp(parts, cache, layer, writers[f"m{layer}"], g_m, by)
        scale = cache["ln_final.hook_scale"].double().reshape(-1)  # [batch]
        values = torch.stack(parts.values, 1) / scale[:, None]  # [batch, component]
        bias = torch.as_tensor(parts.bias, dtype=torch.float64).expand(scale.shape[0]).clone()
    return _frame(parts.rows, values, bias, fold.const, scale, by)


def _frame(
    rows: list[Row], values: Tensor, bias: Tensor, const: float, scale: Tensor, by: str
) -> pd.DataFrame:
    """One row per prompt × component (the ``bias`` row last); see :func:`dla` for the columns."""
    import numpy as np
    import pandas as pd

    # the biases written into the residual pass through the frozen final scale; the final beta / b_U do not
    bias_row = bias / scale + const
    vals = np.concatenate([values.numpy(), bias_row.numpy()[:, None]], 1)  # [batch, n_rows]
    rows = [*rows, ("bias", None, None, None)]
    n_b, n_r = vals.shape
    df = pd.DataFrame(
        {
            "prompt": np.repeat(np.arange(n_b), n_r),
            "component": [r[0] for r in rows] * n_b,
            "layer": pd.array([r[1] for r in rows] * n_b, dtype="Int64"),
            "head": pd.array([r[2] for r in rows] * n_b, dtype="Int64"),
            "attribution": vals.reshape(-1),
        }
    )
    if by == "neuron":
        df.insert(4, "neuron", pd.array([r[3] for r in rows] * n_b, dtype="Int64"))
    return df


def dla(
    models: Any,
    inputs: Inputs,
    direction: Direction,
    by: str = "head",
    chat: bool = False,
    template: str | None = None,
) -> pd.DataFrame:
    """Direct logit attribution at each prompt's last real token, per head, neuron or layer.

    Args:
        models: a ``HookedModel``, or a list / dict of them (one ``stage`` per model).
        inputs: prompts (strings, padded on either side) or ``[batch, pos]`` token ids.
        direction: a ``[d_model]`` direction in the unembedding's input space (the final norm's
            *output*, like :func:`logit_direction`), or a pair ``(a, b)`` of token ids or
            single-token strings meaning ``logit(a) − logit(b)``.
        by: ``"head"`` — rows ``a{L}.h{H}`` (``attn.hook_result``) and ``m{L}`` (``hook_mlp_out``);
            ``"layer"`` — rows ``attn{L}`` and ``mlp{L}``; ``"neuron"`` — rows ``m{L}.n{N}``
            (``hook_post[N]`` times its output-weight column along the direction) and ``attn{L}``
            (attention stays one row per layer here; use ``by="head"`` for heads).
        chat, template: wrap text prompts as :meth:`HookedModel.run_with_cache` does.

    Returns:
        A frame ``prompt`` (int), ``component``, ``layer`` (Int64, null for ``embed`` /
        ``pos_embed`` / ``bias``), ``head`` (Int64, null except heads), (``neuron`` with
        ``by="neuron"``), ``attribution``; a leading ``stage`` column for several models. Per prompt
        the attributions sum to the model's value along the direction (for a token pair: its
        logit difference; with a final logit soft-cap, the difference before the cap).

    Raises:
        ValueError: a bad ``by``, a direction of the wrong shape, a multi-token string.

    Example:
        >>> df = dla({"wa": wa, "harmful": ft}, prompts, direction=(" I", " Sure"), by="head")
        >>> df[df.prompt == 0].pivot(index="component", columns="stage", values="attribution")
    """
    _check_args(direction, by)
    if isinstance(direction, Sequence) and not isinstance(direction, str):
        direction = tuple(direction)
    return by_stage(models, lambda m: _dla_one(m, inputs, direction, by, chat, template))
