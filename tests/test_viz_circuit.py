"""deltalens.viz circuit views: the circuit graph across checkpoints, head heatmaps, DLA bars, the
attention difference panel; plus the same pages opened offline in headless Chromium.

The browser tests never install anything: without a Chromium-family browser they are skipped.
"""

from __future__ import annotations

import json
import re
import socket

import numpy as np
import pandas as pd
import pytest
import torch

import deltalens as dl
from deltalens import viz
from deltalens.viz.browser import body_attr, dump_dom

from .test_viz import EXTERNAL_URL, PROMPT

N_LAYERS, N_HEADS = 3, 3
STAGES = ("w0", "wa", "harmful")
ANY_URL = re.compile(r"https?://|//cdn|\bfetch\(|XMLHttpRequest|import\(", re.IGNORECASE)


# ---------------------------------------------------------------------------------------- inputs
def _layer(name: str) -> int:
    if name == "embed":
        return -1
    if name == "logits":
        return N_LAYERS
    return int(name[1:].split(".")[0])


def _rank(name: str) -> tuple[int, int]:
    return (_layer(name), int(name.startswith("m")))


def edge_frame(stages=STAGES, seed: int = 0, p: float = 0.6) -> pd.DataFrame:
    """A circuit edge table over a 3-layer, 3-head grid; each stage keeps a random subset of the
    edges (so some edges are absent at some stages) with random signed scores."""
    rng = np.random.default_rng(seed)
    nodes = ["embed", *[f"a{L}.h{h}" for L in range(N_LAYERS) for h in range(N_HEADS)]]
    nodes += [f"m{L}" for L in range(N_LAYERS)] + ["logits"]
    pairs = [(s, t) for s in nodes for t in nodes if s != "logits" and t != "embed" and _rank(s) < _rank(t)]
    rows = []
    for stage in stages:
        for s, t in pairs:
            if rng.random() < p:
                rows.append(dict(stage=stage, source=s, target=t, score=float(rng.normal()) * 0.3,
                                 source_layer=_layer(s), target_layer=_layer(t)))  # fmt: skip
    return pd.DataFrame(rows)


def payload(html: str) -> dict:
    m = re.search(r"<script type=\"application/json\" data-dl-circuit>(.*?)</script>", html, re.S)
    assert m, "the view has no data script"
    return json.loads(m.group(1))


def stage_buttons(html: str) -> dict[str, str]:
    return dict(re.findall(r'<button type="button" data-mode="([^"]+)"[^>]*>([^<]*)</button>', html))


class FakeCircuit:
    """Stands in for deltalens.circuits.Circuit: all the view needs is ``.to_frame()``."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()


# ---------------------------------------------------------------------------------------- the graph
def test_graph_is_self_contained_and_holds_every_node_edge_and_score():
    df = edge_frame()
    view = viz.circuit_graph(df)
    page = view.to_html()
    assert not EXTERNAL_URL.search(page) and not ANY_URL.search(page), (
        EXTERNAL_URL.search(page),
        ANY_URL.search(page),
    )
    data = payload(page)
    # every node of the input is drawn once
    nodes = set(df["source"]) | set(df["target"])
    assert set(data["nodes"]) == nodes == set(view.nodes)
    drawn = re.findall(r'class="dl-node dl-\w+" data-node="([^"]+)"', page)
    assert sorted(drawn) == sorted(nodes)
    # every edge is drawn once, and carries each stage's score exactly (None where absent)
    edges = {(data["nodes"][s], data["nodes"][t]): scores for s, t, scores in data["edges"]}
    assert set(edges) == set(zip(df["source"], df["target"]))
    assert len(re.findall(r'<path class="dl-edge"', page)) == len(edges)
    seen = 0
    for (s, t), scores in edges.items():
        for k, stage in enumerate(data["stages"]):
            row = df[(df["stage"] == stage) & (df["source"] == s) & (df["target"] == t)]
            assert scores[k] == (float(row["score"].iloc[0]) if len(row) else None)
            seen += len(row)
    assert seen == len(df)
    # the switch lists every stage, then the difference; the pair selects list every stage
    assert list(stage_buttons(page).values()) == [*STAGES, "difference"]
    assert data["stages"] == list(STAGES) and data["pair"] == [0, 2]
    for role in ("a", "b"):
        sel = re.search(rf'<select data-role="{role}">(.*?)</select>', page).group(1)
        assert re.findall(r">([^<]+)</option>", sel) == list(STAGES)
    # without JavaScript the first stage is drawn: its edges visible with their score, others hidden
    first = df[df["stage"] == "w0"]
    assert len(re.findall(r'<path class="dl-edge"[^>]*data-score=', page)) == len(first)
    assert len(re.findall(r'<path class="dl-edge"[^>]*display:none', page)) == len(edges) - len(first)
    assert view.n_layers == N_LAYERS and view.n_heads == N_HEADS
    assert "circuit_graph" in repr(view) and "(" in repr(view)


def test_difference_equals_score_b_minus_score_a_from_the_frame():
    df = edge_frame()
    view = viz.circuit_graph(df, pair=("wa", "harmful"))
    wide = df.pivot_table(index=["source", "target"], columns="stage", values="score")
    want = wide[["wa", "harmful"]].dropna(how="all").fillna(0.0)
    want = (want["harmful"] - want["wa"]).rename("difference")
    got = view.difference("wa", "harmful").set_index(["source", "target"])["difference"]
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_exact=True)
    # the page's script computes the same from the scores it embeds (absent = 0, both absent = not drawn)
    data = payload(view.to_html())
    assert data["pair"] == [1, 2]
    for s, t, scores in data["edges"]:
        a, b = scores[1], scores[2]
        key = (data["nodes"][s], data["nodes"][t])
        if a is None and b is None:
            assert key not in want.index
        else:
            assert (b or 0.0) - (a or 0.0) == want[key]
    with pytest.raises(ValueError, match="a='nope' is not a stage"):
        view.difference("nope", "wa")


def test_circuit_objects_dicts_single_circuits_and_top():
    frames = {s: edge_frame([s], seed=i).drop(columns="stage") for i, s in enumerate(("wa", "harmful"))}
    from_dict = viz.circuit_graph({s: FakeCircuit(f) for s, f in frames.items()})
    tidy = pd.concat([f.assign(stage=s) for s, f in frames.items()], ignore_index=True)
    from_frame = viz.circuit_graph(tidy)
    assert from_dict.stages == ["wa", "harmful"]
    assert payload(from_dict.to_html()) == payload(from_frame.to_html())
    one = viz.circuit_graph(FakeCircuit(frames["wa"]))
    html = one.to_html()
    assert one.stages == ["circuit"] and "difference" not in stage_buttons(html).values()
    assert one.pair is None and 'data-role="pair"' not in html
    # top: the union over stages of each stage's largest |score| edges, computed here with numpy
    top = viz.circuit_graph(tidy, top=5)
    keep = set()
    for _, part in tidy.groupby("stage"):
        order = np.argsort(-part["score"].abs().to_numpy(), kind="stable")[:5]
        keep |= set(zip(part["source"].to_numpy()[order], part["target"].to_numpy()[order]))
    assert set(zip(top.data["source"], top.data["target"])) == keep
    assert len(top.data) == tidy.apply(lambda r: (r["source"], r["target"]) in keep, axis=1).sum()
    assert f"({len(keep)} of" in top.caption


def test_repr_html_is_offline_and_ids_are_unique(monkeypatch):
    a, b = viz.circuit_graph(edge_frame(seed=1)), viz.circuit_graph(edge_frame(seed=2))
    assert a.uid != b.uid and re.fullmatch(r"dl-circuit-[0-9a-f]{12}", a.uid)
    assert a.to_html() == viz.circuit_graph(edge_frame(seed=1)).to_html()  # deterministic

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    notebook = a._repr_html_() + b._repr_html_()
    assert not EXTERNAL_URL.search(notebook) and not ANY_URL.search(notebook)
    ids = re.findall(r'\bid="([^"]+)"', notebook)
    assert len(ids) == len(set(ids)) == 2
    assert notebook.count("window.dlCircuitGraph=window.dlCircuitGraph||") == 2  # defined once per page
    report = viz.Report("two").add_section("g", a, a).to_html()
    ids = re.findall(r'\bid="(dl-circuit[^"]+)"', report)
    assert ids == [a.uid, a.uid + "-1"]
    assert report.count("window.dlCircuitGraph=") == 1


def test_bad_input_is_one_clear_line():
    df = edge_frame()
    cases = [
        (lambda: viz.circuit_graph(df.drop(columns="score")), r"lacks column\(s\) \['score'\]"),
        (lambda: viz.circuit_graph(df, pair=("wa", "sft")), "pair stage 'sft' is not in the table"),
        (lambda: viz.circuit_graph(df, pair="wa"), "pair='wa'; give two stages"),
        (lambda: viz.circuit_graph(df, top=0), "top=0; give a positive int"),
        (lambda: viz.circuit_graph(df.replace({"source": {"a0.h1": "L0H1"}})), "'L0H1' is not 'embed'"),
        (lambda: viz.circuit_graph(df.assign(source_layer=df["source_layer"].where(df["source"] != "m1", 2))),
         "source_layer of 'm1' is 2, but its name says layer 1"),
        (lambda: viz.circuit_graph(df.assign(score=df["score"].where(df.index != 3))), "finite number"),
        (lambda: viz.circuit_graph(pd.concat([df, df.iloc[[0]]])), "appears more than once"),
        (lambda: viz.circuit_graph(df.iloc[:0]), "no edge"),
        (lambda: viz.circuit_graph([1, 2]), "expected a circuit edge DataFrame"),
        (lambda: viz.head_heatmap(head_table(), stages=["wa", "sft"]), r"stages=\['wa', 'sft'\] are not all"),
        (lambda: viz.head_heatmap(head_table(), value="dla"), "value='dla' is not a column"),
        (lambda: viz.head_heatmap(head_table(), diff=("wa", "sft")), "diff stage 'sft'"),
        (lambda: viz.dla_bars(head_table().drop(columns=["component", "head"])), "component='component' is not a column"),
        (lambda: viz.dla_bars(head_table(), top=-1), "top=-1"),
    ]  # fmt: skip
    for call, pattern in cases:
        with pytest.raises((ValueError, TypeError), match=pattern) as err:
            call()
        assert "\n" not in str(err.value), str(err.value)


# ---------------------------------------------------------------------------------------- pictures
def head_table(seed: int = 0) -> pd.DataFrame:
    """Per-head rows like ``circuits.dla(..., by="head")`` for three stages and four prompts, plus MLP rows."""
    rng = np.random.default_rng(seed)
    rows = [dict(stage=s, prompt=p, layer=L, head=h, component=f"a{L}.h{h}", attribution=float(rng.normal()))
            for s in STAGES for p in range(4) for L in range(N_LAYERS) for h in range(N_HEADS)]  # fmt: skip
    rows += [dict(stage=s, prompt=p, layer=L, head=np.nan, component=f"m{L}", attribution=float(rng.normal()))
             for s in STAGES for p in range(4) for L in range(N_LAYERS)]  # fmt: skip
    return pd.DataFrame(rows)


def _cells(view, panel) -> pd.DataFrame:
    s = view.series[view.series["panel"] == panel]
    return s.pivot(index="series", columns="x", values="y")


def test_head_heatmap_equals_a_pandas_pivot():
    df = head_table()
    view = viz.head_heatmap(df, "attribution")
    assert list(dict.fromkeys(view.series["panel"])) == [*STAGES, "harmful − w0"]
    heads = df[df["head"].notna()]
    for stage in STAGES:
        want = heads[heads["stage"] == stage].pivot_table(index="layer", columns="head", values="attribution",
                                                          aggfunc="mean")  # fmt: skip
        np.testing.assert_allclose(_cells(view, stage).to_numpy(), want.to_numpy(), rtol=1e-12)
    w0 = heads[heads["stage"] == "w0"].pivot_table(index="layer", columns="head", values="attribution")
    harm = heads[heads["stage"] == "harmful"].pivot_table(index="layer", columns="head", values="attribution")
    np.testing.assert_allclose(_cells(view, "harmful − w0").to_numpy(), (harm - w0).to_numpy(), rtol=1e-12)
    assert "Mean of attribution over 4 rows" in view.caption and "left out" in view.caption
    # chosen stages and pair, and component names instead of layer / head columns
    two = viz.head_heatmap(df.drop(columns=["layer", "head"]), stages=["wa", "w0"], diff=("wa", "w0"))
    assert list(dict.fromkeys(two.series["panel"])) == ["wa", "w0", "w0 − wa"]
    np.testing.assert_allclose(_cells(two, "wa").to_numpy(), _cells(view, "wa").to_numpy())
    assert two.png[:4] == b"\x89PNG" and 'src="data:image/png;base64,' in two.to_html()
    none = viz.head_heatmap(df, diff=False)
    assert set(none.series["panel"]) == set(STAGES)


def test_dla_bars_top_components_by_mean():
    df = head_table()
    view = viz.dla_bars(df, top=5)
    mean = df.groupby(["stage", "component"])["attribution"].mean().unstack("stage")
    best = mean.abs().max(axis=1).sort_values(ascending=False).index[:5]
    assert set(view.series["x"]) == set(best)
    for stage in STAGES:
        s = view.series[view.series["series"] == stage].set_index("x")["y"]
        np.testing.assert_allclose(s[list(best)].to_numpy(), mean.loc[best, stage].to_numpy(), rtol=1e-12)
    single = viz.dla_bars(df[df["stage"] == "wa"].drop(columns="stage"), top=3)
    assert len(single.series) == 3 and single.png[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------- attention
@pytest.fixture(scope="module")
def two_checkpoints(tiny_dirs, tmp_path_factory):
    from deltalens.testing import tiny_checkpoint

    tuned = tiny_checkpoint("llama", tmp_path_factory.mktemp("tuned") / "tuned", seed=1)
    return tiny_dirs["llama"], tuned


def _hf_pattern(path, prompt: str, layer: int) -> np.ndarray:
    """The attention pattern [head, q, k] straight from transformers (eager attention)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids = AutoTokenizer.from_pretrained(path)(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    return out.attentions[layer][0].numpy()


def test_attention_compare_two_models_has_a_difference_panel(two_checkpoints):
    base_dir, tuned_dir = two_checkpoints
    base = dl.load(base_dir, backend="transformer_lens")
    tuned = dl.load(tuned_dir, backend="nnsight")
    view = viz.attention_compare({"base": base, "tuned": tuned}, PROMPT, layer=1)
    want = _hf_pattern(tuned_dir, PROMPT, 1) - _hf_pattern(base_dir, PROMPT, 1)
    ((label, diff),) = view.difference.items()
    assert label == "tuned − base"
    np.testing.assert_allclose(diff, want, atol=1e-5)
    assert np.abs(want).max() > 1e-3  # the two models really differ
    page = view.to_html()
    n = len(view.tokens["base"])
    assert page.count('class="dl-attn-diff-grid"') == len(view.heads)
    assert page.count("<rect ") == len(view.heads) * n * (n + 1) // 2  # causal: lower triangle
    values = [float(v) for v in re.findall(r'data-value="([^"]+)"', page)]
    lower = np.concatenate([diff[h][np.tril_indices(n)] for h in range(len(view.heads))])
    np.testing.assert_array_equal(values, lower)
    assert not EXTERNAL_URL.search(page)
    assert viz.attention_compare({"base": base, "tuned": tuned}, PROMPT, layer=1, diff=False).difference == {}
    with pytest.raises(ValueError, match="diff=True needs exactly two models"):
        viz.attention_compare({"a": base, "b": tuned, "c": base}, PROMPT, layer=0, diff=True)


# ---------------------------------------------------------------------------------------- chromium
PROBE = """<script>(function(){var b=document.body;
function put(name,value){b.setAttribute(name,JSON.stringify(value));}
function edges(){var out=[];[].forEach.call(document.querySelectorAll('.dl-circuit'),function(v,k){
[].forEach.call(v.querySelectorAll('path.dl-edge'),function(p){if(p.style.display!=='none'&&
getComputedStyle(p).display!=='none')out.push([k,+p.getAttribute('data-e'),+p.getAttribute('data-score'),
p.getAttribute('stroke'),+p.getAttribute('stroke-width')]);});});return out;}
window.addEventListener('load',function(){
put('data-resources',performance.getEntriesByType('resource').map(function(e){return e.name;}));
put('data-nodes',[].map.call(document.querySelectorAll('.dl-circuit'),function(v){
return v.querySelectorAll('svg .dl-node').length;}));
put('data-ready',[].map.call(document.querySelectorAll('.dl-circuit'),function(v){return v.getAttribute('data-ready');}));
put('data-edges-s0',edges());
var v=document.querySelector('.dl-circuit');
if(v){var p=v.querySelector('path.dl-edge:not([style*="none"])');
if(p){var r=p.getBoundingClientRect();p.dispatchEvent(new MouseEvent('mouseover',{bubbles:true,
clientX:r.left+r.width/2,clientY:r.top+r.height/2}));var t=v.querySelector('.dl-tip');
put('data-tip',{text:t.textContent,hidden:t.hidden,e:+p.getAttribute('data-e')});}
var d=v.querySelector('button[data-mode=diff]');if(d){d.click();put('data-edges-diff',edges());
put('data-mode',v.getAttribute('data-mode'));}
var s1=v.querySelector('button[data-mode=s1]');if(s1){s1.click();put('data-edges-s1',edges());}}
put('data-imgs',[].map.call(document.querySelectorAll('figure.dl-figure img'),function(i){
return [i.complete,i.naturalWidth];}));
setTimeout(function(){put('data-cv',[].map.call(document.querySelectorAll('.dl-cv-root'),
function(el){return el.childElementCount;}));},1500);
put('data-diff-cells',document.querySelectorAll('.dl-attn-diff rect').length);
});})();</script>"""


def _open(chromium, view_or_page, tmp_path, name: str) -> str:
    page = view_or_page if isinstance(view_or_page, str) else view_or_page.to_html()
    path = tmp_path / f"{name}.html"
    path.write_text(page.replace("</body>", PROBE + "</body>"))
    dom, _ = dump_dom(chromium, path, tmp_path / f"profile-{name}", "--virtual-time-budget=3000")
    resources = body_attr(dom, "data-resources")
    assert resources == [], f"{name}: the page fetched {resources}"
    return dom


def _drawn(dom: str, key: str, data: dict) -> dict[tuple[str, str], float]:
    rows = body_attr(dom, key)
    assert rows is not None, f"the page did not record {key}; did its scripts run?"
    names = data["nodes"]
    return {(names[data["edges"][e][0]], names[data["edges"][e][1]]): score for _, e, score, _, _ in rows}


def test_circuit_graph_in_chromium_switches_to_the_difference(chromium, tmp_path):
    df = edge_frame()
    view = viz.circuit_graph(df)
    data = payload(view.to_html())
    dom = _open(chromium, view, tmp_path, "circuit")
    assert body_attr(dom, "data-ready") == ["1"]
    assert body_attr(dom, "data-nodes") == [len(set(df["source"]) | set(df["target"]))]

    def scores(stage):
        part = df[df["stage"] == stage]
        return dict(zip(zip(part["source"], part["target"]), part["score"]))

    assert _drawn(dom, "data-edges-s0", data) == scores("w0")
    assert _drawn(dom, "data-edges-s1", data) == scores("wa")
    wide = df.pivot_table(index=["source", "target"], columns="stage", values="score")[["w0", "harmful"]]
    wide = wide.dropna(how="all").fillna(0.0)
    want = dict(zip(wide.index, wide["harmful"] - wide["w0"]))
    diff = _drawn(dom, "data-edges-diff", data)
    assert body_attr(dom, "data-mode") == "diff"
    assert diff.keys() == want.keys() and diff != scores("w0")
    np.testing.assert_allclose([diff[k] for k in want], list(want.values()), rtol=0, atol=1e-12)
    # colour by sign, width by size
    rows = body_attr(dom, "data-edges-diff")
    assert all((r[3] == "#c53030") == (r[2] < 0) for r in rows)
    big, small = max(rows, key=lambda r: abs(r[2])), min(rows, key=lambda r: abs(r[2]))
    assert big[4] == 6.0 and small[4] < big[4]
    tip = body_attr(dom, "data-tip")
    s, t = data["nodes"][data["edges"][tip["e"]][0]], data["nodes"][data["edges"][tip["e"]][1]]
    assert not tip["hidden"] and tip["text"].startswith(f"{s} \u2192 {t}")
    assert all(f"{stage}: " in tip["text"] for stage in STAGES)


def test_heatmap_and_attention_pages_in_chromium(chromium, tmp_path, two_checkpoints):
    heat = viz.head_heatmap(head_table())
    dom = _open(chromium, heat, tmp_path, "heatmap")
    imgs = body_attr(dom, "data-imgs")
    assert imgs and all(ok and width > 100 for ok, width in imgs)
    base = dl.load(two_checkpoints[0], backend="transformer_lens")
    tuned = dl.load(two_checkpoints[1], backend="transformer_lens")
    attn = viz.attention_compare({"base": base, "tuned": tuned}, PROMPT, layer=0, heads=[0, 1])
    rep = viz.Report("circuits").add_section("graph", viz.circuit_graph(edge_frame(seed=3)), heat, attn)
    dom = _open(chromium, rep.to_html(), tmp_path, "attention")
    assert body_attr(dom, "data-cv") and all(n > 0 for n in body_attr(dom, "data-cv"))
    n = len(attn.tokens["base"])
    assert body_attr(dom, "data-diff-cells") == 2 * n * (n + 1) // 2
    assert body_attr(dom, "data-ready") == ["1"] and body_attr(dom, "data-edges-diff")


def test_edge_style_colour_by_sign_width_and_opacity_by_size():
    from deltalens.viz.base import NEGATIVE, POSITIVE
    from deltalens.viz.circuit import edge_style

    assert edge_style(0.3, 1.0)["stroke"] == POSITIVE and edge_style(-0.3, 1.0)["stroke"] == NEGATIVE
    widths = [float(edge_style(v, 2.0)["stroke-width"]) for v in (0.0, 0.5, 1.0, 2.0)]
    opacity = [float(edge_style(-v, 2.0)["stroke-opacity"]) for v in (0.0, 0.5, 1.0, 2.0)]
    assert widths == sorted(widths) and widths[0] < widths[-1] and opacity == sorted(opacity)
    assert edge_style(1.0, 0.0) == edge_style(0.0, 1.0)  # an all-zero graph draws every edge thinnest


def test_js_json_round_trips_and_cannot_close_the_script():
    from deltalens.viz.base import js_json

    obj = {"title": "</script><script>alert(1)</script> & <b>", "x": [1.5, -2], "ünï": "ok"}
    s = js_json(obj)
    assert json.loads(s) == obj
    assert not {"<", ">", "&"} & set(s)
    with pytest.raises(ValueError):
        js_json({"x": float("nan")})  # the page's JSON.parse would reject NaN


def test_study_circuit_views_draw_the_battery_tables():
    """The report's views of the circuits tables: each kind gives its views, drawn from the table's own
    numbers; other kinds give none; a table without the columns is refused naming them."""
    from deltalens.study.circuit_views import direction_cosines, faithfulness_curve, report_views

    faith = pd.DataFrame({"stage": ["wa"] * 3 + ["harmful"] * 3, "n_edges": [0, 5, 207] * 2,
                          "fraction": [0.0, 0.4, 1.0, 0.0, 1.9, 1.0]})  # fmt: skip
    v = faithfulness_curve(faith)
    assert v.kind == "faithfulness" and v.data["fraction"].tolist() == faith["fraction"].tolist() and v.png
    dirs = pd.DataFrame({"stage": ["wa", "wa", "useful", "useful"], "layer": [1, 2, 1, 2],
                         "cosine": [1.0, 1.0, 0.6, 0.4], "norm_ratio": [1.0, 1.0, 0.3, 0.2]})  # fmt: skip
    for value in ("cosine", "norm_ratio"):
        d = direction_cosines(dirs, value)
        assert d.kind == "refusal_directions" and d.data[value].tolist() == dirs[value].tolist()
    with pytest.raises(ValueError, match="fraction"):
        faithfulness_curve(faith.drop(columns="fraction"))
    tables = (("faithfulness", faith), ("refusal_directions", dirs))
    kinds = [[view().kind for view in report_views(k, t)] for k, t in tables]
    assert kinds == [["faithfulness"], ["refusal_directions", "refusal_directions"]]
    graph = report_views("circuit_edges", edge_frame())
    assert len(graph) == 1 and graph[0]().kind == "circuit_graph"
    assert report_views("sweep", faith) == []
