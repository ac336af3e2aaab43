"""model.gradients equals torch.autograd on the plain Hugging Face model; template= / chat= on caching.

The reference keeps each activation with raw torch hooks on a freshly built model with the same
weights and differentiates the same metric with ``torch.autograd.grad``.
"""

from __future__ import annotations

import pytest
import torch

import deltalens as dl
from deltalens.testing import tiny_model

PROMPTS = ["import os", "def main(): return 1 + 2"]


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 7].sum() - logits[:, -1, 11].sum() + 0.1 * logits[:, -1].square().mean()


def _last_real_metric(mask: torch.Tensor):
    """The metric at each row's last real token (any padding side)."""
    last = mask.shape[1] - 1 - mask.flip(-1).long().argmax(-1)
    rows = torch.arange(mask.shape[0])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        sel = logits[rows, last]
        return sel[:, 7].sum() - sel[:, 11].sum() + 0.1 * sel.square().mean()

    return metric


def _reference_grads(arch: str, batch, layer: int, metric) -> dict[str, torch.Tensor]:
    model, _ = tiny_model(arch)
    blocks = model.transformer.h if arch == "gpt2" else model.model.layers
    embed = model.transformer.wte if arch == "gpt2" else model.model.embed_tokens
    kept: dict[str, torch.Tensor] = {}

    def keep_out(name):
        def h(mod, args, out):
            kept[name] = out[0] if isinstance(out, tuple) else out

        return h

    def keep_in(mod, args, kwargs):
        kept["resid_pre"] = args[0] if args else kwargs["hidden_states"]

    handles = [
        embed.register_forward_hook(keep_out("embed")),
        blocks[layer].register_forward_pre_hook(keep_in, with_kwargs=True),
        blocks[layer].register_forward_hook(keep_out("resid_post")),
    ]
    try:
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
        names = ["embed", "resid_pre", "resid_post"]
        grads = torch.autograd.grad(metric(logits), [kept[n] for n in names])
    finally:
        for h in handles:
            h.remove()
    return dict(zip(names, grads))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gemma3"])
def test_gradients_equal_autograd_on_the_hf_model(arch, backend, side):
    model, tok = tiny_model(arch)
    m = dl.load(model, tokenizer=tok, backend=backend)
    batch = m.tokenize(PROMPTS, padding_side=side)
    names = ["hook_embed", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    metric = _last_real_metric(batch.attention_mask)
    got = m.gradients(batch.input_ids, metric, names=names, attention_mask=batch.attention_mask)
    want = _reference_grads(arch, batch, 1, metric)
    for name, key in zip(names, ("embed", "resid_pre", "resid_post")):
        assert got[name].shape == want[key].shape
        assert want[key].abs().max() > 0
        torch.testing.assert_close(got[name], want[key], atol=1e-5, rtol=1e-5)
    # run_with_cache stays gradient-free
    cache = m.run_with_cache(PROMPTS, names="blocks.1.hook_resid_post")
    assert not cache["blocks.1.hook_resid_post"].requires_grad


def test_gradients_see_active_edits():
    model, tok = tiny_model("llama")
    m = dl.load(model, tokenizer=tok, backend="nnsight")
    name = "blocks.0.hook_resid_post"
    plain = m.gradients(PROMPTS, _metric, names=name)[name]
    with m.hooks({"blocks.1.hook_resid_pre": lambda x: x * 0}):  # cuts block 0 off from the logits
        cut = m.gradients(PROMPTS, _metric, names=name)[name]
    assert plain.abs().max() > 0 and cut.abs().max() == 0


def test_gradients_need_a_scalar_metric():
    model, tok = tiny_model("llama")
    m = dl.load(model, tokenizer=tok, backend="nnsight")
    with pytest.raises(ValueError, match="metric must return a scalar tensor"):
        m.gradients(PROMPTS, lambda lg: lg[:, -1], names="blocks.0.hook_resid_post")


def test_template_on_run_with_cache_and_logits():
    model, tok = tiny_model("llama")
    m = dl.load(model, tokenizer=tok, backend="nnsight")
    tpl = "Q: {prompt}\nA:"
    cache = m.run_with_cache(PROMPTS, names="blocks.0.hook_resid_post", positions="last", template=tpl)
    direct = m.run_with_cache([tpl.replace("{prompt}", p) for p in PROMPTS], names="blocks.0.hook_resid_post",
                              positions="last")
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], direct["blocks.0.hook_resid_post"])
    assert not torch.equal(cache["blocks.0.hook_resid_post"],
                           m.run_with_cache(PROMPTS, names="blocks.0.hook_resid_post", positions="last")[
                               "blocks.0.hook_resid_post"])
    torch.testing.assert_close(m.logits(PROMPTS[0], template=tpl), m.logits(tpl.replace("{prompt}", PROMPTS[0])))
    with pytest.raises(ValueError, match="chat=True but this tokenizer has no chat template"):
        m.logits(PROMPTS, chat=True)


def test_template_in_collect_matches_run_with_cache(tmp_path):
    from deltalens.probes import collect

    model, tok = tiny_model("llama")
    m = dl.load(model, tokenizer=tok, backend="nnsight")
    tpl = "Q: {prompt}\nA:"
    acts = collect(m, PROMPTS, names="blocks.1.hook_resid_post", template=tpl, progress=False)
    want = m.run_with_cache(PROMPTS, names="blocks.1.hook_resid_post", positions="last", template=tpl)
    torch.testing.assert_close(acts.stack()[:, 0], want["blocks.1.hook_resid_post"])
    out = tmp_path / "acts"
    collect(m, PROMPTS, names="blocks.1.hook_resid_post", template=tpl, out=out, progress=False)
    with pytest.raises(ValueError):  # another template is another collection: no silent resume
        collect(m, PROMPTS, names="blocks.1.hook_resid_post", template="> {prompt}", out=out, progress=False)
    with pytest.raises(ValueError, match="slot"):
        collect(m, PROMPTS, names="blocks.1.hook_resid_post", template="no slot", progress=False)


def _edited_metric(m, batch, metric, name: str, delta: torch.Tensor) -> float:
    with m.hooks({name: lambda x: x + delta.to(x.dtype)}):
        logits = m.logits(batch.input_ids, attention_mask=batch.attention_mask)
    return float(metric(logits))


def _central(m, batch, metric, name: str, u: torch.Tensor, h: float) -> float:
    """Central difference of the metric along ``u`` under an edit at ``name``."""
    return (_edited_metric(m, batch, metric, name, h * u) - _edited_metric(m, batch, metric, name, -h * u)) / (2 * h)


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_hooks_gradient_is_the_derivative_of_an_edit_there(arch, backend):
    """<grad, u> equals the central finite difference of the metric under the edit x + eps·u (float64 model).

    Covers the hooks that are views or computed values (per-head q / k / v / z / result, norm scales
    and normalised vectors, patterns): their gradient must be that of the tensor the forward goes on
    with, not of a side copy.
    """
    from deltalens.testing import perturb

    model, tok = tiny_model(arch)
    perturb(model, seed=3, scale=0.05)
    m = dl.load(model, tokenizer=tok, backend=backend, dtype=torch.float64)
    batch = m.tokenize(PROMPTS)
    metric = _last_real_metric(batch.attention_mask)
    names = [n for n in m.hook_names if n.startswith("blocks.0.") or n.startswith("ln_final")]
    grads, acts = (lambda r: (r[1], r[0]))(
        m.gradients(batch.input_ids, metric, names=names, attention_mask=batch.attention_mask,
                    return_activations=True)
    )
    gen = torch.Generator().manual_seed(0)
    eps = 2e-3  # not smaller: HF's eager attention takes its softmax in float32 even in a float64 model
    for name in names:
        u = torch.randn(acts[name].shape, generator=gen, dtype=torch.float64)
        fd = (4 * _central(m, batch, metric, name, u, eps / 2) - _central(m, batch, metric, name, u, eps)) / 3  # Richardson: the eps² term cancels
        got = float((grads[name].double() * u).sum())
        assert abs(got - fd) <= 3e-4 * max(1.0, abs(fd)), (name, got, fd)
    assert any(grads[n].abs().max() > 0 for n in names if n.endswith("hook_z"))
