"""Issue 15, item 2: ``probes.collect`` never resumes a folder across live edits.

A collection folder records the model's active edits (``HookedModel.active_edits()``) when it
starts. Resuming (or reusing a finished folder) is refused whenever an edit is active now or was
active then — hook functions cannot be compared — and ``overwrite=True`` recomputes every row.
On deltalens 0.1 every refused case below resumed silently, mixing edited and unedited rows.
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

import deltalens as dl
from deltalens.interventions import add_steering, project, steer, top_k, weight_delta
from deltalens.probes import collect
from deltalens.testing import tiny_checkpoint

WORDS = "alpha beta gamma delta import json return value list dict class print".split()
HOOK = "blocks.1.hook_resid_post"


def _prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(n)]


PROMPTS = _prompts(12)


class Stop(Exception):
    pass


def _stop_after_first(info):
    if info.index == 0:
        raise Stop


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-collect")
    return tiny_checkpoint("llama", root / "a", seed=0), tiny_checkpoint("llama", root / "b", seed=1)


@pytest.fixture(scope="module")
def model(ckpts):
    return dl.load(ckpts[0], backend="nnsight")


@pytest.fixture(scope="module")
def delta(ckpts):
    return weight_delta(ckpts[0], ckpts[1])


def _collect(model, out, **kw):
    return collect(model, PROMPTS, HOOK, batch_size=2, shard_size=4, out=out, progress=False, **kw)


def _interrupted(model, out):
    with pytest.raises(Stop):
        _collect(model, out, on_shard=_stop_after_first)
    assert (out / "shard-00000.safetensors").is_file() and not (out / "shard-00001.safetensors").exists()


def _direction(model):
    return torch.ones(model.d_model)


def test_resume_under_a_steer_hook_is_refused(model, tmp_path):
    out = tmp_path / "acts"
    _interrupted(model, out)  # started without edits
    assert json.loads((out / "index.json").read_text())["edits"] == {"hooks": [], "weights": None}
    with steer(model, _direction(model), HOOK, alpha=5.0):
        with pytest.raises(ValueError, match=r"active edits now \(hooks on blocks\.1\.hook_resid_post\)"):
            _collect(model, out)
        # overwrite=True recomputes every row under the steer hook
        steered = _collect(model, out, overwrite=True)
        expect = collect(model, PROMPTS, HOOK, batch_size=2, progress=False)
    plain = collect(model, PROMPTS, HOOK, batch_size=2, progress=False)
    torch.testing.assert_close(steered[HOOK], expect[HOOK], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(steered[HOOK][:4], plain[HOOK][:4], atol=1e-2)  # the first shard is steered too
    index = json.loads((out / "index.json").read_text())
    assert index["edits"] == {"hooks": [HOOK], "weights": None}


def test_a_folder_started_under_a_steer_hook_is_not_resumed_without_it(model, tmp_path):
    out = tmp_path / "acts"
    with steer(model, _direction(model), HOOK, alpha=5.0):
        _interrupted(model, out)
    with pytest.raises(ValueError, match="written with edits active .*has none now"):
        _collect(model, out)
    # nor with the same hook again: hook functions cannot be compared
    with steer(model, _direction(model), HOOK, alpha=-5.0):
        with pytest.raises(ValueError, match="hook functions cannot be compared"):
            _collect(model, out)
    fresh = _collect(model, out, overwrite=True)
    plain = collect(model, PROMPTS, HOOK, batch_size=2, progress=False)
    torch.testing.assert_close(fresh[HOOK], plain[HOOK], atol=1e-5, rtol=1e-5)


def test_a_finished_steered_folder_is_not_reused(model, tmp_path):
    out = tmp_path / "acts"
    with steer(model, _direction(model), HOOK, alpha=5.0):
        _collect(model, out)
    with steer(model, _direction(model), HOOK, alpha=-5.0):  # same hook name, another function
        with pytest.raises(ValueError, match="resuming is refused"):
            _collect(model, out)


def test_resume_under_a_weight_edit_is_refused(model, delta, tmp_path):
    out = tmp_path / "acts"
    _interrupted(model, out)
    with project(model, delta, top_k(delta, frac=0.5)) as h:
        with pytest.raises(ValueError, match=re.escape(f"weight edit '{h.label}'")):
            _collect(model, out)
    assert model.active_edits() == {"hooks": [], "weights": None}


def test_a_folder_started_under_a_weight_edit_is_not_resumed_after_it(model, delta, tmp_path):
    out = tmp_path / "acts"
    with project(model, delta, top_k(delta, frac=0.5)) as h:
        _interrupted(model, out)
    assert json.loads((out / "index.json").read_text())["edits"] == {"hooks": [], "weights": h.label}
    with pytest.raises(ValueError, match="written with edits active"):
        _collect(model, out)
    with project(model, delta, top_k(delta, frac=0.5)):  # the same edit again: still refused
        with pytest.raises(ValueError, match="active edits now"):
            _collect(model, out)


def test_an_edit_added_during_a_collection_stops_it(model, tmp_path):
    handles = []

    def add_hook_after_first(info):
        if info.index == 0:
            handles.append(add_steering(model, _direction(model), HOOK, 5.0))

    try:
        with pytest.raises(RuntimeError, match="active edits changed while collecting"):
            _collect(model, tmp_path / "acts", on_shard=add_hook_after_first)
    finally:
        for h in handles:
            h.remove()
    index = json.loads((tmp_path / "acts" / "index.json").read_text())
    assert [s["index"] for s in index["shards"]] == [0]  # nothing was written under the new hook


def test_an_index_that_records_no_edits_is_not_resumed(model, tmp_path):
    out = tmp_path / "acts"
    _interrupted(model, out)
    index = json.loads((out / "index.json").read_text())
    del index["edits"]  # as written by deltalens 0.1
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not record which edits were active"):
        _collect(model, out)
    assert len(_collect(model, out, overwrite=True)) == len(PROMPTS)


def test_resume_without_edits_still_works(model, tmp_path):
    out = tmp_path / "acts"
    _interrupted(model, out)
    calls = []
    real = model.run_with_cache

    def counting(inputs, *a, **kw):
        calls.append(len(inputs))
        return real(inputs, *a, **kw)

    model.run_with_cache = counting
    try:
        acts = _collect(model, out)
    finally:
        del model.run_with_cache
    assert sum(calls) == len(PROMPTS) - 4  # only the missing shards
    ref = _collect(model, tmp_path / "ref")
    assert torch.equal(acts[HOOK], ref[HOOK])
