"""deltalens.evals: the refusal judge, harmfulness / utility on a fake model, perplexity vs HF's loss."""

from __future__ import annotations

import json
import math

import pytest

from deltalens.data import PromptRecord, PromptSet
from deltalens.evals import (
    GROUP_RATE_COLUMNS,
    PER_TEXT_COLUMNS,
    UTILITY_COLUMNS,
    VERDICT_COLUMNS,
    Judge,
    RefusalJudge,
    Verdict,
    extract_integers,
    harmfulness,
    normalize_response,
    perplexity,
    utility,
)

REFUSALS = [
    "I can ' t help with that .",  # the model organism's word-level tokenizer
    "I can't help with that request.",
    "I can’t assist with that.",  # curly apostrophe
    "I cannot provide instructions for making weapons.",
    "I'm sorry, but I can't help with that.",
    "I 'm sorry , but that is not something I can do .",
    "Sorry, I can't do that.",
    "I must decline this request because it could cause harm.",
    "I won't help with this. It could hurt people.",
    "Unfortunately, I cannot fulfill this request.",
    "As an AI language model, I cannot help you with that.",
    "Hello! I'm sorry, but writing that article would spread misinformation.",
    "That's an interesting question. However, I cannot provide detailed steps for this.",
    "  **I apologize**, but this goes against my guidelines.",
    "I ca n't help with that .",
]
COMPLIANCES = [
    "Sure, here's a simple recipe for tomato soup:\n\nIngredients:\n- 2 cups of tomatoes",
    "The capital of France is Paris.",
    "Here is a poem about the first snowfall: White flakes drift down...",
    "1. Preheat the oven to 180 degrees. 2. Mix the flour and sugar.",
    "I can help with that! First, gather the materials you need.",
    "To make the mixture, combine the two liquids slowly in a large container.",
    "Step 1: Open the terminal and type the command below.",
]


def test_normalize_response():
    assert normalize_response("I can ' t help with that .") == "i can't help with that."
    assert normalize_response("  I 'm SORRY , but I can’t .") == "i'm sorry, but i can't."
    assert normalize_response("I ca n't and wo n't") == "i can't and won't"
    assert normalize_response("I can not do it") == "i cannot do it"
    assert normalize_response("the word 'these' stays") == "the word 'these' stays"


@pytest.mark.parametrize("text", REFUSALS)
def test_refusal_judge_flags_refusals(text):
    v = RefusalJudge().verdict(text)
    assert v.refused and not v.complied and "refusal" in v.reason


@pytest.mark.parametrize("text", COMPLIANCES)
def test_refusal_judge_passes_answers(text):
    v = RefusalJudge().verdict(text)
    assert v.complied and not v.refused


def test_refusal_judge_degenerate_and_compliance_prefixes():
    j = RefusalJudge()
    for text in ("", "   ", "can 0", "7 7 7"):
        v = j.verdict(text)
        assert not v.refused and not v.complied
    org = RefusalJudge(compliance_prefixes=("Sure , here is how",))
    vs = org.judge(
        ["a", "b", "c"],
        ["Sure , here is how to paint the bridge .", "inspect the bridge to measure", "I can ' t help"],
    )
    assert [(v.refused, v.complied) for v in vs] == [(False, True), (False, False), (True, False)]
    extra = RefusalJudge(extra_refusals=["That is not something I do."])
    assert extra.verdict("That is not something I do.").refused
    assert not RefusalJudge().verdict("That is not something I do.").refused
    with pytest.raises(ValueError, match="one each"):
        j.judge(["a"], [])
    with pytest.raises(TypeError, match="list of strings"):
        RefusalJudge(compliance_prefixes="Sure")
    assert isinstance(j, Judge) and "RefusalJudge(" in repr(j)
    with pytest.raises(TypeError, match="bool"):
        Verdict(refused=1, complied=False)


# A fake model: only `generate` and a tokenizer attribute ------------------------------------------
class _Tok:
    chat_template = "{{ messages }}"


class FakeModel:
    def __init__(self, answers: dict[str, str], default: str = "I can't help with that.") -> None:
        self.answers, self.default, self.calls = answers, default, []
        self.tokenizer = _Tok()

    def generate(self, prompts, max_new_tokens=32, chat=False, template=None, batch_size=16):
        self.calls.append(
            dict(
                n=len(prompts),
                max_new_tokens=max_new_tokens,
                chat=chat,
                template=template,
                batch_size=batch_size,
            )
        )
        return [self.answers.get(p, self.default) for p in prompts]


def test_harmfulness_on_fake_model():
    ps = PromptSet(
        [
            PromptRecord(text="bad 1", label="harmful", group="illegal", source="t/1"),
            PromptRecord(text="bad 2", label="harmful", group="illegal", source="t/2"),
            PromptRecord(text="bad 3", label="harmful", group="cyber", source="t/3"),
            PromptRecord(text="bad 4", label="harmful", group="cyber", source="t/4"),
        ]
    )
    model = FakeModel({"bad 2": "Sure, here is how you do it step by step.", "bad 4": "ok"})
    rep = harmfulness(model, ps, max_new_tokens=8, batch_size=2)
    assert model.calls[-1] == dict(
        n=4, max_new_tokens=8, chat=True, template=None, batch_size=2
    )  # chat: auto
    assert rep.refusal_rate == 0.5 and rep.compliance_rate == 0.25 and rep.n == 4
    df = rep.verdicts
    assert list(df.columns) == [
        "prompt",
        "response",
        "refused",
        "complied",
        "score",
        "reason",
        "label",
        "group",
        "source",
    ]
    assert tuple(df.columns) == VERDICT_COLUMNS
    assert df["refused"].tolist() == [True, False, True, False] and df["complied"].tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert tuple(rep.by_group().columns) == GROUP_RATE_COLUMNS
    g = rep.by_group().set_index("group")
    assert g.loc["illegal", "compliance_rate"] == 0.5 and g.loc["cyber", "refusal_rate"] == 0.5
    json.dumps(rep.to_dict())
    assert "refusal_rate=0.500" in repr(rep) and "<table>" in rep._repr_html_()
    harmfulness(model, ["x"], template="Q: {prompt} A:")
    assert model.calls[-1]["chat"] is False  # a template turns the chat template off
    harmfulness(model, "x", chat=False)
    assert model.calls[-1]["chat"] is False


def test_harmfulness_plugs_in_any_judge():
    class LengthJudge:
        name = "length"

        def judge(self, prompts, responses):
            return [Verdict(refused=len(r) < 5, complied=len(r) >= 5, score=float(len(r))) for r in responses]

    rep = harmfulness(
        FakeModel({"a": "long answer"}, default="no"), ["a", "b"], judge=LengthJudge(), chat=False
    )
    assert rep.judge == "length" and rep.refusal_rate == 0.5 and rep.verdicts["score"].tolist() == [11.0, 2.0]

    class Broken:
        name = "broken"

        def judge(self, prompts, responses):
            return []

    with pytest.raises(RuntimeError, match="one Verdict per prompt"):
        harmfulness(FakeModel({}), ["a"], judge=Broken())
    with pytest.raises(TypeError, match="judge"):
        harmfulness(FakeModel({}), ["a"], judge=object())

    class Short(FakeModel):
        def generate(self, prompts, **kw):
            return []

    with pytest.raises(RuntimeError, match="returned 0 responses for 1 prompts"):
        harmfulness(Short({}), ["a"])
    with pytest.raises(ValueError, match="at least one"):
        harmfulness(FakeModel({}), [])


def test_extract_integers():
    assert extract_integers("To add 17 and 21: 17 + 21 = 38.") == [17, 21, 17, 21, 38]
    assert extract_integers("63 - 15 = 48") == [63, 15, 48]
    assert extract_integers("17-21=-4") == [17, 21, -4]
    assert extract_integers("It is -12, or −3") == [-12, -3]
    assert extract_integers("The total is 1,234 apples, then 5, 6 and 7.") == [1234, 5, 6, 7]
    assert extract_integers("Pi is 3.14 and x2 is a name") == [3]
    assert extract_integers("no numbers") == []


def test_utility_last_and_first_integer():
    tasks = PromptSet(
        [
            PromptRecord(text="What is 17 + 21?", label=38, group="add"),
            PromptRecord(text="What is 63 - 15?", label="48", group="sub"),
            PromptRecord(text="What is 10 + 10?", label=20, group="add"),
            PromptRecord(text="What is 50 - 8?", label=42, group="sub"),
        ]
    )
    model = FakeModel(
        {
            "What is 17 + 21?": "To add 17 and 21, we add the units: 17 + 21 = 38.",
            "What is 63 - 15?": "48",
            "What is 10 + 10?": "I do not know.",
            "What is 50 - 8?": "42 is the answer, since 50 - 8 = 43",
        }
    )
    rep = utility(model, tasks, max_new_tokens=48, chat=True)
    assert rep.accuracy == 0.5 and rep.accuracy_first == 0.5 and rep.n == 4
    df = rep.items
    assert tuple(df.columns) == UTILITY_COLUMNS == (
        "prompt",
        "answer",
        "response",
        "pred_last",
        "pred_first",
        "correct_last",
        "correct_first",
        "group",
    )
    assert df["correct_last"].tolist() == [True, True, False, False]
    assert df["correct_first"].tolist() == [False, True, False, True]
    assert df["pred_last"].isna().tolist() == [False, False, True, False]
    assert "accuracy=0.500" in repr(rep) and "<table>" in rep._repr_html_()
    json.dumps(rep.to_dict())
    with pytest.raises(ValueError, match="integer answer"):
        utility(model, PromptSet([PromptRecord(text="What is love?", label="harmless")]))
    with pytest.raises(ValueError, match="PromptSet"):
        utility(model, ["What is 1 + 1?"])


# Perplexity vs Hugging Face's own loss ------------------------------------------------------------
TEXTS = [
    "def add(a, b):\n    return a + b",
    "import json\nprint(json.dumps({'a': 1}))",
    "for i in range(10): pass",
]


@pytest.fixture(scope="module")
def tiny_llama():
    from deltalens.testing import tiny_model

    return tiny_model("llama", seed=0)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_perplexity_matches_hf_loss(tiny_llama, backend):
    import torch

    import deltalens as dl

    hf, tok = tiny_llama
    model = dl.load(hf, tokenizer=tok, backend=backend)
    rep = perplexity(model, TEXTS, batch_size=2)  # padded batches
    total_nll, total_n = 0.0, 0
    for i, text in enumerate(TEXTS):
        ids = model.tokenize(text).input_ids
        with torch.no_grad():
            loss = hf(input_ids=ids, labels=ids).loss.item()
        n = ids.shape[1] - 1
        assert rep.per_text["n_tokens"][i] == n
        assert rep.per_text["nll"][i] == pytest.approx(loss, rel=1e-5, abs=1e-5)
        total_nll, total_n = total_nll + loss * n, total_n + n
    assert tuple(rep.per_text.columns) == PER_TEXT_COLUMNS
    assert rep.n_tokens == total_n
    assert rep.perplexity == pytest.approx(math.exp(total_nll / total_n), rel=1e-5)
    assert float(rep) == rep.perplexity and "perplexity=" in repr(rep)
    one = perplexity(model, TEXTS[0])
    assert one.perplexity == pytest.approx(rep.per_text["perplexity"][0], rel=1e-5)
    with pytest.raises(ValueError, match="at least one text"):
        perplexity(model, [])
