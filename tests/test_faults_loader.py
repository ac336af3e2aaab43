"""Loader faults: corrupted, empty or incomplete files and bad arguments fail loudly, naming the cause.

Each of these loaded silently (or failed with a bare library error) in deltalens 0.1.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import deltalens as dl
from deltalens.checkpoints import CheckpointError
from deltalens.testing import tiny_checkpoint


def _adapter(base_dir, out_dir, targets=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(out_dir)
    return out_dir


def test_adapter_without_tensors_is_refused(tiny_dirs, tmp_path):
    a = _adapter(tiny_dirs["llama"], tmp_path / "a")
    save_file({}, str(a / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="no LoRA tensors"):
        dl.load(tiny_dirs["llama"], adapter=a, backend="nnsight")


def test_adapter_missing_a_target_module_is_refused(tiny_dirs, tmp_path):
    a = _adapter(tiny_dirs["llama"], tmp_path / "a")
    state = load_file(str(a / "adapter_model.safetensors"))
    dropped = {k: v for k, v in state.items() if "layers.1.self_attn.v_proj" not in k}
    assert len(dropped) < len(state)
    save_file(dropped, str(a / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"incomplete.*layers\.1\.self_attn\.v_proj"):
        dl.load(tiny_dirs["llama"], adapter=a, backend="nnsight")


def test_complete_adapter_still_loads(tiny_dirs, tmp_path):
    a = _adapter(tiny_dirs["llama"], tmp_path / "a")
    m = dl.load(tiny_dirs["llama"], adapter=a, backend="nnsight")
    assert m.provenance.adapter == str(a)


@pytest.mark.parametrize("how", ["zero_bytes", "truncated", "bad_header"])
def test_unreadable_weights_name_the_path(tmp_path, how):
    ckpt = tiny_checkpoint("llama", tmp_path / "m")
    w = ckpt / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes({"zero_bytes": b"", "truncated": raw[: len(raw) // 2], "bad_header": b"\xff" * 64 + raw[64:]}[how])
    with pytest.raises(CheckpointError, match="cannot read the weights") as e:
        dl.load(ckpt, backend="nnsight")
    assert str(ckpt) in str(e.value)


def test_junk_gguf_names_the_path(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="cannot read the weights") as e:
        dl.load(junk, backend="nnsight")
    assert "junk.gguf" in str(e.value)


def test_nonfinite_weights_are_refused_with_the_tensor_name(tmp_path):
    ckpt = tiny_checkpoint("llama", tmp_path / "m")
    w = ckpt / "model.safetensors"
    state = load_file(str(w))
    name = "model.layers.1.mlp.up_proj.weight"
    state[name][3, 5] = float("nan")
    save_file(state, str(w), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*NaN"):
        dl.load(ckpt, backend="nnsight")


def test_unknown_dtype_name_is_a_clear_error(tiny_dirs):
    with pytest.raises(ValueError, match=r"dtype='floot32' is not a torch dtype.*'bfloat16'"):
        dl.load(tiny_dirs["llama"], dtype="floot32")


def test_adapter_config_is_kept_when_complete(tiny_dirs, tmp_path):
    a = _adapter(tiny_dirs["gpt2"], tmp_path / "g", targets=("c_attn",))
    cfg = json.loads((a / "adapter_config.json").read_text())
    from transformers import AutoModelForCausalLM

    from deltalens.checkpoints import check_adapter

    assert check_adapter(a, AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"]))["r"] == cfg["r"]


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_loading_an_adapter_prints_no_future_warning(tiny_dirs, tmp_path, backend):
    import warnings

    a = _adapter(tiny_dirs["llama"], tmp_path / "a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dl.load(tiny_dirs["llama"], adapter=a, backend=backend)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
