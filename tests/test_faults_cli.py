"""Issue 15, the command line and the basis arguments: clear one-line errors before any work.

Item 8 (frac): a basis fraction / η / k of the wrong type or range fails naming the argument, the
value and the allowed range, before any SVD. Item 9: every subcommand prints one line for a usage
error and exits 2; ``--debug`` (before or after the subcommand) shows the traceback. Item 10:
``probe`` checks ``--out`` before any compute; ``report`` refuses folders that are not results and
writes nothing. Item 12 (report): the Summary's verdicts and evaluations are HTML tables.
Item 14: ``--help`` states defaults, the output folder and the cache; the README documents
``demo`` and ``organism show``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deltalens
from deltalens.cli import main
from deltalens.interventions import energy, random_k, random_like, top_k, weight_delta

README = Path(__file__).resolve().parents[1] / "README.md"


# -- item 8: basis arguments -----------------------------------------------------------------------


@pytest.fixture
def delta():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(12, 8, generator=g), "b": torch.randn(12, generator=g)}
    return weight_delta(a, {n: v + 0.1 * torch.randn(v.shape, generator=g) for n, v in a.items()})


@pytest.fixture
def no_svd(monkeypatch):
    """Any SVD fails the test: the arguments must be refused before one runs."""

    def boom(*args, **kwargs):
        raise AssertionError("an SVD ran before the arguments were checked")

    monkeypatch.setattr(torch.linalg, "svd", boom)
    monkeypatch.setattr(torch, "svd_lowrank", boom)


BAD_FRACS = ["0.5", True, False, 0, 0.0, 1.5, -0.25, math.nan, math.inf, [0.5], torch.tensor(0.5)]


@pytest.mark.parametrize("build", [top_k, random_k, random_like], ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", BAD_FRACS, ids=repr)
def test_faults_basis_frac_names_argument_value_and_range(delta, no_svd, build, bad):
    with pytest.raises(ValueError) as err:
        build(delta, frac=bad)
    msg = str(err.value)
    assert "\n" not in msg
    assert build.__name__ in msg and "frac must be in (0, 1]" in msg
    assert repr(bad) in msg and type(bad).__name__ in msg  # the value, with its type ('0.5' is a str)


@pytest.mark.parametrize("bad", ["0.9", True, 0, 1.5, math.nan, None], ids=repr)
def test_faults_energy_eta_names_argument_value_and_range(delta, no_svd, bad):
    with pytest.raises(ValueError, match=r"energy: eta must be in \(0, 1\]") as err:
        energy(delta, bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", [True, 0, 2.0, "3"], ids=repr)
def test_faults_basis_k_is_a_positive_int_not_a_bool(delta, no_svd, bad):
    with pytest.raises(ValueError, match="top_k: k must be a positive int") as err:
        top_k(delta, k=bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="random_k: seed must be an int"):
        random_k(delta, 0.5, seed=True)


def test_faults_basis_good_numbers_still_accepted(delta):
    """numpy scalars and an int 1 are numbers in range; they give the same k as a plain float."""
    for frac in (np.float32(0.5), np.float64(0.5), 0.5):
        assert top_k(delta, frac=frac).k("w") == 4
    assert top_k(delta, frac=1).k("w") == 8 and top_k(delta, k=np.int64(3)).k("w") == 3
    assert energy(delta, np.float64(1.0)).eta == 1.0


# -- item 9: one line and exit 2 for usage errors, --debug for the traceback --------------------------


@pytest.fixture
def bad_config(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("preset: organism\nexperiments: [banana]\n")
    return p


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("deltalens ") and "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_faults_run_config_error_is_one_line_exit_2(bad_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(bad_config), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "deltalens run", "experiments", "banana")
    assert not out.exists()  # refused before any work


def test_faults_debug_flag_shows_the_error_before_or_after_the_command(bad_config, tmp_path):
    out = str(tmp_path / "out")
    from deltalens.study.battery import ConfigError

    for argv in (
        ["--debug", "run", str(bad_config), "--out", out],
        ["run", "--debug", str(bad_config), "--out", out],
        ["run", str(bad_config), "--out", out, "--debug"],
        ["--debug", str(bad_config), "--out", out],  # no subcommand: run
    ):
        with pytest.raises(ConfigError, match="experiments"):
            main(argv)


def test_faults_every_subcommand_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "broken.yaml").write_text("preset: [unclosed\n  - x: :\n")
    cases = {
        "run": (["run", str(tmp_path / "missing.yaml")], "missing.yaml"),
        "run yaml": (["run", str(tmp_path / "broken.yaml"), "--out", str(tmp_path / "o")], "broken.yaml"),
        "run out": (["run", "--out", str(tmp_path / "a-file")], "--out"),
        "organism": (["organism", "show", str(tmp_path / "nowhere")], "manifest.json"),
        "report": (["report", str(tmp_path / "nowhere")], "does not exist"),
        "probe": (
            ["probe", "--model", "m", "--prompts", str(tmp_path / "none.csv"), "--labels", "y"]
            + ["--out", str(tmp_path / "p")],
            "none.csv",
        ),
    }
    for name, (argv, needle) in cases.items():
        assert main(argv) == 2, name
        _one_error_line(capsys.readouterr().err, needle)


def test_faults_unexpected_error_is_one_line_exit_1_with_debug_hint(monkeypatch, capsys):
    import deltalens.cli as cli

    def crash(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "demo_main", crash)
    assert main(["demo"]) == 1
    line = _one_error_line(capsys.readouterr().err, "RuntimeError: disk on fire", "--debug")
    assert line.startswith("deltalens demo:")
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["demo", "--debug"])


def test_faults_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    import deltalens.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "demo_main", interrupted)
    assert main(["demo"]) == 130
    assert capsys.readouterr().err.strip() == "deltalens demo: interrupted"


def test_faults_console_command_prints_no_traceback(bad_config, tmp_path):
    """The real process: stderr is one line, the exit status 2; with --debug the traceback."""
    cmd = [sys.executable, "-m", "deltalens.cli", "run", str(bad_config), "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    _one_error_line(done.stderr, "experiments")
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


# -- item 10: outputs validated before work; report refuses non-results folders ---------------------


class Reached(Exception):
    """Raised by the stubbed model loader: the command got past its checks to the compute."""


@pytest.fixture
def probe_argv(tmp_path, monkeypatch):
    def load(*args, **kwargs):
        raise Reached("the model was loaded")

    monkeypatch.setattr(deltalens, "load", load)
    csv = tmp_path / "p.csv"
    csv.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(8)))
    return lambda out: [
        "probe",
        "--model",
        "m",
        "--prompts",
        str(csv),
        "--labels",
        "label",
        "--out",
        str(out),
    ]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_faults_probe_refuses_bad_out_before_any_compute(tmp_path, probe_argv, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    battery = tmp_path / "battery"
    battery.mkdir()
    (battery / "summary.json").write_text(json.dumps({"preset": "organism"}))
    for out, needle in ((a_file, "is a file"), (foreign, "thesis.tex"), (battery, "summary.json")):
        before = _listing(tmp_path)
        assert main(probe_argv(out)) == 2  # the stubbed loader was never reached
        _one_error_line(capsys.readouterr().err, "--out", needle)
        assert _listing(tmp_path) == before and a_file.read_text() == "keep me"


def test_faults_probe_accepts_new_empty_or_previous_probe_out(tmp_path, probe_argv):
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "summary.json").write_text(json.dumps({"command": "probe"}))
    (previous / "probes.parquet").write_bytes(b"")
    (previous / "activations").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new", empty, previous):
        with pytest.raises(Reached):
            main(["--debug", *probe_argv(out)])


def _checkpoint(root: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return root


def test_faults_report_refuses_non_results_folders_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    (other / "config.yaml").write_text("a: 1\n")
    ckpt = _checkpoint(tmp_path / "ckpt")
    a_file = tmp_path / "model.gguf"
    a_file.write_bytes(b"GGUF")
    cases = (
        (empty, "is empty"),
        (other, "not a results folder"),
        (ckpt, "model checkpoint"),
        (a_file, "file"),
    )
    for folder, needle in cases:
        before = _listing(tmp_path)
        assert main(["report", str(folder)]) == 2, folder
        _one_error_line(capsys.readouterr().err, "deltalens report", needle)
        assert _listing(tmp_path) == before  # no placeholder report.html


def test_faults_report_checks_output_before_writing(tmp_path, capsys):
    root = tmp_path / "results"
    root.mkdir()
    (root / "summary.json").write_text(json.dumps({"preset": "organism"}))
    assert main(["report", str(root), "-o", str(tmp_path / "report.txt")]) == 2
    _one_error_line(capsys.readouterr().err, "--output", ".html")
    assert _listing(tmp_path) == ["results", "results/summary.json"]
    assert main(["report", str(root)]) == 0 and (root / "report.html").is_file()


# -- item 12 (report): the Summary's verdicts and evaluations are tables ----------------------------


def test_faults_report_summary_renders_verdicts_and_evals_as_tables(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    summary = {
        "preset": "organism",
        "seconds": 12.5,
        "units": {"computed": 3, "cached": 0},
        "verdicts": [
            {"claim": "subspaces are not distinct", "replicates": True, "numbers": "MSO 0.91"},
            {"claim": "harm and utility move together", "replicates": False, "numbers": "r = 0.1"},
        ],
        "evals": [
            {"stage": "wa", "harm": 0.05, "utility": 0.5},
            {"stage": "harmful", "harm": 0.9, "utility": 0.4},
        ],
    }
    (root / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(root)]) == 0
    page = (root / "report.html").read_text()
    section = re.search(r'<section id="[a-z-]*summary">(.*?)</section>', page, re.S).group(1)
    assert "[{" not in section and "{&#x27;" not in section and "{'" not in section  # no Python reprs
    for header in ("claim", "replicates", "numbers", "stage", "harm", "utility"):
        assert f"<th>{header}</th>" in section, header
    assert "<td>subspaces are not distinct</td>" in section and "<td>harmful</td>" in section
    assert "units.computed" in section and "organism" in section  # the scalars stay a key / value table


# -- item 14: help text and README -----------------------------------------------------------------


def test_faults_run_help_states_output_folder_and_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DELTALENS_CACHE", str(tmp_path / "cache-here"))
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: ./deltalens-results)" in text
    assert "$DELTALENS_CACHE (default ~/.cache/deltalens" in text and "cache-here" in text


def test_faults_probe_help_every_option_has_help_and_default(capsys):
    import argparse

    from deltalens.probes.cli import add_probe_arguments

    parser = add_probe_arguments(argparse.ArgumentParser(prog="deltalens probe"))
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: transformer_lens)",
        "(default: float32)",
        "(default: text)",
        "(default: ['blocks.*.hook_resid_post'])",
        "(default: last)",
        "(default: 16)",
        "(default: 0.25)",
        "(default: 1.0)",
        "(default: 0)",
    ):
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text


def test_faults_readme_command_line_documents_demo_and_organism_show():
    text = README.read_text(encoding="utf-8")
    section = text.split("## The command line", 1)[1].split("\n## ", 1)[0]
    for command in ("deltalens demo", "deltalens organism show", "--debug", "DELTALENS_CACHE"):
        assert command in section, command
