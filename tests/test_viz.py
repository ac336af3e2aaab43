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
from deltalens.schemas import ACTIVATION_OVERLAP, PATCHING, PROBES, SWEEP, WEIGHT_OVERLAP, SchemaError
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
    """A SWEEP table with known values: utility = frac * scale(method), plus reference rows (frac NaN)."""
    scale = {"Top-K": 1.0, "RandomK": 0.8, "Random": 0.5}
    rows = []
    for task in ("useful", "harmful"):
        for mode in ("parallel", "orthogonal"):
            for method, s in scale.items():
                for frac in (0.01, 0.25, 0.5, 0.75, 0.99):
                    rows.append(
                        dict(
                            task=task,
                            method=method,
                            mode=mode,
                            frac=frac,
                            alpha=1.0,
                            k_total=round(100 * frac),
                            energy_kept=round(frac * s, 4),
                            energy_kept_no_embed=round(frac * s, 4),
                            utility=round(frac * s, 4) if task == "useful" else np.nan,
                            harmfulness=round(frac * s / 2, 4) if task == "harmful" else np.nan,
                        )
                    )
    for label, u, h in (("W_0", 0.05, 0.6), ("W_A", 0.1, 0.02), ("full FT", 0.9, 0.7)):
        rows.append(dict(method=label, frac=np.nan, alpha=1.0, k_total=0, utility=u, harmfulness=h))
    return SWEEP.frame(rows)


def weight_table() -> pd.DataFrame:
    """A WEIGHT_OVERLAP table with two rows per (pair, eta) (an extra ``tensor`` column) to average."""
    rows = []
    pairs = {("alignment", "useful"): 0.2, ("alignment", "harmful"): 0.3, ("useful", "harmful"): 0.6}
    for (a, b), v in pairs.items():
        for eta in (0.1, 0.5, 0.9):
            for t, off in (("q", -0.1), ("k", 0.1)):
                mso = v + off + eta / 10
                rows.append(dict(a=a, b=b, eta=eta, mso=mso, baseline=0.05, mso_std=0.01, k_a=2.0, k_b=3.0,
                                 n_tensors=1, ratio=mso / 0.05, tensor=t))  # fmt: skip
    return WEIGHT_OVERLAP.frame(rows)


def act_table() -> pd.DataFrame:
    """An ACTIVATION_OVERLAP table: one model, one eta, two prompt-set pairs over four layers."""
    rows = [
        dict(model="wa", set_a=a, set_b=b, scope="layer", layer=layer, eta=0.5, centered=False, n_a=8, n_b=8,
             k_a=2.0, k_b=2.0, d=64, mso=0.1 * layer + off, baseline=0.01 * (layer + 1))
        for layer in range(4)
        for a, b, off in (("U", "H1", 0.1), ("H1", "H2", 0.2))
    ]  # fmt: skip
    return ACTIVATION_OVERLAP.frame(rows)


def probe_table() -> pd.DataFrame:
    """A PROBES table (as ``ProbeResult.summary()``) for two models, with the study's ``model`` label."""
    rows = [
        dict(model=m, name=f"blocks.{layer}.hook_resid_post", hook="hook_resid_post", layer=layer, n_train=30.0,
             n_test=10.0, accuracy=0.5 + 0.1 * layer + off, roc_auc=0.9, train_accuracy=1.0,
             majority_accuracy=0.5, random_accuracy=0.52, random_roc_auc=0.5)
        for layer in range(4)
        for m, off in (("W_0", 0.0), ("W_A", 0.05))
    ]  # fmt: skip
    return PROBES.frame(rows)


def patch_table() -> pd.DataFrame:
    """A PATCHING table of one hook kind, with an extra ``token`` column."""
    toks = ["How", " do", " I", "?"]
    return PATCHING.frame(
        [
            dict(name=f"blocks.{layer}.hook_resid_pre", layer=layer, position=p, metric=0.0, effect=layer - p,
                 token=t)
            for layer in range(3)
            for p, t in enumerate(toks)
        ]
    )  # fmt: skip


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
    assert view.params["metrics"] == ["utility", "harmfulness"] and view.params["style"] == "task"
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


def test_study_label_defaults_apply_only_when_the_column_is_there():
    """``task`` / ``model`` / ``embeddings`` (labels no schema declares) are used when present, else dropped."""
    no_task = sweep_table().drop(columns="task")
    view = viz.steering_sweep(no_task, select={"mode": "parallel"})
    assert view.params["style"] is None
    assert _series(view, "parallel: utility", "Top-K")[1] == pytest.approx([0.01, 0.25, 0.5, 0.75, 0.99])
    assert viz.steering_sweep(sweep_table(), style=None).params["style"] is None
    assert viz.energy_kept(no_task).params["hue"] is None
    probes = viz.probe_accuracy(probe_table().drop(columns="model"))
    assert probes.params["hue"] is None and probes.caption.startswith("Mean over")
    assert _series(probes, "", "accuracy")[1] == pytest.approx([0.525, 0.625, 0.725, 0.825])
    assert viz.weight_overlap(weight_table()).params["row"] is None
    both = pd.concat([weight_table().assign(embeddings=e, mso=lambda d, e=e: d["mso"] + (e == "included"))
                      for e in ("included", "excluded")])  # fmt: skip
    wv = viz.weight_overlap(both, select={"eta": 0.5})
    assert wv.params["row"] == "embeddings"
    assert set(wv.series["panel"]) == {"embeddings=included, eta=0.5", "embeddings=excluded, eta=0.5"}
    cells = dict(zip(*_series(wv, "embeddings=included, eta=0.5", "harmful")))
    assert cells["useful"] == pytest.approx(1.65)
    # another existing column may be passed explicitly
    by_mode = viz.energy_kept(sweep_table(), hue="mode", mode=None, select={"task": "useful"})
    assert by_mode.params["hue"] == "mode" and {"parallel", "orthogonal"} <= set(by_mode.series["series"])


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
    one = viz.weight_overlap(weight_table(), select={"eta": 0.9}, col=None)
    assert set(one.series["panel"]) == {""}


def test_activation_overlap_lines_with_baseline():
    view = viz.activation_overlap(act_table())
    assert view.params["hue"] == "pair" and view.params["baseline"] == "baseline"
    panel = "model=wa, eta=0.5"
    x, y = _series(view, panel, "H1-H2")
    assert x == [0, 1, 2, 3] and y == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert _series(view, panel, "U-H1 (random baseline)")[1] == pytest.approx([0.01, 0.02, 0.03, 0.04])
    # eta values are panel columns, models panel rows
    t = pd.concat([act_table().assign(eta=e, model=m) for e in (0.1, 0.5) for m in ("w0", "wa")])
    view2 = viz.activation_overlap(t)
    assert set(view2.series["panel"]) == {f"model={m}, eta={e}" for m in ("w0", "wa") for e in (0.1, 0.5)}
    assert "U-H1" in set(view2.series["series"])
    flat = viz.activation_overlap(t, row=None, col=None)
    assert set(flat.series["panel"]) == {""} and "model" in flat.caption and "eta" in flat.caption


def test_probe_accuracy_lines_chance_and_average_note():
    view = viz.probe_accuracy(probe_table(), chance=0.4)
    assert view.params["hue"] == "model" and view.params["baseline"] == "random_accuracy"
    assert _series(view, "", "W_A") == ([0, 1, 2, 3], pytest.approx([0.55, 0.65, 0.75, 0.85]))
    assert _series(view, "", "chance")[1] == [0.4]
    assert _series(view, "", "W_A (random baseline)")[1] == pytest.approx([0.52] * 4)
    assert _series(viz.probe_accuracy(probe_table()), "", "chance")[1] == [0.5]  # mean majority_accuracy
    one = viz.probe_accuracy(probe_table(), hue=None)
    assert _series(one, "", "accuracy")[1] == pytest.approx([0.525, 0.625, 0.725, 0.825])
    assert "model" in one.caption


def test_patching_grid_and_token_labels():
    view = viz.patching(patch_table())
    assert view.params["facet"] == "hook" and view.params["value"] == "effect"
    x, y = _series(view, "hook=hook_resid_pre", "layer 2")
    assert x == [0, 1, 2, 3] and y == [2, 1, 0, -1]
    assert "hook" in view.data.columns
    assert set(viz.patching(patch_table(), facet=None).series["panel"]) == {""}


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
    # a table of norms: layer, module, update and rel_norm are filled in
    table = viz.delta_norms(pd.DataFrame({"name": [name, "lm_head.weight"], "norm": [1.0, 2.0]}))
    assert table.data["module"].tolist() == ["self_attn.q_proj", "lm_head"] and table.params["value"] == "norm"
    assert set(table.series["panel"]) == {"ΔW", "outside blocks"}
    with pytest.raises(TypeError, match="Mapping"):
        viz.delta_norms([1, 2])
    with pytest.raises(SchemaError, match=r"missing columns \['norm'\]"):
        viz.delta_norms(pd.DataFrame({"name": [name]}))


def test_table_errors_name_columns():
    with pytest.raises(ValueError, match=r"viz.probe_accuracy: y='acuracy' is not a column.*did you mean 'accuracy'"):
        viz.probe_accuracy(probe_table(), y="acuracy")
    with pytest.raises(ValueError, match=r"hue='modle'.*its columns are \[.*'model'"):
        viz.probe_accuracy(probe_table(), hue="modle")
    with pytest.raises(ValueError, match=r"style='update' is not a column"):
        viz.steering_sweep(sweep_table(), style="update")
    with pytest.raises(ValueError, match=r"metrics\[1\]='harm' is not a column"):
        viz.steering_sweep(sweep_table(), metrics=["utility", "harm"])
    with pytest.raises(ValueError, match=r"row='embedding' is not a column"):
        viz.weight_overlap(weight_table(), row="embedding")
    with pytest.raises(ValueError, match=r"select key 'modee' is not a column"):
        viz.steering_sweep(sweep_table(), select={"modee": "parallel"})
    with pytest.raises(ValueError, match="no row matches"):
        viz.steering_sweep(sweep_table(), select={"mode": "sideways"})
    with pytest.raises(ValueError, match="empty"):
        viz.patching(pd.DataFrame())


def test_views_check_their_schema():
    """A table of another kind fails at once, naming the view, the schema and the missing columns."""
    cases = [
        (viz.steering_sweep, sweep_table().drop(columns="k_total"), "'sweep'", "['k_total']"),
        (viz.energy_kept, probe_table(), "'sweep'", "'method'"),
        (viz.weight_overlap, weight_table().rename(columns={"a": "update_a"}), "'weight_overlap'", "['a']"),
        (viz.activation_overlap, act_table().drop(columns=["set_a", "set_b"]), "'activation_overlap'", "'set_a'"),
        (viz.probe_accuracy, probe_table().drop(columns="random_accuracy"), "'probes'", "'random_accuracy'"),
        (viz.patching, patch_table().drop(columns="name"), "'patching'", "['name']"),
    ]  # fmt: skip
    for view, table, schema, missing in cases:
        with pytest.raises(SchemaError) as err:
            view(table)
        msg = str(err.value)
        assert f"a {schema} table was expected for viz.{view.__name__}" in msg and missing in msg, msg


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
    assert sweep.params["metrics"] == ["utility", "harm"] and sweep.params["style"] == "task"
    assert _series(sweep, "parallel: utility", "ref: full")[1] == [0.9]
    assert _series(sweep, "parallel: harm", "ref: reference")[1] == [0.05]
    order = list(dict.fromkeys(sweep.series["series"]))[:3]
    assert order == ["topk / useful", "randomk / useful", "random / useful"]
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
              n_train=30, n_test=10, accuracy=0.6 + 0.1 * lay + 0.02 * f, roc_auc=0.9, train_accuracy=1.0,
              majority_accuracy=0.5, random_accuracy=0.55, random_roc_auc=0.5)
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
              n_a=8, n_b=8, k_a=1.0, k_b=1.0, d=64, mso=0.3 + 0.1 * lay + (0.2 if c else 0), baseline=0.02)
         for lay in (1, 2) for c in (False, True)]
        + [dict(model="wa", set_a="useful", set_b="harmful_1", scope="slice_mean", layer=pd.NA, eta=0.5,
                centered=False, n_a=8, n_b=8, k_a=1.0, k_b=1.0, d=64, mso=0.99, baseline=0.02)]
    )  # fmt: skip
    av = viz.activation_overlap(act)
    panel = "model=wa, eta=0.5"
    assert _series(av, panel, "useful-harmful_1") == ([1, 2], pytest.approx([0.4, 0.5]))
    assert "scope=layer" in av.caption and "centered=False" in av.caption
    centred = viz.activation_overlap(act, select={"centered": True})
    assert _series(centred, panel, "useful-harmful_1")[1] == pytest.approx([0.6, 0.7])
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
    assert report.report_main(parser.parse_args([str(small)])) == 2  # nothing in it: refused
    assert not (small / "report.html").exists()


def test_import_is_light():
    code = (
        "import sys, deltalens.viz; "
        "print([m for m in ('pandas', 'matplotlib', 'torch', 'circuitsvis', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
