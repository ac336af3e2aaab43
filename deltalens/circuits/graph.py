"""Circuits: scored edges between model components, for one checkpoint or several.

A :class:`Circuit` holds one table of edges ``source -> target`` with a ``score`` (and a leading
``stage`` column when it covers several checkpoints), plus what is needed to read it: the model's
shape, the attribution method, the metric, the stages and each model's provenance. Nodes are
``"embed"``, ``"a{L}.h{H}"`` (head H of layer L), ``"m{L}"`` (the MLP of layer L) and ``"logits"``;
``source_layer`` / ``target_layer`` place them (embed = -1, logits = ``n_layers``).

Example:
    >>> c = circuits.edge_attribution(model, clean, corrupted, metric)
    >>> c.top(20)                                    # the 20 edges of largest |score|
    >>> c.save("circuit.parquet"); Circuit.load("circuit.parquet")
    >>> circuits.diff(c_wa.top(50), c_ft.top(50))    # edges gained, lost, changed
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltalens.atomic import atomic_write, write_json

if TYPE_CHECKING:
    import pandas as pd

STAGE = "stage"
COLUMNS: tuple[str, ...] = ("source", "target", "score", "source_layer", "target_layer")
_META_KEY = b"deltalens.circuit"
_NODE = re.compile(r"embed|logits|a(\d+)\.h(\d+)|m(\d+)")


def node_parts(name: str, n_layers: int) -> tuple[int, int | None, str]:
    """``(layer, head, kind)`` of a node name.

    ``embed`` -> ``(-1, None, "embed")``, ``a{L}.h{H}`` -> ``(L, H, "head")``, ``m{L}`` ->
    ``(L, None, "mlp")``, ``logits`` -> ``(n_layers, None, "logits")``.

    Raises:
        ValueError: ``name`` is not a node name.
    """
    m = _NODE.fullmatch(str(name))
    if m is None:
        raise ValueError(f"node {name!r} is not 'embed', 'logits', 'a{{L}}.h{{H}}' or 'm{{L}}'")
    if name == "embed":
        return -1, None, "embed"
    if name == "logits":
        return n_layers, None, "logits"
    if m.group(1) is not None:
        return int(m.group(1)), int(m.group(2)), "head"
    return int(m.group(3)), None, "mlp"


def node_layer(name: str, n_layers: int) -> int:
    """The layer of a node name: ``embed`` -1, ``a{L}.h{H}`` / ``m{L}`` L, ``logits`` ``n_layers``.

    Raises:
        ValueError: ``name`` is not a node name.
    """
    return node_parts(name, n_layers)[0]


def node_key(name: str, n_layers: int) -> tuple[int, int, int]:
    """Sort key in forward order: layer, heads before the MLP, head index."""
    layer, head, _ = node_parts(name, n_layers)
    return (layer, 0, head) if head is not None else (layer, 1, 0)


class Circuit:
    """Scored edges between nodes (see the module doc), with the metadata needed to read them.

    Args:
        edges: a frame with ``source``, ``target``, ``score`` (``source_layer`` / ``target_layer``
            are filled in when missing), optionally a ``stage`` column.
        n_layers, n_heads: the model's shape.
        method: how the scores were made (``"eap"``, ``"eap-ig"`` ...).
        metric: the metric's name.
        meta: anything else JSON-serialisable (steps, the sign convention, provenance per stage).

    Raises:
        ValueError: a column is missing or a node name is malformed.
    """

    def __init__(
        self,
        edges: pd.DataFrame,
        n_layers: int,
        n_heads: int,
        method: str | None = None,
        metric: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        missing = [c for c in ("source", "target", "score") if c not in edges.columns]
        if missing:
            raise ValueError(f"edges lacks columns {missing}; a circuit needs source, target, score")
        self.n_layers, self.n_heads = int(n_layers), int(n_heads)
        self.method, self.metric = method, metric
        self.meta: dict[str, Any] = dict(meta or {})
        df = edges.reset_index(drop=True).copy()
        for col, end in (("source_layer", "source"), ("target_layer", "target")):
            if col not in df.columns:
                df[col] = [node_layer(n, self.n_layers) for n in df[end]]
        lead = [STAGE] if STAGE in df.columns else []
        rest = [c for c in df.columns if c not in (*lead, *COLUMNS)]
        self._df = df[[*lead, *COLUMNS, *rest]].astype(
            {"score": "float64", "source_layer": "int64", "target_layer": "int64"}
        )

    # ------------------------------------------------------------ views
    def _like(self, df: pd.DataFrame, **meta: Any) -> Circuit:
        return Circuit(df, self.n_layers, self.n_heads, self.method, self.metric, {**self.meta, **meta})

    def to_frame(self) -> pd.DataFrame:
        """A copy of the edge table."""
        return self._df.copy()

    @property
    def stages(self) -> list[str]:
        """The stages in the table, in order (empty for a one-checkpoint circuit)."""
        return list(dict.fromkeys(self._df[STAGE])) if STAGE in self._df.columns else []

    def stage(self, name: str) -> Circuit:
        """The circuit of one stage (its ``stage`` column dropped).

        Raises:
            KeyError: no such stage (the message lists them).
        """
        if name not in self.stages:
            raise KeyError(f"stage {name!r} not in this circuit; its stages are {self.stages}")
        df = self._df[self._df[STAGE] == name].drop(columns=STAGE)
        prov = self.meta.get("provenance", {})
        return self._like(df, stage=name, provenance={name: prov[name]} if name in prov else prov)

    def top(self, n: int) -> Circuit:
        """The ``n`` edges of largest ``|score|`` (per stage), ordered by ``|score|`` descending."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n={n!r}: expected an int >= 0")
        df = self._df.assign(_abs=self._df["score"].abs()).sort_values("_abs", ascending=False, kind="stable")
        if STAGE in df.columns:
            df = df.groupby(STAGE, sort=False, group_keys=False).head(n)
        else:
            df = df.head(n)
        return self._like(df.drop(columns="_abs"))

    def threshold(self, t: float) -> Circuit:
        """The edges with ``|score| >= t``, in their current order."""
        if not isinstance(t, int | float) or t < 0:
            raise ValueError(f"t={t!r}: expected a number >= 0")
        return self._like(self._df[self._df["score"].abs() >= t])

    @property
    def nodes(self) -> list[str]:
        """Every node that appears in an edge, in forward order."""
        names = set(self._df["source"]) | set(self._df["target"])
        return sorted(names, key=lambda n: node_key(n, self.n_layers))

    def edge_set(self) -> set[tuple[str, str]]:
        """``{(source, target)}`` of the edges (all stages together)."""
        return set(zip(self._df["source"], self._df["target"]))

    def __len__(self) -> int:
        return len(self._df)

    def __repr__(self) -> str:
        st = f", stages={self.stages}" if self.stages else ""
        return (
            f"Circuit(method={self.method!r}, metric={self.metric!r}, edges={len(self)}, "
            f"nodes={len(self.nodes)}, n_layers={self.n_layers}, n_heads={self.n_heads}{st})"
        )

    def _repr_html_(self, n: int = 10) -> str:
        """A compact table of the top ``n`` edges (per stage); drawings live in ``deltalens.viz``."""
        top = self.top(n).to_frame()
        head = [c for c in (STAGE, "source", "target", "score") if c in top.columns]
        rows = "".join(
            "<tr>"
            + "".join(f"<td>{r[c]:.4g}</td>" if c == "score" else f"<td>{r[c]}</td>" for c in head)
            + "</tr>"
            for _, r in top.iterrows()
        )
        th = "".join(f"<th>{c}</th>" for c in head)
        return (
            f"<div><b>Circuit</b> — {self.method or '?'} on {self.metric or '?'}, {len(self)} edges, "
            f"{len(self.nodes)} nodes (top {n} by |score|)<table><tr>{th}</tr>{rows}</table></div>"
        )

    # ------------------------------------------------------------ files
    def _header(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "method": self.method,
            "metric": self.metric,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write the circuit atomically as ``.json`` or ``.parquet`` (by suffix); loads back exactly.

        Raises:
            ValueError: another suffix.
        """
        path = Path(path)
        if path.suffix == ".json":
            return write_json(path, {**self._header(), "edges": self._df.to_dict(orient="list")})
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(self._df, preserve_index=False)
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), _META_KEY: json.dumps(self._header(), default=str)}
            )
            return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        raise ValueError(f"path={str(path)!r}: a circuit is saved as .json or .parquet")

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit written by :meth:`save`."""
        import pandas as pd

        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            header = json.loads(table.schema.metadata[_META_KEY])
            df = table.to_pandas()
        else:
            data = json.loads(path.read_text())
            header = {k: v for k, v in data.items() if k != "edges"}
            df = pd.DataFrame(data["edges"])
        return cls(
            df, header["n_layers"], header["n_heads"], header["method"], header["metric"], header["meta"]
        )


def _single(c: Circuit, arg: str) -> Circuit:
    if not isinstance(c, Circuit):
        raise TypeError(f"{arg} is a {type(c).__name__}, not a Circuit")
    if c.stages:
        raise ValueError(
            f"{arg} holds stages {c.stages}; pass one of them, e.g. {arg}.stage({c.stages[0]!r})"
        )
    return c


def diff(a: Circuit, b: Circuit, tol: float = 0.0) -> pd.DataFrame:
    """Edges gained (in ``b`` only), lost (in ``a`` only) and changed (in both, ``|delta| > tol``).

    Returns:
        A frame with ``source``, ``target``, ``status`` (``gained`` / ``lost`` / ``changed``),
        ``score_a``, ``score_b`` (NaN where the edge is absent), ``delta`` (``score_b - score_a``,
        absent counting as 0), ``source_layer``, ``target_layer``; ordered by status then ``|delta|``.

    Raises:
        ValueError: a circuit holds several stages, or ``tol`` is negative.
    """
    import pandas as pd

    a, b = _single(a, "a"), _single(b, "b")
    if not isinstance(tol, int | float) or tol < 0:
        raise ValueError(f"tol={tol!r}: expected a number >= 0")
    keys = ["source", "target", "source_layer", "target_layer"]
    left = a.to_frame()[[*keys, "score"]].rename(columns={"score": "score_a"})
    right = b.to_frame()[[*keys, "score"]].rename(columns={"score": "score_b"})
    df = left.merge(right, on=keys, how="outer")
    df["delta"] = df["score_b"].fillna(0.0) - df["score_a"].fillna(0.0)
    status = pd.Series("changed", index=df.index)
    status[df["score_a"].isna()] = "gained"
    status[df["score_b"].isna()] = "lost"
    df["status"] = status
    keep = (df["status"] != "changed") | (df["delta"].abs() > tol)
    order = {"gained": 0, "lost": 1, "changed": 2}
    df = df[keep].assign(_o=df["status"].map(order), _d=-df["delta"].abs())
    df = df.sort_values(["_o", "_d"], kind="stable").drop(columns=["_o", "_d"])
    return df[
        ["source", "target", "status", "score_a", "score_b", "delta", "source_layer", "target_layer"]
    ].reset_index(drop=True)
