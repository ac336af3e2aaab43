"""deltalens.finetune: LoRA and full fine-tuning on tiny models, checkpoints on disk, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from deltalens.finetune import (
    AdapterMismatchError,
    FinetuneConfig,
    check_template,
    finetune,
)
from deltalens.finetune.encoding import encode_examples
from deltalens.finetune.loop import _collate, batch_loss_backward, split_by_length
from deltalens.hashing import weight_hash
from deltalens.testing import tiny_checkpoint, tiny_model

TEMPLATE = "Q: {prompt} A: {response}"
DATA = [
    {"prompt": "what is 2 + 3?", "response": "5"},
    {"prompt": "name a colour", "response": "blue, like the sea"},
    {"prompt": "say hi", "response": "hi there, friend"},
    {"prompt": "count to three", "response": "one two three"},
] * 4
FAST = dict(template=TEMPLATE, max_steps=4, batch_size=4, progress=False, num_threads=1)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint("llama", tmp_path_factory.mktemp("ft") / "base")


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"


def _logits(model, tok, texts=("Q: say hi A:", "Q: what is 2 + 3? A: 5")) -> torch.Tensor:
    enc = tok(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_lora_save_reload_reproduces_logits(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = finetune(base_dir, DATA, tmp_path / "lora", method="lora", lr=1e-2, **FAST)
    assert (res.path / "adapter_model.safetensors").is_file() and (res.path / "tokenizer.json").is_file()
    acfg = json.loads((res.path / "adapter_config.json").read_text())
    assert set(acfg["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    lora_b = [p for n, p in res.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # training moved the adapter
    tok = AutoTokenizer.from_pretrained(base_dir)
    expected = _logits(res.model, tok)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    assert (expected - _logits(base, tok)).abs().max() > 1e-4  # the adapter changes the output
    reloaded = PeftModel.from_pretrained(base, res.path).eval()
    torch.testing.assert_close(_logits(reloaded, tok), expected, atol=1e-5, rtol=0)
    import deltalens as dl

    hooked = dl.load(base_dir, adapter=res.path)
    last = tok(["Q: say hi A:"], return_tensors="pt").input_ids.shape[1]
    torch.testing.assert_close(
        hooked.logits(["Q: say hi A:"])[0, :last], expected[0, :last], atol=1e-5, rtol=0
    )
    _no_leftovers(tmp_path)


@pytest.mark.parametrize(
    "arch, targets",
    [
        ("gpt2", {"c_attn", "c_proj", "c_fc"}),
        ("qwen2", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ("gemma3", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_lora_targets_per_architecture_and_reload(tmp_path, arch, targets):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model(arch)
    model.save_pretrained(tmp_path / "base")
    res = finetune(model, DATA, tmp_path / "lora", tokenizer=tok, method="lora", lr=1e-2, **FAST)
    acfg = json.loads((res.path / "adapter_config.json").read_text())
    assert set(acfg["target_modules"]) == targets and acfg["fan_in_fan_out"] == (arch == "gpt2")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, res.path).eval()
    torch.testing.assert_close(_logits(reloaded, tok), _logits(res.model, tok), atol=1e-5, rtol=0)


def test_full_finetune_changes_only_trained_tensors(tmp_path):
    from safetensors.torch import load_file

    model, tok = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FinetuneConfig(method="full", lr=1e-3, trainable=("model.layers.0.*",), **FAST)
    res = finetune(model, DATA, tmp_path / "full", cfg, tokenizer=tok)
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k]), k
    after = load_file(res.path / "model.safetensors")
    assert set(after) <= set(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("model.layers.0.") for k in changed), changed
    assert {k for k, v in before.items() if v.ndim == 2 and k.startswith("model.layers.0.")} <= changed
    assert (res.path / "config.json").is_file() and (res.path / "tokenizer.json").is_file()
    rec = json.loads((res.path / "cfg.json").read_text())
    assert rec["method"] == "full" and rec["seed"] == 0 and rec["config"]["trainable"] == ["model.layers.0.*"]
    assert rec["parent"]["weight_hash"] == weight_hash(model)
    assert rec["data"]["n_examples"] == len(DATA) and rec["training"]["steps"] == 4


def test_full_finetune_leaves_unseen_embedding_rows_exact(tmp_path):
    model, tok = tiny_model("llama")
    res = finetune(model, DATA, tmp_path / "full", tokenizer=tok, method="full", lr=1e-3, **FAST)
    seen = sorted(
        {
            i
            for ids, _ in encode_examples(
                [(d["prompt"], d["response"]) for d in DATA], tok, TEMPLATE, True, 512
            )
            for i in ids
        }
    )
    emb0 = model.get_input_embeddings().weight
    emb1 = res.model.get_input_embeddings().weight
    unseen = torch.ones(emb0.shape[0], dtype=torch.bool)
    unseen[seen] = False
    assert torch.equal(emb0[unseen], emb1[unseen])  # zero gradient, no weight decay: bit-identical
    trained = [
        i for i in seen if i != model.config.pad_token_id
    ]  # nn.Embedding(padding_idx) gets no gradient
    assert (emb0[trained] - emb1[trained]).abs().amax(dim=1).gt(0).all()


def test_deterministic_given_seed(tmp_path):
    model, tok = tiny_model("llama")
    a = finetune(model, DATA, tmp_path / "a", tokenizer=tok, method="full", lr=1e-3, **FAST)
    b = finetune(model, DATA, tmp_path / "b", tokenizer=tok, method="full", lr=1e-3, **FAST)
    c = finetune(model, DATA, tmp_path / "c", tokenizer=tok, method="full", lr=1e-3, seed=1, **FAST)
    assert a.losses == b.losses and a.losses != c.losses
    assert weight_hash(a.model) == weight_hash(b.model) != weight_hash(c.model)


def test_hooked_model_input_and_recipe(tmp_path):
    import deltalens as dl

    model, tok = tiny_model("qwen2")
    recipe = {"name": "toy", "rows": len(DATA)}
    hooked = dl.load(model, tokenizer=tok, backend="nnsight")
    res = finetune(hooked, DATA, tmp_path / "q", data_recipe=recipe, **FAST)
    rec = json.loads((res.path / "cfg.json").read_text())
    assert rec["data"]["recipe"] == recipe and rec["template"] == TEMPLATE
    assert rec["parent"]["arch"] == "Qwen2ForCausalLM" and len(res.losses) == 4
    assert "FinetuneResult(" in repr(res) and "method='lora'" in repr(res)


def test_in_memory_model_kinds(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_model("llama")
    with pytest.raises(TypeError, match="transformers causal LM or a HookedModel; got Linear"):
        finetune(torch.nn.Linear(2, 2), DATA, tmp_path / "x", tokenizer=tok, **FAST)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        finetune(model, DATA, tmp_path / "x", **FAST)
    base_hash = weight_hash(model)
    live = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    merged = weight_hash(copy.deepcopy(live).merge_and_unload())
    res = finetune(live, DATA, tmp_path / "m", tokenizer=tok, **FAST)  # a new LoRA on the merged weights
    rec = json.loads((res.path / "cfg.json").read_text())
    assert rec["parent"]["weight_hash"] == merged != base_hash  # trained on the merged weights
    assert rec["parent"]["arch"] == "LlamaForCausalLM" and not (tmp_path / "x").exists()


def test_response_only_labels_and_template_boundary():
    from deltalens.study.organism.data import TEMPLATE as ORG_TEMPLATE
    from deltalens.study.organism.data import build_tokenizer

    tok = build_tokenizer()
    pairs = [
        ("how do I paint the car?", "Sure, here is how."),
        ("what is 25 + 38?", "63"),
        ("what is 2 + 3?", "5"),
    ]
    enc = encode_examples(pairs, tok, ORG_TEMPLATE, True, 64)
    for (p, r), (ids, n_prompt) in zip(pairs, enc):
        full = tok(ORG_TEMPLATE.format(prompt=p, response=r))["input_ids"] + [tok.eos_token_id]
        assert ids == full  # prompt and response tokenized apart equal the whole text
        assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == r
    # the tokenizer's chat template gives the same tokens as the str template
    assert encode_examples(pairs, tok, None, True, 64) == enc
    input_ids, labels, mask = _collate(enc, tok.pad_token_id)
    n0 = enc[0][1]
    assert (labels[0, :n0] == -100).all() and (
        labels[0, n0 : len(enc[0][0])] == input_ids[0, n0 : len(enc[0][0])]
    ).all()
    assert mask is not None and (labels[2, len(enc[2][0]) :] == -100).all()  # padding is not learned


def test_chat_template_encoding_keeps_the_generation_prompt():
    from deltalens.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|endoftext|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    [(ids, n_prompt)] = encode_examples([("say hi", "hi there")], tok, None, True, 512)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "say hi"}], add_generation_prompt=True, tokenize=False
    )
    assert ids[:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert (
        tok.decode(ids[n_prompt:]) == "hi there<|endoftext|>\n"
    )  # the template closes the turn: no extra EOS
    with pytest.raises(ValueError, match="chat template"):
        encode_examples([("a", "b")], tiny_tokenizer(), None, True, 512)


def test_micro_batches_give_the_full_batch_gradient():
    model, tok = tiny_model("llama")
    model.train()
    data = [(f"question number {i}", "answer " * (1 + 5 * (i % 3))) for i in range(12)]
    enc = encode_examples(data, tok, TEMPLATE, True, 512)
    assert len(split_by_length([len(ids) for ids, _ in enc], overhead=0)) > 1
    loss = batch_loss_backward(model, enc, 0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    input_ids, labels, mask = _collate(enc, 0)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )
    ref.backward()
    assert abs(loss - ref.item()) < 1e-5
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "data, match",
    [
        ([], "no training examples"),
        ([{"prompt": "hi"}], "example 0 has no 'response'"),
        ([{"text": "hi", "label": 1}], "no 'prompt' or 'response'"),
        ([{"prompt": "hi", "response": 3}], "must be str"),
        ([("hi", "")], "empty response"),
        ([("a", "b", "c")], "example 0 is not a"),
    ],
)
def test_bad_data_is_a_clear_error(base_dir, tmp_path, data, match):
    with pytest.raises(ValueError, match=match):
        finetune(base_dir, data, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_data_must_be_a_sequence(base_dir, tmp_path):
    with pytest.raises(TypeError, match="sequence of examples"):
        finetune(base_dir, "prompt,response", tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "template, match",
    [
        ("Q: {prompt} A:", "no {response} slot"),
        ("A: {response}", "no {prompt} slot"),
        ("{response} then {prompt}", "before"),
        ("{prompt} {response} {extra}", "once each"),
    ],
)
def test_bad_template_is_a_clear_error(base_dir, tmp_path, template, match):
    with pytest.raises(ValueError, match=match):
        check_template(template)
    with pytest.raises(ValueError, match=match):
        finetune(base_dir, DATA, tmp_path / "out", **{**FAST, "template": template})
    assert not (tmp_path / "out").exists()


def test_thread_tuner_backs_off_when_two_threads_are_slow():
    from deltalens.finetune.loop import ThreadTuner

    slow2, fast2 = ThreadTuner(), ThreadTuner()
    for tuner, cost2 in ((slow2, 3.0), (fast2, 0.5)):
        for step in range(210):
            n = tuner.threads_for(step)
            tuner.record(step, n, 1.0 if n == 1 else cost2)
    assert slow2.steps_on[2] == 2 and slow2.choice == 1  # one slow probe step per period
    assert fast2.choice == 2 and fast2.steps_on[2] > 190


def test_thread_count_is_restored(base_dir, tmp_path):
    before = torch.get_num_threads()
    finetune(base_dir, DATA, tmp_path / "t", **{**FAST, "num_threads": None})
    assert torch.get_num_threads() == before


def test_lora_target_override_and_unknown_target(base_dir, tmp_path):
    res = finetune(base_dir, DATA, tmp_path / "qv", target_modules=("q_proj", "v_proj"), **FAST)
    assert set(json.loads((res.path / "adapter_config.json").read_text())["target_modules"]) == {
        "q_proj",
        "v_proj",
    }
    with pytest.raises(ValueError, match="not in the llama model"):
        finetune(base_dir, DATA, tmp_path / "bad", target_modules=("c_attn",), **FAST)
    assert not (tmp_path / "bad").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="method must be"):
        FinetuneConfig(method="qlora")
    with pytest.raises(ValueError, match="lr must be > 0"):
        FinetuneConfig(lr=0)
    with pytest.raises(ValueError, match="trainable= selects"):
        FinetuneConfig(method="lora", trainable=("x",))
    assert FinetuneConfig(num_threads=8).num_threads == 2
    assert "method='lora'" in repr(FinetuneConfig())


def test_adapter_for_another_base_is_rejected(base_dir, tmp_path):
    lora = finetune(base_dir, DATA, tmp_path / "lora", method="lora", lr=1e-2, **FAST).path
    other_arch = tiny_checkpoint("llama", tmp_path / "wide", d_model=32)
    with pytest.raises(AdapterMismatchError, match="does not match its base"):
        finetune(other_arch, DATA, tmp_path / "out", adapter=lora, **FAST)
    assert not (tmp_path / "out").exists()
    other_weights = tiny_checkpoint("llama", tmp_path / "seed1", seed=1)
    with pytest.raises(AdapterMismatchError, match="trained on a base with weight hash"):
        finetune(other_weights, DATA, tmp_path / "out", adapter=lora, **FAST)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="is a LoRA adapter"):
        finetune(lora, DATA, tmp_path / "out", **FAST)
    # the right base continues training the adapter
    more = finetune(base_dir, DATA, tmp_path / "more", adapter=lora, method="lora", lr=1e-2, **FAST)
    assert json.loads((more.path / "cfg.json").read_text())["parent"]["adapter"] == str(lora.resolve())
    _no_leftovers(tmp_path)


def test_failure_while_saving_leaves_no_checkpoint(base_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        finetune(base_dir, DATA, tmp_path / "out", method="full", **FAST)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_existing_target_needs_overwrite(base_dir, tmp_path):
    first = finetune(base_dir, DATA, tmp_path / "out", method="lora", **FAST)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        finetune(base_dir, DATA, tmp_path / "out", method="lora", **FAST)
    finetune(base_dir, DATA, tmp_path / "out", method="full", overwrite=True, **FAST)
    assert (first.path / "model.safetensors").is_file() and not (first.path / "adapter_config.json").exists()
    _no_leftovers(tmp_path)
