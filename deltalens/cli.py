"""The ``deltalens`` command line: ``run``, ``organism``, ``probe``, ``report``, ``demo``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> (module, add-arguments function, main function, help)
_SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "run": (
        "deltalens.study.battery.cli",
        "add_run_arguments",
        "run_main",
        "run the probe battery (default preset: organism)",
    ),
    "organism": (
        "deltalens.study.organism.cli",
        "add_organism_arguments",
        "organism_main",
        "build the built-in model organism family",
    ),
    "probe": (
        "deltalens.probes.cli",
        "add_probe_arguments",
        "probe_main",
        "scripted per-layer probes on your prompts",
    ),
    "report": (
        "deltalens.study.report",
        "add_report_arguments",
        "report_main",
        "build report.html from a results folder",
    ),
    "demo": ("deltalens.cli", "add_demo_arguments", "demo_main", "load a tiny model, cache, print a summary"),
}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``deltalens demo`` arguments to ``parser``."""
    parser.add_argument("--backend", default="transformer_lens", choices=["transformer_lens", "nnsight"])


def demo_main(args: argparse.Namespace) -> int:
    """Load a tiny model, cache its last-token residual stream and print a summary."""
    import deltalens as dl
    from deltalens.testing import tiny_model

    model, tok = tiny_model("llama")
    m = dl.load(model, tokenizer=tok, backend=args.backend)
    cache = m.run_with_cache(["import os", "def main():"], positions="last")
    print(m)
    print(cache)
    norms = cache.stack("blocks.*.hook_resid_post").norm(dim=-1)
    print("last-token residual norm by layer:", [round(float(x), 3) for x in norms.mean(1)])
    return 0


def _lookup(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(module), name)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="deltalens", description="What does fine-tuning do inside a language model?"
    )
    sub = parser.add_subparsers(dest="command")
    for name, (module, add, _main, help_) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_)
        # only the chosen subcommand's module is imported (keeps `deltalens --help` fast)
        if name in argv[:1]:
            _lookup(module, add)(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; with no subcommand, runs the default battery (``deltalens run``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in _SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    args = build_parser(argv).parse_args(argv)
    module, _add, fn, _help = _SUBCOMMANDS[args.command]
    return int(_lookup(module, fn)(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
