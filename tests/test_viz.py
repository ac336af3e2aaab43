"""deltalens.viz: deterministic offline views, their data, the report and ``deltalens report``."""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import deltalens as dl
from deltalens import viz
from deltalens.study import report
from deltalens.viz.attention import circuitsvis_script

EXTERNAL_URL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?!data:|#)[a-z][a-z0-9+.-]*:""", re.IGNORECASE)
PROMPT = "def add(a, b): return a + b"


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def llama(tiny_dirs):
    return dl.load(tiny_dirs["llama"], backend="transformer_lens")


@pytest.fixture(scope="module")
def llama_nnsight(tiny_dirs):
    return dl.load(tiny_dirs["llama"], backend="nnsight")


def sweep_table() -> pd.DataFrame:
    """A sweep with known values: utility = frac * scale(method), plus reference rows (frac NaN)."""
    scale = {"Top-K": 1.0, "RandomK": 0.8, "Random": 0.5}
    rows = []
    for update in ("useful", "harmful"):
        for mode in ("parallel", "orthogonal"):
            for method, s in scale.items():
                for frac in (0.01, 0.25, 0.5, 0.75, 0.99):
                    rows.append(
                        dict(
                            update=update,
                            method=method,
                            mode=mode,
                            frac=frac,
                            energy_kept=round(frac * s, 4),
                            utility=round(frac * s, 4) if update == "useful" else np.nan,
                            harmfulness=round(frac * s / 2, 4) if update == "harmful" else np.nan,
                        )
                    )
    for label, u, h in (("W_0", 0.05, 0.6), ("W_A", 0.1, 0.02), ("full FT", 0.9, 0.7)):
        rows.append(dict(method=label, frac=np.nan, utility=u, harmfulness=h))
    return pd.DataFrame(rows)


def weight_table() -> pd.DataFrame:
    rows = []
    pairs = {("alignment", "useful"): 0.2, ("alignment", "harmful"): 0.3, ("useful", "harmful"): 0.6}
    for (a, b), v in pairs.items():
        for eta in (0.1, 0.5, 0.9):
            for t, off in (("q", -0.1), ("k", 0.1)):
                rows.append(dict(a=a, b=b, eta=eta, tensor=t, mso=v + off + eta / 10, baseline=0.05))
    return pd.DataFrame(rows)


def act_table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            dict(layer=layer, pair=pair, mso=0.1 * layer + off, mso_random=0.01 * (layer + 1))
            for layer in range(4)
            for pair, off in (("U-H1", 0.1), ("H1-H2", 0.2))
        ]
    )


def probe_table() -> pd.DataFrame:
    return pd.DataFrame(
        [dict(layer=layer, model=m, accuracy=0.5 + 0.1 * layer + off) for layer in range(4) for m, off in
         (("W_0", 0.0), ("W_A", 0.05))]
    )  # fmt: skip


def patch_table() -> pd.DataFrame:
    toks = ["How", " do", " I", "?"]
    return pd.DataFrame(
        [
            dict(layer=layer, position=p, token=t, effect=layer - p)
            for layer in range(3)
            for p, t in enumerate(toks)
        ]
    )


def _series(view, panel, series):
    s = view.series
    s = s[(s["panel"] == panel) & (s["series"] == series)]
    return s["x"].tolist(), s["y"].tolist()


# ---------------------------------------------------------------------------------------- attention
def test_attention_snapshot_is_deterministic(llama):
    a = viz.attention(llama, PROMPT, layer=1)
    b = viz.attention(llama, PROMPT, layer=1)
    c = viz.attention(llama, PROMPT + " + 1", layer=1)
    assert a.to_html() == b.to_html() and a._repr_html_() == b._repr_html_()
    assert a.uid != c.uid and a.uid != viz.attention(llama, PROMPT, layer=0).uid
    assert re.fullmatch(r"dl-attention-[0-9a-f]{12}", a.uid)
    html = a.body_html()
    assert f'id="{a.uid}"' in html and f'id="{a.uid}-0"' in html
    assert "circuits-vis-" not in html and "unpkg" not in a.to_html()
    assert not EXTERNAL_URL.search(a.to_html())
    # the pattern is the model's own, per head and causal
    pat = a.patterns[""]
    n = len(a.tokens[""])
    assert pat.shape == (llama.n_heads, n, n)
    np.testing.assert_allclose(pat.sum(-1), 1.0, atol=1e-5)
    assert np.allclose(np.triu(pat, 1), 0)
    assert "".join(a.tokens[""]) == PROMPT
    assert set(a.data.columns) == {"model", "head", "query", "key", "query_token", "key_token", "weight"}
    assert a.provenance["model"]["backend"] == "transformer_lens"


def test_attention_from_padded_cache_and_across_backends(llama, llama_nnsight):
    direct = viz.attention(llama, "x = 1", layer=0, heads=[1, 3])
    cache = llama_nnsight.run_with_cache(["x = 1", PROMPT], names="blocks.0.attn.hook_pattern")
    from_cache = viz.attention(cache, layer=0, heads=[1, 3], tokenizer=llama_nnsight.tokenizer)
    assert from_cache.tokens[""] == direct.tokens[""]
    np.testing.assert_allclose(from_cache.patterns[""], direct.patterns[""], atol=1e-5)
    assert from_cache.heads == [1, 3] and from_cache.patterns[""].shape[0] == 2


def test_attention_compare_side_by_side_inlines_script_once(llama, llama_nnsight):
    view = viz.attention_compare({"TL": llama, "nnsight": llama_nnsight}, PROMPT, layer=1, heads=0)
    page = view.to_html()
    assert page.count('data-dl-asset="circuitsvis"') == 1
    assert page.count('class="dl-cv-root"') == 2
    assert list(view.patterns) == ["TL", "nnsight"] and set(view.provenance) == {"TL", "nnsight"}
    assert "</script" not in page.split('data-dl-asset="circuitsvis">', 1)[1].split("</script>", 1)[0]


def test_attention_errors_are_clear(llama):
    with pytest.raises(ValueError, match="outside this model's blocks"):
        viz.attention(llama, PROMPT, layer=7)
    with pytest.raises(ValueError, match="heads \\[9\\] are outside"):
        viz.attention(llama, PROMPT, heads=[9])
    cache = llama.run_with_cache(PROMPT, names="blocks.0.hook_resid_post")
    with pytest.raises(KeyError, match="run_with_cache"):
        viz.attention(cache, layer=0)
    with pytest.raises(ValueError, match="save it as .html"):
        viz.attention(llama, PROMPT).save("x.png")


# ---------------------------------------------------------------------------------------- logit lens
@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_logit_lens_last_layer_reproduces_model_logits(tiny_dirs, backend):
    m = dl.load(tiny_dirs["gpt2"], backend=backend)
    view = viz.logit_lens(m, PROMPT, top_k=3)
    logits = m.logits(PROMPT)[0]
    top1 = view.data.query(f"rank == 0 and layer == {m.n_layers - 1}").sort_values("position")
    assert top1["token_id"].tolist() == logits.argmax(-1).tolist()
    np.testing.assert_allclose(top1["prob"], logits.softmax(-1).max(-1).values.numpy(), rtol=1e-4, atol=1e-6)
    assert set(view.data["layer"]) == set(range(m.n_layers))
    assert (view.data.groupby(["layer", "position"]).size() == 3).all()
    assert view.png[:4] == b"\x89PNG"


def test_logit_lens_selected_layers_and_positions(llama):
    view = viz.logit_lens(llama, PROMPT, layers=[1], positions=[0, -1], top_k=2)
    n = len(llama.tokenize(PROMPT).input_ids[0])
    assert sorted(view.data["position"].unique()) == [0, n - 1]
    assert view.data["layer"].unique().tolist() == [1]
    with pytest.raises(ValueError, match="outside the prompt"):
        viz.logit_lens(llama, PROMPT, positions=[99])


# ---------------------------------------------------------------------------------------- plots from tables
def test_steering_sweep_series_and_references():
    view = viz.steering_sweep(sweep_table())
    assert view.params["metrics"] == ["utility", "harmfulness"] and view.params["style"] == "update"
    panels = set(view.series["panel"])
    assert panels == {f"{m}: {k}" for m in ("parallel", "orthogonal") for k in ("utility", "harmfulness")}
    x, y = _series(view, "parallel: utility", "Top-K / useful")
    assert x == [0.01, 0.25, 0.5, 0.75, 0.99] and y == pytest.approx([0.01, 0.25, 0.5, 0.75, 0.99])
    _, y = _series(view, "orthogonal: harmfulness", "Random / harmful")
    assert y == pytest.approx([0.0025, 0.0625, 0.125, 0.1875, 0.2475])
    assert _series(view, "parallel: utility", "Random / harmful") == ([], [])  # NaN metric: no line
    x, y = _series(view, "parallel: harmfulness", "ref: W_A")
    assert math.isnan(x[0]) and y == [0.02]
    assert {"ref: W_0", "ref: W_A", "ref: full FT"} <= set(view.series["series"])
    # extra references and a single mode
    view2 = viz.steering_sweep(
        sweep_table().query("mode == 'parallel'"), metrics=["utility"], references={"SFT": {"utility": 0.4}}
    )
    assert _series(view2, "parallel: utility", "ref: SFT")[1] == [0.4]
    order = list(dict.fromkeys(view2.series["series"]))
    assert order[:3] == ["Top-K / useful", "RandomK / useful", "Random / useful"]


def test_energy_kept_bars():
    view = viz.energy_kept(sweep_table(), select={"mode": "parallel"})
    assert set(view.series["panel"]) == {"parallel: Top-K", "parallel: RandomK", "parallel: Random"}
    x, y = _series(view, "parallel: RandomK", "useful")
    assert x == [0.01, 0.25, 0.5, 0.75, 0.99] and y == pytest.approx([0.008, 0.2, 0.4, 0.6, 0.792])


def test_weight_overlap_heatmap_is_symmetric_mean_over_tensors():
    view = viz.weight_overlap(weight_table())
    assert view.params["a"] == "a" and view.params["baseline"] == "baseline" and view.params["col"] == "eta"
    assert "tensor" in view.caption
    x, y = _series(view, "eta=0.5", "harmful")
    cells = dict(zip(x, y))
    assert cells["useful"] == pytest.approx(0.65) and cells["alignment"] == pytest.approx(0.35)
    assert math.isnan(cells["harmful"])
    assert dict(zip(*_series(view, "eta=0.5", "useful")))["harmful"] == pytest.approx(0.65)
    one = viz.weight_overlap(weight_table(), select={"eta": 0.9})
    assert set(one.series["panel"]) == {""}


def test_activation_overlap_lines_with_baseline():
    view = viz.activation_overlap(act_table())
    assert view.params["hue"] == "pair" and view.params["baseline"] == "mso_random"
    x, y = _series(view, "", "H1-H2")
    assert x == [0, 1, 2, 3] and y == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert _series(view, "", "U-H1 (random baseline)")[1] == pytest.approx([0.01, 0.02, 0.03, 0.04])
    # the probes module's pair columns a / b and eta are understood, eta becomes panels
    t = pd.concat([act_table().assign(eta=e) for e in (0.1, 0.5)])
    t[["a", "b"]] = t["pair"].str.split("-", expand=True)
    view2 = viz.activation_overlap(t.drop(columns="pair"))
    assert set(view2.series["panel"]) == {"eta=0.1", "eta=0.5"} and "U-H1" in set(view2.series["series"])


def test_probe_accuracy_lines_chance_and_average_note():
    view = viz.probe_accuracy(probe_table(), chance=0.5)
    assert view.params["hue"] == "model"
    assert _series(view, "", "W_A") == ([0, 1, 2, 3], pytest.approx([0.55, 0.65, 0.75, 0.85]))
    assert _series(view, "", "chance")[1] == [0.5]
    one = viz.probe_accuracy(probe_table(), hue=None)
    assert _series(one, "", "accuracy")[1] == pytest.approx([0.525, 0.625, 0.725, 0.825])
    assert "model" in one.caption


def test_patching_grid_and_token_labels():
    view = viz.patching(patch_table())
    x, y = _series(view, "", "layer 2")
    assert x == [0, 1, 2, 3] and y == [2, 1, 0, -1]
    assert view.params["value"] == "effect"


def test_delta_norms_per_layer_and_module(llama, llama_nnsight):
    sd = llama.state_dict()
    delta = {k: torch.full_like(v, 0.5) for k, v in sd.items()}
    view = viz.delta_norms({"useful": delta, "harmful": {k: 2 * v for k, v in delta.items()}}, reference=sd)
    d = view.data.set_index(["update", "name"])
    name = "model.layers.1.self_attn.q_proj.weight"
    assert d.loc[("useful", name), "layer"] == 1 and d.loc[("useful", name), "module"] == "self_attn.q_proj"
    assert d.loc[("harmful", name), "norm"] == pytest.approx(sd[name].numel() ** 0.5, rel=1e-5)
    assert d.loc[("useful", name), "rel_norm"] == pytest.approx(
        0.5 * sd[name].numel() ** 0.5 / sd[name].norm().item()
    )
    assert d.loc[("useful", "lm_head.weight"), "module"] == "lm_head" and pd.isna(
        d.loc[("useful", "lm_head.weight"), "layer"]
    )
    assert view.params["value"] == "rel_norm"
    assert {"useful", "harmful", "outside blocks"} == set(view.series["panel"])
    with pytest.raises(TypeError, match="Mapping"):
        viz.delta_norms([1, 2])


def test_table_errors_name_columns():
    with pytest.raises(KeyError, match="did you mean 'accuracy'"):
        viz.probe_accuracy(probe_table(), y="acuracy")
    with pytest.raises(ValueError, match="no row matches"):
        viz.steering_sweep(sweep_table(), select={"mode": "sideways"})
    with pytest.raises(ValueError, match="empty"):
        viz.patching(pd.DataFrame())


def test_figures_are_deterministic_and_save(tmp_path):
    a, b = viz.steering_sweep(sweep_table()), viz.steering_sweep(sweep_table())
    assert a.png == b.png and a.to_html() == b.to_html()
    png = a.save(tmp_path / "s.png").read_bytes()
    assert png == a.png
    page = a.save(tmp_path / "s.html").read_text()
    assert "data:image/png;base64," in page and not EXTERNAL_URL.search(page)
    with pytest.raises(ValueError, match=".html or .png"):
        a.save(tmp_path / "s.pdf")
    assert "steering_sweep" in repr(a)


# ---------------------------------------------------------------------------------------- no network
def test_repr_html_makes_no_network_call(llama, monkeypatch):
    views = [
        viz.attention(llama, PROMPT, layer=0),
        viz.attention_compare({"a": llama, "b": llama}, PROMPT, layer=1),
        viz.logit_lens(llama, PROMPT, positions=-1),
        viz.steering_sweep(sweep_table()),
        viz.energy_kept(sweep_table()),
        viz.weight_overlap(weight_table()),
        viz.activation_overlap(act_table()),
        viz.probe_accuracy(probe_table()),
        viz.patching(patch_table()),
        viz.delta_norms({k: v * 0.1 for k, v in llama.state_dict().items()}),
    ]
    circuitsvis_script.cache_clear()  # read the bundle again, offline

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for v in views:
        html = v._repr_html_()
        assert html and not EXTERNAL_URL.search(html)
    report = viz.Report("offline").add_section("all", *views)
    assert not EXTERNAL_URL.search(report._repr_html_())


# ---------------------------------------------------------------------------------------- report
def test_report_page_toc_provenance_and_ids(llama):
    attn = viz.attention(llama, PROMPT, layer=0)
    plot = viz.probe_accuracy(probe_table())
    rep = (
        viz.Report("Family <report>", description="Tiny models.")
        .add_section("Attention", attn, attn)
        .add_section(
            "Probes", plot, probe_table(), "A note.\n\nSecond paragraph.", {"eta": 0.5, "nested": {"k": 1}}
        )
        .add_section("Probes", plot)
        .add_provenance({"base": "organism/W_0", "content_hash": "abc123"}, name="W_0")
    )
    page = rep.to_html()
    assert page.startswith("<!DOCTYPE html>") and "Family &lt;report&gt;" in page
    for anchor in re.findall(r'href="#([^"]+)"', page):
        assert f'id="{anchor}"' in page
    assert 'href="#sec-probes-2"' in page
    assert page.count('data-dl-asset="circuitsvis"') == 1
    assert f'id="{attn.uid}"' in page and f'id="{attn.uid}-1"' in page  # repeated view, unique ids
    assert "W_0" in page and "abc123" in page and llama.provenance.content_hash in page
    assert "<p>Second paragraph.</p>" in page and "nested.k" in page
    assert not EXTERNAL_URL.search(page)
    assert "2 models" in repr(rep) or "models" in repr(rep)
    with pytest.raises(TypeError, match="view, a DataFrame"):
        rep.add_section("bad", object())
    with pytest.raises(ValueError, match=".html"):
        rep.save("r.pdf")


def battery_sweep() -> pd.DataFrame:
    """Shaped like ``interventions.subspace_sweep`` output for two tasks, with its baseline rows."""
    rows = []
    for task in ("useful", "harmful"):
        for method, s in (("topk", 1.0), ("randomk", 0.8), ("random", 0.5)):
            for frac in (0.25, 0.75):
                rows.append(dict(task=task, method=method, mode="parallel", frac=frac, alpha=1.0, k_total=8,
                                 energy_kept=frac * s, energy_kept_no_embed=frac * s, harm=frac * s / 2,
                                 utility=frac * s))  # fmt: skip
        for mode, v in (("reference", 0.1), ("full", 0.9)):
            rows.append(dict(task=task, method="none", mode=mode, frac=np.nan, alpha=1.0, k_total=0,
                             energy_kept=v, energy_kept_no_embed=v, harm=v / 2, utility=v))  # fmt: skip
    return pd.DataFrame(rows)


def battery_evals() -> pd.DataFrame:
    stages = ("w0", "wa", "useful", "harmful", "contaminated")
    return pd.DataFrame(
        [
            dict(stage=s, harm=0.1 * i, refusal_harmful=1 - 0.1 * i, utility=0.2 * i)
            for i, s in enumerate(stages)
        ]
    )


def test_tables_shaped_like_the_other_modules_are_understood():
    sweep = viz.steering_sweep(battery_sweep().query("task == 'useful'"))
    assert sweep.params["metrics"] == ["utility", "harm"] and sweep.params["style"] is None
    assert _series(sweep, "parallel: utility", "ref: full")[1] == [0.9]
    assert _series(sweep, "parallel: harm", "ref: reference")[1] == [0.05]
    assert list(dict.fromkeys(sweep.series["series"]))[:3] == ["topk", "randomk", "random"]
    both = viz.steering_sweep(battery_sweep())
    assert both.params["style"] == "task" and "alpha" not in both.caption
    assert _series(both, "parallel: harm", "topk / harmful")[1] == pytest.approx([0.125, 0.375])
    ek = viz.energy_kept(battery_sweep())
    assert ek.params["hue"] == "task" and _series(ek, "parallel: randomk", "harmful")[1] == pytest.approx(
        [0.2, 0.6]
    )
    # probes: ProbeResult.summary() per model
    probes = pd.DataFrame(
        [dict(model=m, name=f"blocks.{lay}.hook_resid_post", hook="hook_resid_post", layer=lay, fold=f,
              accuracy=0.6 + 0.1 * lay + 0.02 * f, majority_accuracy=0.5, random_accuracy=0.55)
         for m in ("w0", "wa") for lay in range(3) for f in range(2)]
    )  # fmt: skip
    pv = viz.probe_accuracy(probes)
    assert pv.params["hue"] == "model" and pv.params["baseline"] == "random_accuracy"
    assert _series(pv, "", "wa")[1] == pytest.approx([0.61, 0.71, 0.81]) and _series(pv, "", "chance")[1] == [
        0.5
    ]
    # probes.activation_overlap: per-layer and slice-mean rows, centred and uncentred
    act = pd.DataFrame(
        [dict(model="wa", set_a="useful", set_b="harmful_1", scope="layer", layer=lay, eta=0.5, centered=c,
              mso=0.3 + 0.1 * lay + (0.2 if c else 0), baseline=0.02)
         for lay in (1, 2) for c in (False, True)]
        + [dict(model="wa", set_a="useful", set_b="harmful_1", scope="slice_mean", layer=pd.NA, eta=0.5,
                centered=False, mso=0.99, baseline=0.02)]
    )  # fmt: skip
    av = viz.activation_overlap(act)
    assert _series(av, "", "useful-harmful_1") == ([1, 2], pytest.approx([0.4, 0.5]))
    assert "scope=layer" in av.caption and "centered=False" in av.caption
    centred = viz.activation_overlap(act, select={"centered": True})
    assert _series(centred, "", "useful-harmful_1")[1] == pytest.approx([0.6, 0.7])
    # interventions.patching_sweep: one row per hook name and position
    patch = pd.DataFrame(
        [dict(name=f"blocks.{lay}.{h}", layer=lay, position=p, metric=0.0,
              effect=lay + p + (10 if h == "hook_attn_out" else 0))
         for lay in range(2) for p in (-1, 0, 1) for h in ("hook_resid_post", "hook_attn_out")]
    )  # fmt: skip
    ptv = viz.patching(patch)
    assert ptv.params["facet"] == "hook"
    assert _series(ptv, "hook=hook_attn_out", "layer 1") == ([-1, 0, 1], [10, 11, 12])


def _results_dir(root):
    root.mkdir()
    (root / "config.yaml").write_text("model: organism\nfracs: [0.25, 0.5]\n")
    (root / "summary.json").write_text(json.dumps({"refusal": {"W_A": 0.95}, "n_prompts": 40}))
    (root / "provenance.json").write_text(json.dumps({"W_A": {"base": "org/W_A", "content_hash": "feed"}}))
    battery_sweep().to_parquet(root / "sweep.parquet")
    battery_evals().to_parquet(root / "evals.parquet")
    weight_table().to_parquet(root / "weight_overlap.parquet")
    act_table().to_parquet(root / "activation_overlap.parquet")
    probe_table().to_parquet(root / "probes.parquet")
    patch_table().to_parquet(root / "patching.parquet")
    pd.DataFrame({"odd": [1, 2]}).to_parquet(root / "patching_broken.parquet")
    (root / "units").mkdir()
    pd.DataFrame({"x": ["<b>", "y"]}).to_parquet(root / "units" / "notes.parquet")
    (root / "bad.parquet").write_text("not parquet")
    return root


def test_report_from_results_uses_evals_as_references(tmp_path):
    rep = report.report_from_results(_results_dir(tmp_path / "results"))
    titles = [s.title for s in rep.sections]
    assert titles[:3] == ["Summary", "Evaluations (evals.parquet)", "Subspace steering sweep (sweep.parquet)"]
    sweep = next(v for v in rep.views if v.kind == "steering_sweep")
    own = {f"{m} / {t}" for m in ("reference", "full") for t in ("useful", "harmful")}
    assert set(sweep.params["references"]) == {"W_0", "W_A", "useful FT", "harmful FT"} | own
    assert sweep.params["references"]["W_A"]["utility"] == pytest.approx(0.2)
    assert not any("units/" in t for t in titles)  # per-unit caches are skipped unless recursive
    assert "Table bad.parquet" not in titles and "bad.parquet" in titles


def test_report_main_builds_from_results_folder(tmp_path, capsys):
    root = _results_dir(tmp_path / "results")
    parser = report.add_report_arguments(argparse.ArgumentParser())
    out = tmp_path / "r" / "x.html"
    assert report.report_main(parser.parse_args([str(root), "-o", str(out), "--title", "T", "--recursive"])) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    kinds = re.findall(r'data-kind="([a-z_]+)"', page)
    expected = (
        "steering_sweep",
        "energy_kept",
        "weight_overlap",
        "activation_overlap",
        "probe_accuracy",
        "patching",
    )
    assert all(k in kinds for k in expected)
    assert "No patching plot for patching_broken.parquet" in page and "Could not read bad.parquet" in page
    assert "<title>T</title>" in page and "units/notes.parquet" in page and "&lt;b&gt;" in page
    assert "org/W_A" in page and "n_prompts" in page and "fracs" in page
    assert not EXTERNAL_URL.search(page)
    assert report.report_main(parser.parse_args([str(tmp_path / "missing")])) == 2
    small = tmp_path / "small"
    small.mkdir()
    assert report.report_main(parser.parse_args([str(small)])) == 0  # nothing in it: a page that says so
    assert "holds no summary.json" in (small / "report.html").read_text()


def test_import_is_light():
    code = (
        "import sys, deltalens.viz; "
        "print([m for m in ('pandas', 'matplotlib', 'torch', 'circuitsvis', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
