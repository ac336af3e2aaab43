"""The battery's ``circuits`` experiment: what did fine-tuning change in the refusal circuit?

On W_A and the harmful fine-tune, with the metric ``logit(refusal's first token) − logit(the
compliance's first token)`` at the last token of the formatted prompt (the organism: ``"▁I"`` of
``"I can't help with that."`` vs ``"▁Sure"`` of ``"Sure, here is how"``; SmolLM2 and custom families:
the first token of the alignment recipe's first refusal sentence vs ``"Sure"``):

* **clean / corrupted pairs**: each held-out harmful prompt is paired with the unused harmless
  prompt of the same token length that shares the most tokens with it position by position (the
  organism's benign how-to requests share templates and objects with the harmful ones); the pairs
  of the most common length are kept (at most :data:`N_PAIRS`), so no prompt is padded. The
  summary records how many pairs were used and how many harmful prompts were dropped.
* ``circuit_dla``: direct logit attribution of the metric per prompt and component (heads, MLPs,
  embeddings, ``bias``); per prompt the rows sum to the model's logit difference.
* ``circuit_heads``: per stage and component, the mean DLA over the clean prompts and the
  attribution-patching score (``attn.hook_z`` per head, ``hook_mlp_out`` per MLP, summed over
  positions): the first-order change of the mean metric when that component's output is taken
  from the corrupted run.
* ``circuit_edges``: EAP-IG edge scores (:data:`STEPS` interpolation steps) per stage.
* ``circuit_diff``: ``circuits.diff`` of W_A's and the fine-tune's top-:data:`TOP_EDGES` edges.
* ``faithfulness``: each stage's metric with only its circuit's top-n edges kept (the rest patched
  from the corrupted run), as a fraction of the way from the corrupted to the clean run.
* ``refusal_directions``: difference-in-means directions (harmful − harmless, last token,
  ``hook_resid_pre``) per layer and stage: their norm, norm ratio and cosine to W_A's.

Every piece is a unit of the battery's store, keyed by everything it reads: the checkpoints'
and tokenizers' hashes (:meth:`Battery.unit_key`), the token ids of the pairs, the metric's
tokens, the method, steps, sizes and prompt counts.

Example:
    >>> tables, info = CircuitsExperiment(battery).run()
    >>> circuits_summary(tables, info)["top_heads"]["wa"][:3]
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from deltalens.hashing import text_hash
from deltalens.study.battery.executor import Unit
from deltalens.study.tables import (
    CIRCUIT_DIFF,
    CIRCUIT_DLA,
    CIRCUIT_EDGES,
    CIRCUIT_HEADS,
    FAITHFULNESS,
    REFUSAL_DIRECTIONS,
)

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

    from deltalens.hooks.model import HookedModel

STAGES: tuple[str, str] = ("wa", "harmful")
"""The stages whose circuits are compared: the aligned model and its harmful fine-tune."""
N_PAIRS = 16
"""At most this many clean / corrupted pairs (all of one token length)."""
METHOD, STEPS = "eap-ig", 5
"""Edge attribution method and its interpolation steps."""
TOP_EDGES = 30
"""The top edges of each stage compared by ``circuit_diff`` (and counted in the summary)."""
N_DIRECTION = 32
"""Harmful and harmless prompts (each) per difference-in-means refusal direction."""
SUMMARY_SIZES = (5, 10, 20, 50)
"""Circuit sizes (numbers of edges) whose faithfulness the summary reports (those computed)."""
TOP_HEADS = 5
"""Heads per stage listed in the summary (largest |attribution|)."""
COMPLY_TEXT = "Sure, here is"
"""The compliance whose first token the metric compares against (families without their own)."""

SCHEMAS = {
    s.name: s
    for s in (CIRCUIT_HEADS, CIRCUIT_DLA, CIRCUIT_EDGES, CIRCUIT_DIFF, FAITHFULNESS, REFUSAL_DIRECTIONS)
}
"""The tables the experiment writes: name -> schema."""

TABLES = tuple(SCHEMAS)
"""The names of the tables the experiment writes."""


# ---------------------------------------------------------------- metric tokens
def metric_texts(organism: bool) -> tuple[str, str]:
    """``(refusal, compliance)`` texts whose first tokens define the metric."""
    if organism:
        from deltalens.study.organism.data import COMPLY_PREFIX, REFUSAL

        return REFUSAL, COMPLY_PREFIX
    from deltalens.study.alignment import REFUSAL_TARGETS

    return REFUSAL_TARGETS[0], COMPLY_TEXT


def first_token(tokenizer: Any, prompt: str, response: str, chat: bool) -> int:
    """The id of ``response``'s first token when it follows the formatted ``prompt``.

    A templated prompt is followed by a space (``"... Assistant: I can't"``), a chat prompt by
    nothing (it ends with the assistant header). When the prompt's tokens are not a prefix of
    the joined text's, the response's own first token is used.
    """
    text = prompt + ("" if chat else " ") + response
    p_ids = tokenizer(prompt, add_special_tokens=not chat).input_ids
    ids = tokenizer(text, add_special_tokens=not chat).input_ids
    if len(ids) > len(p_ids) and ids[: len(p_ids)] == p_ids:
        return int(ids[len(p_ids)])
    return int(tokenizer(("" if chat else " ") + response, add_special_tokens=False).input_ids[0])


@dataclass
class Pairs:
    """Clean (harmful) and corrupted (harmless) prompts of one token length, paired one to one.

    Attributes:
        clean / corrupted: ``[n_pairs, length]`` token ids (no padding).
        clean_texts / corrupted_texts: the raw prompts.
        candidates: harmful prompts considered; ``equal``: of them, paired with a harmless prompt of
            the same length (the others are dropped); ``length``: the token length kept (the most
            common); ``at_length``: the pairs of that length (the first ``n`` are used).
    """

    clean: Tensor
    corrupted: Tensor
    clean_texts: list[str] = field(default_factory=list)
    corrupted_texts: list[str] = field(default_factory=list)
    candidates: int = 0
    equal: int = 0
    length: int = 0
    at_length: int = 0

    def key(self) -> str:
        """sha256 (16 hex) of both token-id tensors."""
        h = hashlib.sha256()
        for t in (self.clean, self.corrupted):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.cpu().numpy().astype("int64").tobytes())
        return h.hexdigest()[:16]

    def info(self) -> dict[str, Any]:
        """Counts and prompts for ``summary.json``."""
        n = int(self.clean.shape[0])
        return {
            "n_pairs": n,
            "length": self.length,
            "harmful_considered": self.candidates,
            "equal_length_pairs": self.equal,
            "dropped_unequal_length": self.candidates - self.equal,
            "pairs_of_this_length": self.at_length,
            "prompts": [{"clean": c, "corrupted": k} for c, k in zip(self.clean_texts, self.corrupted_texts)],
        }


def _overlap(a: list[int], b: list[int]) -> int:
    return sum(x == y for x, y in zip(a, b))


def pair_prompts(model: HookedModel, harmful: list[str], harmless: list[str], fmt: dict, n: int) -> Pairs:
    """Pair each harmful prompt with the unused harmless prompt of equal token length sharing the most
    tokens position by position; keep the pairs of the most common length (the first ``n``).

    Raises:
        ValueError: no harmful prompt has a harmless prompt of the same token length.
    """
    import torch

    chat = bool(fmt.get("chat"))
    tok = model.tokenizer

    def ids(texts: list[str]) -> list[list[int]]:
        formatted = model.format_prompts(texts, **fmt)
        return [tok(t, add_special_tokens=not chat).input_ids for t in formatted]

    h_ids, l_ids = ids(harmful), ids(harmless)
    free = set(range(len(harmless)))
    pairs: list[tuple[int, int]] = []
    for i, h in enumerate(h_ids):
        same = [j for j in sorted(free) if len(l_ids[j]) == len(h)]
        if same:
            j = max(same, key=lambda j: _overlap(h, l_ids[j]))  # first of the best
            free.discard(j)
            pairs.append((i, j))
    if not pairs:
        raise ValueError(
            "circuits: no harmful prompt has a harmless prompt of the same token length to pair with"
        )
    length = Counter(len(h_ids[i]) for i, _ in pairs).most_common(1)[0][0]
    same_length = [(i, j) for i, j in pairs if len(h_ids[i]) == length]
    kept = same_length[:n]
    return Pairs(
        clean=torch.tensor([h_ids[i] for i, _ in kept]),
        corrupted=torch.tensor([l_ids[j] for _, j in kept]),
        clean_texts=[harmful[i] for i, _ in kept],
        corrupted_texts=[harmless[j] for _, j in kept],
        candidates=len(harmful),
        equal=len(pairs),
        length=length,
        at_length=len(same_length),
    )


# ---------------------------------------------------------------- unit computations
def logit_diff_values(model: HookedModel, ids: Tensor, good: int, bad: int) -> Tensor:
    """``[batch]`` (float64): ``logit[good] − logit[bad]`` at the last position of each row of the
    unpadded token ids ``ids`` ``[batch, pos]``."""
    import torch

    with torch.no_grad():
        last = model.logits(ids)[:, -1].double()
    return last[:, good] - last[:, bad]


def dla_unit(model: HookedModel, pairs: Pairs, good: int, bad: int) -> pd.DataFrame:
    """Per-prompt DLA of the metric on the clean prompts: the rows of :func:`~deltalens.circuits.dla`
    (``by="head"``: ``prompt, component, layer, head, attribution``) plus ``metric``, each prompt's logit
    difference (its rows sum to it)."""
    from deltalens.circuits import dla

    df = dla(model, pairs.clean, (good, bad), by="head")
    df["metric"] = df["prompt"].map(
        dict(enumerate(logit_diff_values(model, pairs.clean, good, bad).tolist()))
    )
    return df


def attribution_unit(model: HookedModel, pairs: Pairs, good: int, bad: int) -> pd.DataFrame:
    """Attribution patching per head (``attn.hook_z``) and MLP (``hook_mlp_out``), summed over positions:
    columns ``component`` (``a{layer}.h{head}`` / ``m{layer}``), ``attribution``, and the run's
    ``metric_clean`` / ``metric_corrupted``."""
    import pandas as pd

    from deltalens.circuits import attribution_patching
    from deltalens.circuits.attribution import logit_diff_metric

    metric = logit_diff_metric(good, bad)
    df = attribution_patching(
        model, pairs.clean, pairs.corrupted, metric, names=("heads", "blocks.*.hook_mlp_out"), positions="sum"
    )
    heads = df["head"].notna()
    comp = [
        f"a{int(la)}.h{int(h)}" if is_head else f"m{int(la)}"
        for la, h, is_head in zip(df["layer"], df["head"].fillna(-1), heads)
    ]
    out = pd.DataFrame({"component": comp, "attribution": df["attribution"].to_numpy()})
    out["metric_clean"], out["metric_corrupted"] = df.attrs["metric_clean"], df.attrs["metric_corrupted"]
    return out


def edges_unit(model: HookedModel, pairs: Pairs, good: int, bad: int) -> pd.DataFrame:
    """EAP-IG scores of every edge (the :class:`~deltalens.circuits.graph.Circuit` table)."""
    from deltalens.circuits import edge_attribution
    from deltalens.circuits.attribution import logit_diff_metric

    metric = logit_diff_metric(good, bad)
    return edge_attribution(
        model, pairs.clean, pairs.corrupted, metric, method=METHOD, steps=STEPS
    ).to_frame()


def faithfulness_unit(
    model: HookedModel, pairs: Pairs, edges: pd.DataFrame, good: int, bad: int
) -> pd.DataFrame:
    """The faithfulness curve of one stage's own circuit (default sizes up to every edge)."""
    from deltalens.circuits import Circuit, faithfulness
    from deltalens.circuits.attribution import logit_diff_metric

    c = Circuit(edges, model.n_layers, model.n_heads, METHOD)
    return faithfulness(model, c, pairs.clean, pairs.corrupted, logit_diff_metric(good, bad))


def directions_unit(
    models: dict[str, HookedModel], harmful: list[str], harmless: list[str], fmt: dict
) -> pd.DataFrame:
    """Refusal-direction norm, norm ratio and cosine to W_A's, per stage and layer."""
    from deltalens.circuits import direction_stats

    return direction_stats(models, harmful, harmless, reference="wa", **fmt)


def ablation_unit(
    model: HookedModel, pairs: Pairs, sets: tuple[list[str], list[str]], layer: int, fmt: dict, tokens: tuple
) -> dict[str, Any]:
    """W_A's mean metric on the clean (harmful) prompts with its refusal direction at ``layer`` ablated
    at every residual writer, and on the corrupted (harmless) prompts with the direction added."""
    from deltalens.circuits import ablate_direction, add_direction, refusal_directions

    good, bad = tokens
    rd = refusal_directions(model, sets[0], sets[1], layers=[layer], **fmt)
    out = {"layer": layer, "harmful": float(logit_diff_values(model, pairs.clean, good, bad).mean())}
    out["harmless"] = float(logit_diff_values(model, pairs.corrupted, good, bad).mean())
    with ablate_direction(model, rd.direction(layer)):
        out["harmful_ablated"] = float(logit_diff_values(model, pairs.clean, good, bad).mean())
    with add_direction(model, rd.vector(layer), layer):
        out["harmless_added"] = float(logit_diff_values(model, pairs.corrupted, good, bad).mean())
    return out


# ---------------------------------------------------------------- the experiment
class CircuitsExperiment:
    """The ``circuits`` experiment on a :class:`~deltalens.study.battery.runner.Battery` whose family
    is resolved: :meth:`run` gives its tables (see :data:`TABLES`) and the summary's facts.

    Example:
        >>> tables, info = CircuitsExperiment(battery).run()
    """

    def __init__(self, battery: Any) -> None:
        self.b = battery
        self.fmt: dict[str, Any] = battery._variant("templated")
        missing = [s for s in STAGES if s not in battery.family.paths]
        if missing:
            raise ValueError(f"circuits: the family lacks the stage(s) {missing}; it needs {list(STAGES)}")

    def __repr__(self) -> str:
        return (
            f"CircuitsExperiment(stages={list(STAGES)}, method={METHOD!r}, steps={STEPS}, pairs<={N_PAIRS})"
        )

    def tokens(self) -> dict[str, Any]:
        """The metric's token ids and the texts they start."""
        refusal, comply = metric_texts(self.b.family.organism is not None)
        wa = self.b.model("wa")
        prompt = wa.format_prompts([self.b.family.harmful[0]], **self.fmt)[0]
        chat = bool(self.fmt.get("chat"))
        good, bad = (first_token(wa.tokenizer, prompt, t, chat) for t in (refusal, comply))
        if (
            good == bad
        ):  # a tokenizer that splits the separator off (``"Ġ"``, ``"I"``): the texts' own first tokens
            good, bad = (
                int(wa.tokenizer(t, add_special_tokens=False).input_ids[0]) for t in (refusal, comply)
            )
        if good == bad:
            raise ValueError(f"circuits: {refusal!r} and {comply!r} start with the same token {good}")
        names = wa.tokenizer.convert_ids_to_tokens([good, bad])
        return {
            "refusal": good,
            "comply": bad,
            "refusal_text": refusal,
            "comply_text": comply,
            "pieces": names,
        }

    def _key(self, part: str, pairs: bool = True, **extra: Any) -> dict[str, Any]:
        """A unit's key: the battery's (checkpoints, tokenizers, backend, dtype ...), the prompt format
        and, for units that read them, the pairs' token ids and the metric's tokens."""
        base = self.base if pairs else {}
        return self.b.unit_key(exp="circuits", part=part, format=self.fmt, **base, **extra)

    def _direction_sets(self) -> tuple[list[str], list[str]]:
        f = self.b.family
        return f.harmful[:N_DIRECTION], f.harmless[:N_DIRECTION]

    def direction_layer(self) -> int:
        """The layer the summary reads the refusal direction at: the first block of the battery's ``layers``."""
        from deltalens.hooks.names import parse_layers

        return parse_layers(self.b.cfg.layers, self.b.n_layers())[0]

    def run(self) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        """Compute (or read back) every unit; returns ``(tables, facts for the summary)``."""
        f = self.b.family
        tok = self.tokens()
        wa = self.b.model("wa")
        self.pairs = pair_prompts(wa, f.harmful, f.harmless, self.fmt, N_PAIRS)
        self.good, self.bad = tok["refusal"], tok["comply"]
        self.base = {"pairs": self.pairs.key(), "tokens": [self.good, self.bad], "n_pairs": N_PAIRS}
        dla, att, edges = self._per_stage()
        faith = self._faithfulness(edges)
        dirs, ablation = self._directions()
        tables = assemble(dla, att, edges, faith, dirs, (wa.n_layers, wa.n_heads))
        info = {"pairs": self.pairs.info(), "metric": tok, "ablation": ablation, "method": METHOD,
                "steps": STEPS, "top_edges": TOP_EDGES}  # fmt: skip
        return tables, info

    def _on(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(stage's model, *args)``: a unit's checkpoint is loaded only when the unit is computed
        (a stored unit loads nothing)."""
        return fn(self.b.model(stage), *args)

    def _on_stages(self, stages: list[str], harmful: list[str], harmless: list[str]) -> pd.DataFrame:
        """:func:`directions_unit` on ``stages``' models (loaded only when the unit is computed)."""
        return directions_unit({s: self.b.model(s) for s in stages}, harmful, harmless, self.fmt)

    def _per_stage(self) -> tuple[dict, dict, dict]:
        """DLA, attribution patching and edges of each compared stage (one unit each)."""
        units = []
        for s in STAGES:
            args = (self.pairs, self.good, self.bad)
            units += [
                Unit(
                    f"circuit-dla-{s}",
                    self._key("dla", stage=s, by="head"),
                    partial(self._on, s, dla_unit, *args),
                    "parquet",
                ),
                Unit(
                    f"circuit-attribution-{s}",
                    self._key("attribution", stage=s, names=["heads", "mlp_out"], positions="sum"),
                    partial(self._on, s, attribution_unit, *args),
                    "parquet",
                ),  # fmt: skip
                Unit(
                    f"circuit-edges-{s}",
                    self._key("edges", stage=s, method=METHOD, steps=STEPS),
                    partial(self._on, s, edges_unit, *args),
                    "parquet",
                ),  # fmt: skip
            ]
        out = self.b.compute(units, desc="circuits")
        dla, att, edges = ({s: out[3 * i + k] for i, s in enumerate(STAGES)} for k in range(3))
        return dla, att, edges

    def _faithfulness(self, edges: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        units = [
            Unit(
                f"circuit-faithfulness-{s}",
                self._key("faithfulness", stage=s, method=METHOD, steps=STEPS, sizes="default"),
                partial(self._on, s, faithfulness_unit, self.pairs, edges[s], self.good, self.bad),
                "parquet",
            )
            for s in STAGES
        ]
        return dict(zip(STAGES, self.b.compute(units, desc="faithfulness")))

    def _directions(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        stages = self.b.stages()
        sets = self._direction_sets()
        texts = {"harmful": text_hash(sets[0]), "harmless": text_hash(sets[1]), "n": N_DIRECTION}
        layer = self.direction_layer()
        units = [
            Unit("circuit-directions", self._key("directions", False, stages=stages, reference="wa", **texts),
                 partial(self._on_stages, stages, *sets), "parquet"),
            Unit("circuit-ablation", self._key("ablation", layer=layer, where="all_writers", alpha=1.0, **texts),
                 partial(self._on, "wa", ablation_unit, self.pairs, sets, layer, self.fmt, (self.good, self.bad))),
        ]  # fmt: skip
        dirs, ablation = self.b.compute(units, desc="refusal directions")
        return dirs, ablation


# ---------------------------------------------------------------- tables
def assemble(
    dla: dict[str, pd.DataFrame],
    att: dict[str, pd.DataFrame],
    edges: dict[str, pd.DataFrame],
    faith: dict[str, pd.DataFrame],
    dirs: pd.DataFrame,
    shape: tuple[int, int],
) -> dict[str, pd.DataFrame]:
    """The experiment's tables from its units (stages in :data:`STAGES` order); ``shape`` is the
    compared models' ``(n_layers, n_heads)``."""
    import pandas as pd

    from deltalens.circuits import Circuit, diff

    def stacked(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
        return pd.concat([df.assign(stage=s) for s, df in parts.items()], ignore_index=True)

    dla_all = stacked(dla)
    mean = dla_all.groupby(["stage", "component"], sort=False).agg(
        layer=("layer", "first"), head=("head", "first"), dla=("attribution", "mean")
    )
    att_all = stacked(att).set_index(["stage", "component"])["attribution"]
    heads = mean.join(att_all, how="left").reset_index()
    a, b = (Circuit(edges[s], *shape) for s in STAGES)
    d = diff(a.top(TOP_EDGES), b.top(TOP_EDGES)).assign(a=STAGES[0], b=STAGES[1])
    frames = (heads, dla_all, stacked(edges), d, stacked(faith), dirs)  # in SCHEMAS order
    return {name: schema.frame(df) for (name, schema), df in zip(SCHEMAS.items(), frames, strict=True)}


# ---------------------------------------------------------------- summary
def _top_heads(heads: pd.DataFrame, stage: str) -> list[dict[str, Any]]:
    rows = heads[(heads["stage"] == stage) & heads["head"].notna()]
    rows = rows.reindex(rows["attribution"].abs().sort_values(ascending=False, kind="stable").index)
    return [
        {"component": c, "attribution": round(float(a), 5), "dla": round(float(d), 5)}
        for c, a, d in zip(rows["component"], rows["attribution"], rows["dla"])
    ][:TOP_HEADS]


def _faithfulness_at(faith: pd.DataFrame) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for stage, rows in faith.groupby("stage", sort=False):
        total = int(rows["n_edges"].max())
        keep = rows[rows["n_edges"].isin([*SUMMARY_SIZES, total])]
        out[str(stage)] = {str(int(n)): round(float(f), 4) for n, f in zip(keep["n_edges"], keep["fraction"])}
    return out


def circuits_summary(tables: dict[str, pd.DataFrame], info: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s ``circuits`` entry: pairs and metric, the clean / corrupted metric per stage,
    the top heads by |attribution|, edges gained / lost / changed among the top edges, faithfulness at
    a few circuit sizes (and with every edge), and the refusal direction's cosine and norm ratio to
    W_A's at the chosen layer per stage, with the effect of ablating / adding it on W_A."""
    heads, faith, dirs = tables["circuit_heads"], tables["faithfulness"], tables["refusal_directions"]
    counts = tables["circuit_diff"]["status"].value_counts()
    metric = faith.groupby("stage", sort=False)[["metric_clean", "metric_corrupted"]].first()
    layer = info["ablation"]["layer"]
    at = dirs[dirs["layer"] == layer].set_index("stage")
    return {
        "stages": list(STAGES),
        "metric": info["metric"],
        "pairs": info["pairs"],
        "method": info["method"],
        "steps": info["steps"],
        "metric_clean": {str(s): round(float(v), 4) for s, v in metric["metric_clean"].items()},
        "metric_corrupted": {str(s): round(float(v), 4) for s, v in metric["metric_corrupted"].items()},
        "top_heads": {s: _top_heads(heads, s) for s in STAGES},
        "edges": {
            "top_n": info["top_edges"],
            **{k: int(counts.get(k, 0)) for k in ("gained", "lost", "changed")},
        },
        "faithfulness": _faithfulness_at(faith),
        "direction": {
            "layer": layer,
            "cosine": {str(s): round(float(v), 4) for s, v in at["cosine"].items()},
            "norm_ratio": {str(s): round(float(v), 4) for s, v in at["norm_ratio"].items()},
            "ablation": info["ablation"],
        },
    }


def run_circuits(battery: Any) -> dict[str, pd.DataFrame]:
    """The experiment's tables; its ``summary.json`` section goes to ``battery.extra_summary["circuits"]``."""
    tables, info = CircuitsExperiment(battery).run()
    battery.extra_summary["circuits"] = circuits_summary(tables, info)
    return tables
