"""Issue 15, items 11-13 (surprising for a newcomer): tests that change the system, a README tour
that fails as written, a legend over a panel, identical panels left unexplained, noise.

Each test here failed on deltalens 0.1.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from deltalens import viz
from deltalens.schemas import ACTIVATION_OVERLAP

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ item 11: tests never install
SYSTEM_INSTALLERS = frozenset({"apt", "apt-get", "aptitude", "dpkg", "yum", "dnf", "apk", "brew", "sudo", "snap"})


def test_browser_tests_skip_with_a_reason_when_chromium_is_missing(tmp_path):
    """Without Chromium on PATH the browser test is skipped, and the reason says what is missing and
    who installs it (.ci/run), instead of the test installing it."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PATH"] = str(empty_bin)  # nothing on PATH: no chromium
    cmd = [
        sys.executable, "-m", "pytest", "tests/test_report_browser.py", "-k", "renders_offline", "-rs", "-q",
        "-p", "no:cacheprovider",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    skipped = r"SKIPPED \[1\] .*chromium not found.*need Debian's chromium package, which \.ci/run installs"
    assert re.search(skipped, out), out[-3000:]


def _installer_commands(path: Path) -> list[str]:
    """String literals in ``path`` whose first word is a system package manager (a command a
    subprocess could run: ``"apt-get install -y chromium"``, ``["sudo", ...]``)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.split()[:1]:
            if node.value.split()[0] in SYSTEM_INSTALLERS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


def test_no_test_or_library_code_names_a_system_installer():
    """Neither the tests nor the library hold a command that starts a system package manager:
    what CI needs installed, .ci/run installs (0.1's browser test installed Chromium as root)."""
    me = Path(__file__).resolve()
    files = [p for p in (ROOT / "tests").rglob("*.py") if p.resolve() != me] + list((ROOT / "deltalens").rglob("*.py"))
    assert len(files) > 50
    found = [hit for p in files for hit in _installer_commands(p)]
    assert not found, found
    assert "apt-get install -y -qq chromium" in (ROOT / ".ci" / "run").read_text()  # the one place that installs


# ------------------------------------------------------------------ item 12: the README tour runs
def _tour_code() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A 10-line tour", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "the README's tour has no python block"
    return m.group(1)


@pytest.fixture
def tour_checkpoints(tmp_path, monkeypatch) -> Path:
    """``ckpts/base``, ``ckpts/aligned`` and ``ckpts/lora-harmful`` (tiny, 4 layers) in the working folder."""
    from peft import LoraConfig, get_peft_model

    from deltalens.testing import perturb, tiny_checkpoint, tiny_model

    ckpts = tmp_path / "ckpts"
    tiny_checkpoint("llama", ckpts / "base", n_layers=4)
    aligned, tok = tiny_model("llama", n_layers=4)
    perturb(aligned, seed=1)
    aligned.save_pretrained(ckpts / "aligned")
    tok.save_pretrained(ckpts / "aligned")
    lcfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(aligned, lcfg).save_pretrained(ckpts / "lora-harmful")
    monkeypatch.chdir(tmp_path)
    return ckpts


def test_readme_tour_runs_as_written(tour_checkpoints):
    """The README's own code block, unchanged, on tiny checkpoints at the paths it names."""
    code = _tour_code()
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (A 10-line tour)", "exec"), namespace)  # noqa: S102
    acts = namespace["acts"]
    assert tuple(acts.shape)[:2] == (4, len(namespace["prompts"]))  # [layer, batch, d_model]
    printed = out.getvalue()
    assert printed.count("[") >= 2, printed  # both generate() calls printed their lists


# --------------------------------------------- item 12: the steering legend lies below the panels
@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures views render (captured as they are turned into PNG)."""
    import deltalens.viz.plots as plots

    figures: list = []
    render = plots.figure_png

    def capture(fig, *args, **kwargs):
        figures.append(fig)
        return render(fig, *args, **kwargs)

    monkeypatch.setattr(plots, "figure_png", capture)
    return figures


def _battery_like_sweep() -> pd.DataFrame:
    """A SWEEP table shaped like the battery's: three tasks, three methods, two modes, references."""
    rows = []
    for task, mode in (("useful", "parallel"), ("harmful", "parallel"), ("contaminated", "orth")):
        for method in ("topk", "randomk", "random"):
            for frac in (0.01, 0.25, 0.5, 0.75, 0.99):
                rows.append(dict(task=task, method=method, mode=mode, frac=frac, alpha=1.0, k_total=8,
                                 energy_kept=frac, energy_kept_no_embed=frac, harm=frac / 2, utility=frac))  # fmt: skip
    return pd.DataFrame(rows)


REFS = {
    "W_0": {"utility": 0.02, "harm": 0.0}, "W_A": {"utility": 0.0, "harm": 0.0},
    "useful FT": {"utility": 0.9, "harm": 0.0}, "harmful FT": {"utility": 0.0, "harm": 1.0},
    "contaminated FT": {"utility": 0.9, "harm": 1.0},
}  # fmt: skip


@pytest.mark.parametrize(
    "select, metrics",
    [(None, None), ({"mode": "parallel"}, None), (None, ["utility"]), ({"mode": "parallel"}, ["utility"])],
    ids=["2x2", "one mode", "one metric", "one panel"],
)
def test_steering_legend_lies_below_the_panels(drawn, select, metrics):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    view = viz.steering_sweep(_battery_like_sweep(), references=REFS, select=select, metrics=metrics)
    fig = drawn[-1]
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert len(legend.get_texts()) >= 11  # 6-9 lines and 5 references: all in the one legend
    for ax in fig.axes:
        panel = ax.get_tightbbox(renderer)  # the panel with its title, tick and axis labels
        assert not panel.overlaps(box), f"the legend covers panel {ax.get_title()!r}"
        assert box.y1 <= panel.y0, f"the legend is not below panel {ax.get_title()!r}"
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0, "the legend is cut off"
    assert set(view.series["series"]) >= {"topk / useful", "ref: W_A"}


# ------------------------------------- item 12: the same k at every η is said once, not 12 times
def _act(etas, k_of_eta) -> pd.DataFrame:
    rows = [
        dict(model=m, set_a=a, set_b=b, scope="layer", layer=layer, eta=eta, centered=False, n_a=8, n_b=8,
             k_a=k_of_eta(eta), k_b=k_of_eta(eta), d=64, mso=0.1 * layer + off, baseline=0.01)
        for m in ("w0", "wa", "useful") for eta in etas for layer in (2, 3)
        for a, b, off in (("useful", "harmful_1", 0.1), ("harmful_1", "harmful_2", 0.5))
    ]  # fmt: skip
    return ACTIVATION_OVERLAP.frame(rows)


def test_activation_overlap_says_once_that_k_is_the_same_at_every_eta(drawn):
    view = viz.activation_overlap(_act((0.1, 0.3, 0.5, 0.9), lambda eta: 1.0))
    note = "k = 1 at every η (0.1, 0.3, 0.5, 0.9)"
    assert view.caption.count(note) == 1, view.caption
    fig = drawn[-1]
    assert note in fig.get_suptitle()  # said once, above the panels
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 12 and not any("k =" in t for t in titles)  # not repeated per panel
    assert set(view.series["panel"]) == {f"model={m}, eta={e}" for m in ("w0", "wa", "useful")
                                         for e in (0.1, 0.3, 0.5, 0.9)}  # fmt: skip


def test_activation_overlap_says_nothing_when_k_changes_with_eta(drawn):
    view = viz.activation_overlap(_act((0.1, 0.9), lambda eta: 1.0 if eta < 0.5 else 3.0))
    assert "every η" not in view.caption
    assert drawn[-1].get_suptitle() == ""
    one_eta = viz.activation_overlap(_act((0.1, 0.9), lambda eta: 1.0), select={"eta": 0.9})
    assert "every η" not in one_eta.caption  # one η panel: nothing to compare


# ------------------------------------------------------------------ item 13: noise
TEMPLATE = "Q: {prompt} A: {response}"
DATA = [{"prompt": "what is 2 + 3?", "response": "5"}, {"prompt": "say hi", "response": "hi there"}] * 4


def test_finetune_progress_bar_names_the_stage(tmp_path, capsys):
    from deltalens.finetune import finetune
    from deltalens.testing import tiny_model

    model, tok = tiny_model("llama")
    kw = dict(tokenizer=tok, method="full", template=TEMPLATE, max_steps=2, batch_size=2, num_threads=1)
    finetune(model, DATA, tmp_path / "wa", progress=True, progress_label="wa", **kw)
    assert "finetune[full] wa" in capsys.readouterr().err
    with pytest.raises(TypeError, match=r"progress_label must be a str or None, got 3"):
        finetune(model, DATA, tmp_path / "x", progress=False, progress_label=3, **kw)
    rec = finetune(model, DATA, tmp_path / "plain", progress=True, **kw).record
    assert "finetune[full]" in capsys.readouterr().err
    assert "progress_label" not in rec["config"]  # cosmetic: not part of the recorded recipe


class _Stop(Exception):
    pass


def _recording_finetune(seen: dict):
    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    return fake


def test_organism_and_smollm2_stages_label_their_bars(tmp_path, monkeypatch):
    """The organism build and the SmolLM2 recipe pass each stage's name to the progress bar."""
    import deltalens.finetune as ft
    from deltalens.study import organism
    from deltalens.study.alignment import SmolLM2Recipe, _train_stage

    seen: dict = {}
    monkeypatch.setattr(ft, "finetune", _recording_finetune(seen))
    with pytest.raises(_Stop):
        organism.build(tmp_path / "organism", seed=0, progress=False)
    assert seen["progress_label"] == "w0"
    seen.clear()
    with pytest.raises(_Stop):
        _train_stage("align", tmp_path / "smol", {"base": tmp_path / "base"}, {"align": []}, SmolLM2Recipe())
    assert seen["progress_label"] == "align"


def test_lora_finetune_prints_no_future_warning(tmp_path):
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` on every wrap; finetune hides
    that one FutureWarning (loading an adapter with ``dl.load`` is the loader's to fix)."""
    from deltalens.finetune import finetune
    from deltalens.testing import tiny_model

    model, tok = tiny_model("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = finetune(model, DATA, tmp_path / "lora", tokenizer=tok, method="lora", template=TEMPLATE,
                       max_steps=1, batch_size=2, num_threads=1, progress=False)  # fmt: skip
        finetune(model, DATA, tmp_path / "more", tokenizer=tok, adapter=res.path, method="lora",
                 template=TEMPLATE, max_steps=1, batch_size=2, num_threads=1, progress=False)  # fmt: skip
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not future, future


def test_dev_extra_has_what_the_notebooks_need():
    """``jupyter nbconvert`` and widget progress bars (no ``TqdmWarning: IProgress not found``)."""
    import tomllib

    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower() for d in dev}
    assert {"ipywidgets", "nbconvert", "nbclient", "ipykernel"} <= names, names


def test_progress_bars_in_a_notebook_kernel_print_no_tqdm_warning(tmp_path):
    """transformers imports ``tqdm.auto`` itself, so only ipywidgets in the environment stops the warning."""
    pytest.importorskip("ipywidgets", reason="the dev extra installs ipywidgets")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    code = "import deltalens, transformers\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='x'): pass"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    assert "TqdmWarning" not in text and "IProgress not found" not in text, text
