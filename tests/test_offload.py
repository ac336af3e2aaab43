"""A model split by ``device_map`` between CPU memory and disk offload computes what the unsplit one does.

A tiny two-layer Llama: embedding, layer 0, final norm and unembedding on ``cpu``, layer 1 offloaded
to ``disk`` (accelerate keeps its weights on the ``meta`` device and reads them in for its forward).
Caches, hook edits, gradients, ``state_dict`` and weight deltas must equal the unsplit model's
exactly, on both backends; the weights are checked against the checkpoint file itself.
"""

from __future__ import annotations

import pytest
import torch

import deltalens as dl

PROMPTS = ["the cat sat on the mat", "import os"]
SPLIT = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from deltalens.testing import perturb, tiny_checkpoint, tiny_model

    root = tmp_path_factory.mktemp("offload")
    base = tiny_checkpoint("llama", root / "base", n_layers=2)
    model, tok = tiny_model("llama", n_layers=2)
    perturb(model, seed=3)
    model.save_pretrained(root / "other")
    tok.save_pretrained(root / "other")
    return root, base, root / "other"


@pytest.fixture(scope="module", params=["nnsight", "transformer_lens"])
def pair(request, ckpts):
    root, base, _ = ckpts
    whole = dl.load(base, backend=request.param)
    split = dl.load(base, backend=request.param, device_map=SPLIT, offload_folder=root / f"off-{request.param}")
    return whole, split


def test_the_model_is_really_split(pair):
    _, split = pair
    assert split.hf_model.hf_device_map["model.layers.1"] == "disk"
    metas = {n for n, p in split.hf_model.named_parameters() if p.is_meta}
    assert metas and all(".layers.1." in n for n in metas)  # layer 1 only, and it is off the model


def test_caches_and_logits_equal_the_unsplit_model(pair):
    whole, split = pair
    names = ["hook_embed", "blocks.*.hook_resid_*", "blocks.1.attn.hook_pattern", "blocks.1.mlp.hook_post"]
    a = whole.run_with_cache(PROMPTS, names=names)
    b = split.run_with_cache(PROMPTS, names=names)
    assert sorted(a.keys()) == sorted(b.keys()) and len(list(a.keys())) >= 8
    for k in a.keys():
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(whole.logits(PROMPTS), split.logits(PROMPTS))


def test_hook_edits_and_gradients_equal_the_unsplit_model(pair):
    whole, split = pair
    edits = {
        "blocks.1.hook_resid_mid": lambda x: x * 0.5,  # inside the offloaded layer
        "blocks.0.attn.hook_z": lambda z: torch.where(torch.arange(z.shape[2])[None, None, :, None] == 0, 0, z),
    }
    with whole.hooks(edits):
        la = whole.logits(PROMPTS)
    with split.hooks(edits):
        lb = split.logits(PROMPTS)
    assert torch.equal(la, lb)
    assert not torch.equal(la, whole.logits(PROMPTS))  # the edit changed something

    def metric(logits):
        return logits[:, -1].logsumexp(-1).sum()

    ga = whole.gradients(PROMPTS, metric, names="blocks.1.hook_resid_pre")
    gb = split.gradients(PROMPTS, metric, names="blocks.1.hook_resid_pre")
    assert torch.equal(ga["blocks.1.hook_resid_pre"], gb["blocks.1.hook_resid_pre"])


def test_weights_and_deltas_equal_the_checkpoint(pair, ckpts):
    from safetensors.torch import load_file

    _, base, other = ckpts
    whole, split = pair
    on_disk = load_file(str(base / "model.safetensors"))
    state = split.state_dict()
    assert set(state) == set(whole.state_dict())
    assert not any(t.is_meta for t in state.values())
    for k, v in on_disk.items():
        assert torch.equal(state[k], v), k
    # ΔW from the split model equals ΔW computed from the two files by hand
    theirs = load_file(str(other / "model.safetensors"))
    d = dl.weight_delta(split, other)
    d_whole = dl.weight_delta(whole, other)
    for k in on_disk:
        assert torch.equal(d[k], theirs[k].float() - on_disk[k].float()), k
        assert torch.equal(d[k], d_whole[k]), k
    assert d.global_norm() > 0


def test_in_place_weight_edits_are_refused(pair):
    _, split = pair
    with pytest.raises(ValueError, match="offloaded by its device_map.*cannot be edited in place"):
        split.named_weights()


def test_bad_placement_arguments_fail_before_loading(ckpts, tmp_path):
    from deltalens.testing import tiny_model

    _, base, _ = ckpts
    with pytest.raises(ValueError, match=r"offload_folder=.* needs a device_map"):
        dl.load(base, backend="nnsight", offload_folder=tmp_path)
    with pytest.raises(ValueError, match=r"puts modules on 'disk'; pass offload_folder"):
        dl.load(base, backend="nnsight", device_map=SPLIT)
    with pytest.raises(ValueError, match=r"device_map=3 is not allowed"):
        dl.load(base, backend="nnsight", device_map=3)
    model, tok = tiny_model("llama")
    with pytest.raises(ValueError, match=r"applies to a checkpoint path"):
        dl.load(model, tokenizer=tok, backend="nnsight", device_map="cpu")
    with pytest.raises(ValueError, match=r"adapter=.*offloading device_map"):
        dl.load(base, backend="nnsight", adapter=tmp_path, device_map=SPLIT, offload_folder=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_offloaded_weights_are_read_one_module_at_a_time(pair):
    from deltalens.hooks.weights import canonical_name, iter_offloaded_weights

    _, split = pair
    hf = split.hf_model
    state = split.state_dict()
    seen = []
    for name, t in iter_offloaded_weights(hf):
        resident = {
            canonical_name(n).rpartition(".")[0]
            for n, p in hf.named_parameters()
            if ".layers.1." in canonical_name(n) and not p.is_meta
        }
        assert resident <= {name.rpartition(".")[0]}, (name, resident)  # only this tensor's module is read in
        assert torch.equal(t, state[name]), name
        seen.append(name)
    assert seen == list(state)
    metas = {n for n, p in hf.named_parameters() if p.is_meta}
    assert metas and all(".layers.1." in n for n in metas)  # back off the model afterwards


def test_nonfinite_offloaded_weights_are_refused_with_the_tensor_name(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    from deltalens.checkpoints import CheckpointError
    from deltalens.testing import tiny_checkpoint

    ckpt = tiny_checkpoint("llama", tmp_path / "m", n_layers=2)
    w = ckpt / "model.safetensors"
    state = load_file(str(w))
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("inf")
    save_file(state, str(w), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*infinite"):
        dl.load(ckpt, backend="nnsight", device_map=SPLIT, offload_folder=tmp_path / "off")
