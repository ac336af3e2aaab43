"""Edge attribution (EAP, EAP-IG), edge-patching faithfulness and the Circuit container.

The reference is a hand-written forward of the tiny GPT-2 / Llama from their Hugging Face weights
in raw torch, in which every node's input is built separately: ``x_v`` = the sum of the outputs of
every node computed before v (plus the attention output biases), and a zero leaf tensor added to it
whose gradient is d metric / d x_v. Keys and values of a group read the mean of its query heads'
inputs (the documented convention). Edge patching in the reference builds each input from the kept
sources' current outputs and the removed sources' corrupted outputs (the additive form; the library
subtracts differences from the live residual stream).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import deltalens as dl
from deltalens import circuits
from deltalens.circuits.graph import Circuit
from deltalens.testing import perturb, tiny_model

CLEAN = torch.tensor([[5, 17, 33, 8, 91, 40], [7, 250, 12, 64, 3, 99]])
CORRUPTED = torch.tensor([[5, 17, 120, 8, 91, 300], [7, 300, 12, 2, 3, 45]])


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].log_softmax(-1)[:, 7].sum() - logits[:, -1, 11].sum()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("edges")
    out = {}
    for arch in ("gpt2", "llama"):
        model, tok = tiny_model(arch)
        perturb(model, seed=3, scale=0.05)  # norm gains and biases away from 1 / 0
        model.save_pretrained(root / arch)
        tok.save_pretrained(root / arch)
        out[arch] = str(root / arch)
    return out


_loaded: dict[tuple[str, str], object] = {}


def _load(ckpts, arch: str, backend: str):
    key = (arch, backend)
    if key not in _loaded:
        _loaded[key] = dl.load(ckpts[arch], backend=backend)
    return _loaded[key]


# ---------------------------------------------------------------- the raw-torch reference
class Ref:
    """A raw-torch forward of the tiny model with one input per node."""

    def __init__(self, path: str) -> None:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(path).eval()
        self.cfg, self.arch = hf.config, hf.config.model_type
        self.p = {k: v.detach() for k, v in hf.state_dict().items()}
        self.gpt2 = self.arch == "gpt2"
        self.n_layers = self.cfg.num_hidden_layers
        self.h = self.cfg.num_attention_heads
        self.g = getattr(self.cfg, "num_key_value_heads", None) or self.h
        self.d = self.cfg.hidden_size
        self.dh = self.d // self.h

    def names(self) -> tuple[list[str], list[str]]:
        src = ["embed"]
        for layer in range(self.n_layers):
            src += [f"a{layer}.h{h}" for h in range(self.h)] + [f"m{layer}"]
        return src, src[1:] + ["logits"]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.gpt2:
            return self.p["transformer.wte.weight"][ids] + self.p["transformer.wpe.weight"][: ids.shape[1]]
        return self.p["model.embed_tokens.weight"][ids]

    def _norm(self, x: torch.Tensor, key: str) -> torch.Tensor:
        if self.gpt2:
            mu = x.mean(-1, keepdim=True)
            var = (x - mu).pow(2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + self.cfg.layer_norm_epsilon) * self.p[
                key + ".weight"
            ] + self.p[key + ".bias"]
        return (
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps) * self.p[key + ".weight"]
        )

    def _rope(self, x: torch.Tensor) -> torch.Tensor:  # x [b, p, d_head]
        theta = getattr(self.cfg, "rope_theta", None) or self.cfg.rope_parameters["rope_theta"]
        inv = 1.0 / theta ** (torch.arange(0, self.dh, 2).float() / self.dh)
        freqs = torch.arange(x.shape[1]).float()[:, None] * inv[None]
        emb = torch.cat([freqs, freqs], -1)
        half = torch.cat([-x[..., self.dh // 2 :], x[..., : self.dh // 2]], -1)
        return x * emb.cos() + half * emb.sin()

    def _qkv(self, layer: int, x: torch.Tensor, which: str, head: int) -> torch.Tensor:
        if self.gpt2:
            pre = f"transformer.h.{layer}"
            y = (
                self._norm(x, f"{pre}.ln_1") @ self.p[f"{pre}.attn.c_attn.weight"]
                + self.p[f"{pre}.attn.c_attn.bias"]
            )
            off = "qkv".index(which) * self.d + head * self.dh
            return y[..., off : off + self.dh]
        pre = f"model.layers.{layer}"
        w = self.p[f"{pre}.self_attn.{which}_proj.weight"][head * self.dh : (head + 1) * self.dh]
        return self._norm(x, f"{pre}.input_layernorm") @ w.T

    def attention(self, layer: int, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each head's result ``[b, p, d]`` from its own input ``xs[h]``."""
        per = self.h // self.g
        out = []
        for h in range(self.h):
            xg = torch.stack(xs[(h // per) * per : (h // per + 1) * per]).mean(0)
            q, k, v = (
                self._qkv(layer, xs[h], "q", h),
                self._qkv(layer, xg, "k", h // per),
                self._qkv(layer, xg, "v", h // per),
            )
            if not self.gpt2:
                q, k = self._rope(q), self._rope(k)
            s = q @ k.transpose(-1, -2) / math.sqrt(self.dh)
            s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
            z = s.softmax(-1) @ v
            if self.gpt2:
                w = self.p[f"transformer.h.{layer}.attn.c_proj.weight"][h * self.dh : (h + 1) * self.dh]
            else:
                w = self.p[f"model.layers.{layer}.self_attn.o_proj.weight"][
                    :, h * self.dh : (h + 1) * self.dh
                ].T
            out.append(z @ w)
        return out

    def o_bias(self, layer: int) -> torch.Tensor:
        return self.p[f"transformer.h.{layer}.attn.c_proj.bias"] if self.gpt2 else torch.zeros(self.d)

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if self.gpt2:
            pre = f"transformer.h.{layer}"
            n = self._norm(x, f"{pre}.ln_2")
            hid = n @ self.p[f"{pre}.mlp.c_fc.weight"] + self.p[f"{pre}.mlp.c_fc.bias"]
            hid = 0.5 * hid * (1 + torch.tanh(math.sqrt(2 / math.pi) * (hid + 0.044715 * hid**3)))  # gelu_new
            return hid @ self.p[f"{pre}.mlp.c_proj.weight"] + self.p[f"{pre}.mlp.c_proj.bias"]
        pre = f"model.layers.{layer}"
        n = self._norm(x, f"{pre}.post_attention_layernorm")
        gate = torch.nn.functional.silu(n @ self.p[f"{pre}.mlp.gate_proj.weight"].T)
        return (gate * (n @ self.p[f"{pre}.mlp.up_proj.weight"].T)) @ self.p[f"{pre}.mlp.down_proj.weight"].T

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        key, head = ("transformer.ln_f", "lm_head.weight") if self.gpt2 else ("model.norm", "lm_head.weight")
        w = self.p.get(head, self.p.get("transformer.wte.weight"))
        return self._norm(x, key) @ w.T

    def run(self, emb: torch.Tensor, node_input) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``node_input(target index, outputs so far, bias sum) -> x_v``; returns (logits, outputs)."""
        outs, bias, t = [emb], torch.zeros(self.d), 0
        for layer in range(self.n_layers):
            xs = []
            for _ in range(self.h):
                xs.append(node_input(t, outs, bias))
                t += 1
            outs += self.attention(layer, xs)
            bias = bias + self.o_bias(layer)
            outs.append(self.mlp(layer, node_input(t, outs, bias)))
            t += 1
        return self.unembed(node_input(t, outs, bias)), outs

    def grads(self, emb: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(d metric / d x_v for every target, every source output) with x_v = sum of upstream outputs."""
        n_t = self.n_layers * (self.h + 1) + 1
        leaves = [torch.zeros_like(emb, requires_grad=True) for _ in range(n_t)]
        logits, outs = self.run(emb, lambda t, outs, bias: sum(outs) + bias + leaves[t])
        return list(torch.autograd.grad(metric(logits), leaves)), [o.detach() for o in outs]

    def eap(self, clean: torch.Tensor, corrupted: torch.Tensor, steps: int | None = None) -> pd.DataFrame:
        e_clean, e_corr = self.embed(clean), self.embed(corrupted)
        with torch.no_grad():
            _, out_clean = self.run(e_clean, lambda t, outs, bias: sum(outs) + bias)
            _, out_corr = self.run(e_corr, lambda t, outs, bias: sum(outs) + bias)
        if steps is None:
            g, _ = self.grads(e_clean)
        else:
            runs = [self.grads(e_corr + k / steps * (e_clean - e_corr))[0] for k in range(1, steps + 1)]
            g = [sum(r[t] for r in runs) / steps for t in range(len(runs[0]))]
        src, tgt = self.names()
        rows = []
        n_src = self._n_src()
        for t, name in enumerate(tgt):
            for s in range(n_src[t]):
                rows.append((src[s], name, float(((out_corr[s] - out_clean[s]) * g[t]).double().sum())))
        return pd.DataFrame(rows, columns=["source", "target", "score"])

    def _n_src(self) -> list[int]:
        counts = []
        self.run(
            torch.zeros(1, 1, self.d), lambda t, outs, bias: counts.append(len(outs)) or sum(outs) + bias
        )
        return counts

    def patched(self, clean: torch.Tensor, corrupted: torch.Tensor, removed: set[tuple[str, str]]) -> float:
        """The metric with the ``removed`` edges reading the corrupted run's outputs."""
        src, tgt = self.names()
        with torch.no_grad():
            _, out_corr = self.run(self.embed(corrupted), lambda t, outs, bias: sum(outs) + bias)

            def node_input(t, outs, bias):
                parts = [out_corr[s] if (src[s], tgt[t]) in removed else o for s, o in enumerate(outs)]
                return sum(parts) + bias

            logits, _ = self.run(self.embed(clean), node_input)
        return float(metric(logits))


_refs: dict[str, Ref] = {}


def _ref(ckpts, arch: str) -> Ref:
    if arch not in _refs:
        _refs[arch] = Ref(ckpts[arch])
    return _refs[arch]


def _merged(got: Circuit, want: pd.DataFrame) -> pd.DataFrame:
    df = got.to_frame().merge(want, on=["source", "target"], suffixes=("", "_ref"), how="outer")
    assert not df[["score", "score_ref"]].isna().any().any(), "edge sets differ"
    return df


# ---------------------------------------------------------------- tests
ARCH_BACKEND = [(a, b) for a in ("gpt2", "llama") for b in ("nnsight", "transformer_lens")]


def test_reference_reproduces_the_model(ckpts):
    for arch in ("gpt2", "llama"):
        ref = _ref(ckpts, arch)
        with torch.no_grad():
            logits, _ = ref.run(ref.embed(CLEAN), lambda t, outs, bias: sum(outs) + bias)
        m = _load(ckpts, arch, "nnsight")
        torch.testing.assert_close(logits, m.logits(CLEAN), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(
            ref.p[next(k for k in ref.p if "norm" in k or "ln_1" in k)], torch.ones(ref.d)
        )


@pytest.mark.parametrize("arch,backend", ARCH_BACKEND)
def test_eap_scores_equal_the_reference(ckpts, arch, backend):
    m = _load(ckpts, arch, backend)
    c = circuits.edge_attribution(m, CLEAN, CORRUPTED, metric)
    df = _merged(c, _ref(ckpts, arch).eap(CLEAN, CORRUPTED))
    assert len(df) == len(c) == 54
    assert df["score_ref"].abs().max() > 1e-2
    assert (df["score"] - df["score_ref"]).abs().max() < 1e-4
    assert c.method == "eap" and c.metric == "metric" and c.meta["provenance"]


@pytest.mark.parametrize("arch,backend", [("llama", "nnsight"), ("gpt2", "transformer_lens")])
def test_eap_ig_equals_the_definition(ckpts, arch, backend):
    m = _load(ckpts, arch, backend)
    ref = _ref(ckpts, arch)
    one = circuits.edge_attribution(m, CLEAN, CORRUPTED, metric, method="eap-ig", steps=1)
    eap = circuits.edge_attribution(m, CLEAN, CORRUPTED, metric)
    assert (one.to_frame()["score"] - eap.to_frame()["score"]).abs().max() < 1e-6
    two = circuits.edge_attribution(m, CLEAN, CORRUPTED, metric, method="eap-ig", steps=2)
    df = _merged(two, ref.eap(CLEAN, CORRUPTED, steps=2))
    assert (df["score"] - df["score_ref"]).abs().max() < 1e-4
    assert (two.to_frame()["score"] - eap.to_frame()["score"]).abs().max() > 1e-3  # interpolation matters
    assert two.meta["steps"] == 2


@pytest.mark.parametrize("arch,backend", ARCH_BACKEND)
def test_faithfulness_full_empty_and_one_edge(ckpts, arch, backend):
    m = _load(ckpts, arch, backend)
    ref = _ref(ckpts, arch)
    c = circuits.edge_attribution(m, CLEAN, CORRUPTED, metric)
    f = circuits.faithfulness(m, c, CLEAN, CORRUPTED, metric, sizes=[0, len(c)])
    m_clean, m_corr = float(metric(m.logits(CLEAN))), float(metric(m.logits(CORRUPTED)))
    assert abs(m_clean - m_corr) > 1e-2
    assert abs(f["metric"].iloc[0] - m_corr) <= 1e-5 and abs(f["fraction"].iloc[0]) <= 1e-4
    assert abs(f["metric"].iloc[1] - m_clean) <= 1e-5 and abs(f["fraction"].iloc[1] - 1.0) <= 1e-4
    every = set(zip(c.to_frame()["source"], c.to_frame()["target"]))
    # kept edges matter only on a path embed -> ... -> logits (elsewhere a source sees corrupted inputs)
    paths = [[("embed", "logits")], [("embed", "a0.h1"), ("a0.h1", "a1.h2"), ("a1.h2", "logits")]]
    for kept in [*paths, [("embed", "m0"), ("m0", "logits")]]:
        df = pd.DataFrame(
            {
                "source": [s for s, _ in kept],
                "target": [t for _, t in kept],
                "score": [3.0, 2.0, 1.0][: len(kept)],
            }
        )
        got = circuits.faithfulness(m, Circuit(df, 2, 4), CLEAN, CORRUPTED, metric, sizes=[len(kept)])
        want = ref.patched(CLEAN, CORRUPTED, every - set(kept))
        assert abs(got["metric"].iloc[0] - want) < 1e-4, kept
        assert abs(want - m_corr) > 1e-4, kept  # keeping the edges changes something


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patching_one_edge_equals_the_reference(ckpts, arch):
    from deltalens.circuits.edges import Layout, node_outputs, patched_metric
    from deltalens.hooks.nodes import NodeModules

    m = _load(ckpts, arch, "nnsight")
    ref = _ref(ckpts, arch)
    lay = Layout(2, 4)
    corr = node_outputs(m, m.tokenize(CORRUPTED))
    for s, t in [("embed", "a0.h3"), ("a0.h2", "a1.h1"), ("a1.h0", "m1"), ("m1", "logits")]:
        removed = torch.zeros(len(lay.sources), len(lay.targets), dtype=torch.bool)
        removed[lay.sources.index(s), lay.targets.index(t)] = True
        got = patched_metric(m, NodeModules(m), m.tokenize(CLEAN), corr, removed, metric)
        assert abs(got - ref.patched(CLEAN, CORRUPTED, {(s, t)})) < 1e-4


def test_node_recomputation_matches_the_hooks(ckpts):
    from deltalens.hooks.nodes import NodeModules

    for arch, backend in ARCH_BACKEND:
        m = _load(ckpts, arch, backend)
        names = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"]
        names += [f"blocks.1.attn.hook_{c}" for c in "qkv"]
        cache = m.run_with_cache(CLEAN, names)
        with torch.no_grad():
            q, k, v = NodeModules(m).qkv(1, cache["blocks.1.hook_resid_pre"].clone())
            out = NodeModules(m).mlp(1, cache["blocks.1.hook_resid_mid"].clone())
        for name, x in zip(names[2:], (out, q, k, v)):
            torch.testing.assert_close(x, cache[name], atol=1e-5, rtol=1e-5)


def test_several_models_give_one_circuit_with_stages(ckpts):
    m = _load(ckpts, "llama", "nnsight")
    c = circuits.edge_attribution({"a": m, "b": m}, CLEAN, CORRUPTED, metric)
    assert c.stages == ["a", "b"] and len(c) == 108 and c.to_frame().columns[0] == "stage"
    a, b = c.stage("a"), c.stage("b")
    assert "stage" not in a.to_frame().columns
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    assert len(c.top(3)) == 6
    f = circuits.faithfulness({"a": m, "b": m}, c, CLEAN, CORRUPTED, metric, sizes=[54])
    assert list(f["stage"]) == ["a", "b"] and (f["fraction"] - 1).abs().max() < 1e-4
    with pytest.raises(ValueError, match="stages"):
        circuits.faithfulness(m, c, CLEAN, CORRUPTED, metric)
    with pytest.raises(KeyError, match="stage 'zz'"):
        c.stage("zz")


# ---------------------------------------------------------------- the container
def _hand(scores: dict[tuple[str, str], float]) -> Circuit:
    df = pd.DataFrame([(s, t, v) for (s, t), v in scores.items()], columns=["source", "target", "score"])
    return Circuit(df, n_layers=2, n_heads=4, method="eap", metric="m", meta={"note": "hand"})


def test_top_threshold_nodes_repr():
    c = _hand(
        {("embed", "a0.h1"): 0.5, ("a0.h1", "m1"): -2.0, ("m0", "logits"): 1.0, ("a1.h3", "logits"): 0.01}
    )
    top = c.top(2).to_frame()
    assert list(zip(top["source"], top["target"])) == [("a0.h1", "m1"), ("m0", "logits")]
    assert len(c.threshold(0.5)) == 3 and len(c.threshold(5)) == 0
    assert c.nodes == ["embed", "a0.h1", "m0", "a1.h3", "m1", "logits"]
    assert list(c.to_frame()["target_layer"]) == [0, 1, 2, 2] and c.to_frame()["source_layer"].iloc[0] == -1
    assert "edges=4" in repr(c) and "<table>" in c._repr_html_() and "a0.h1" in c._repr_html_()
    assert c.edge_set() == set(zip(c.to_frame()["source"], c.to_frame()["target"])) and len(c.edge_set()) == 4
    assert c.top(2).edge_set() == {("a0.h1", "m1"), ("m0", "logits")}
    with pytest.raises(ValueError, match="n=-1"):
        c.top(-1)
    with pytest.raises(ValueError, match="'x9'"):
        _hand({("x9", "logits"): 1.0})


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_save_load_round_trip(tmp_path, suffix, ckpts):
    m = _load(ckpts, "gpt2", "nnsight")
    c = circuits.edge_attribution({"x": m, "y": m}, CLEAN, CORRUPTED, metric, method="eap-ig", steps=1)
    path = c.save(tmp_path / f"c{suffix}")
    back = Circuit.load(path)
    pd.testing.assert_frame_equal(back.to_frame(), c.to_frame(), check_exact=True)
    assert (back.n_layers, back.n_heads, back.method, back.metric) == (2, 4, "eap-ig", "metric")
    assert back.meta == c.meta and back.stages == ["x", "y"]
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match=".csv"):
        c.save(tmp_path / "c.csv")


def test_diff_gained_lost_changed():
    a = _hand({("embed", "a0.h1"): 0.5, ("a0.h1", "m1"): -2.0, ("m0", "logits"): 1.0})
    b = _hand({("embed", "a0.h1"): 0.5 + 1e-9, ("a0.h1", "m1"): -1.0, ("a1.h3", "logits"): 0.3})
    d = circuits.diff(a, b, tol=1e-6)
    got = {(r.source, r.target): (r.status, r.delta) for r in d.itertuples()}
    assert got == {
        ("a1.h3", "logits"): ("gained", 0.3),
        ("m0", "logits"): ("lost", -1.0),
        ("a0.h1", "m1"): ("changed", 1.0),
    }
    assert list(d["status"]) == ["gained", "lost", "changed"]
    assert math.isnan(d.set_index("status").loc["gained", "score_a"])
    assert len(circuits.diff(a, b)) == 4  # tol=0 keeps the 1e-9 change
    with pytest.raises(ValueError, match="stages"):
        circuits.diff(Circuit(a.to_frame().assign(stage="s"), 2, 4), b)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "foo"}, "method='foo'"),
        ({"steps": 0, "method": "eap-ig"}, "steps=0"),
        ({"corrupted": CORRUPTED[:, :5]}, "different shapes"),
    ],
)
def test_bad_inputs_fail_before_any_work(ckpts, kwargs, match, monkeypatch):
    from deltalens.circuits import edges

    m = _load(ckpts, "gpt2", "nnsight")
    called = []
    monkeypatch.setattr(edges, "edge_scores", lambda *a, **k: called.append(1))
    args = {"clean": CLEAN, "corrupted": CORRUPTED, "metric": metric, **kwargs}
    with pytest.raises(ValueError, match=match) as err:
        circuits.edge_attribution(m, **args)
    assert "\n" not in str(err.value) and not called


def test_faithfulness_bad_sizes_and_circuit(ckpts):
    m = _load(ckpts, "gpt2", "nnsight")
    one = _hand({("embed", "logits"): 1.0})
    with pytest.raises(ValueError, match=r"sizes=\[-1\]"):
        circuits.faithfulness(m, one, CLEAN, CORRUPTED, metric, sizes=[-1])
    with pytest.raises(ValueError, match="different shapes"):
        circuits.faithfulness(m, one, CLEAN, CORRUPTED[:, :4], metric)
    with pytest.raises(TypeError, match="not a Circuit"):
        circuits.faithfulness(m, one.to_frame(), CLEAN, CORRUPTED, metric)
    with pytest.raises(ValueError, match="a1.h0 -> a0.h1 is not an edge"):
        circuits.faithfulness(m, _hand({("a1.h0", "a0.h1"): 1.0}), CLEAN, CORRUPTED, metric)


def test_unsupported_arch_is_refused(tmp_path):
    from deltalens.testing import tiny_checkpoint

    m = dl.load(tiny_checkpoint("gemma3", tmp_path / "g"), backend="nnsight")
    with pytest.raises(ValueError, match="'gemma3_text'.*supported: gpt2, llama"):
        circuits.edge_attribution(m, CLEAN, CORRUPTED, metric)


def test_default_faithfulness_sizes():
    """0, then 1 / 2 / 5 per decade below n, then n itself: sorted, distinct, both ends included."""
    from deltalens.circuits.edges import default_sizes

    assert default_sizes(207) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 207]
    assert default_sizes(50) == [0, 1, 2, 5, 10, 20, 50] and default_sizes(1) == [0, 1] and default_sizes(0) == [0]
    for n in range(1, 1200, 37):
        sizes = default_sizes(n)
        assert sizes[0] == 0 and sizes[-1] == n and sizes == sorted(set(sizes))
