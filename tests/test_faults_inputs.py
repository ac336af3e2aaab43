"""Bad inputs to the hook interface fail before any forward pass, naming the argument and what is allowed.

Each of these raised a bare library error (or was silently accepted) in deltalens 0.1.
"""

from __future__ import annotations

import pytest
import torch

import deltalens as dl
from deltalens.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    m, tok = tiny_model("llama")
    return dl.load(m, tokenizer=tok, backend="nnsight")


def test_dtype_as_a_name_works_and_a_bad_name_is_named(model):
    cache = model.run_with_cache("import os", names="blocks.0.hook_resid_post", dtype="float16")
    assert cache["blocks.0.hook_resid_post"].dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype='floot16' is not a floating torch dtype.*'bfloat16'"):
        model.run_with_cache("import os", dtype="floot16")


@pytest.mark.parametrize("bad", [True, False, 1.5, "first"])
def test_positions_must_be_none_last_int_or_slice(model, bad):
    with pytest.raises(ValueError, match=r"positions=.* is not allowed; expected None, 'last', an int or a slice"):
        model.run_with_cache("import os", positions=bad)


def test_empty_prompt_list(model):
    with pytest.raises(ValueError, match=r"inputs=\[\] is empty"):
        model.run_with_cache([])
    with pytest.raises(ValueError, match=r"inputs=\[\] is empty"):
        model.logits([])


def test_out_of_vocabulary_ids(model):
    with pytest.raises(ValueError, match=rf"token id {model.vocab_size} is outside the model's vocabulary \[0, {model.vocab_size}\)"):
        model.logits([[1, 2, model.vocab_size]])
    with pytest.raises(ValueError, match="token id -3 is outside"):
        model.logits(torch.tensor([[1, -3]]))


def test_prompt_longer_than_the_model_positions(model):
    n = model.max_positions + 1
    with pytest.raises(ValueError, match=rf"a prompt of {n} tokens is longer than the model's {model.max_positions} positions"):
        model.logits([[1] * n])


def test_valid_inputs_still_run(model):
    ids = [[5, 6, 7], [8, 9]]
    assert model.logits(ids).shape[:2] == (2, 3)
    assert model.run_with_cache("import os", positions=-1)["blocks.1.hook_resid_post"].ndim == 2
