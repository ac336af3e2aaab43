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
        "build the built-in model organism family, or show a built one",
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
    "demo": (
        "deltalens.cli",
        "add_demo_arguments",
        "demo_main",
        "smoke test: load a tiny random model, cache it, print a summary",
    ),
}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``deltalens demo`` arguments to ``parser``."""
    parser.add_argument(
        "--backend",
        default="transformer_lens",
        choices=["transformer_lens", "nnsight"],
        help="hook engine (default: transformer_lens)",
    )


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


DEBUG_FLAG = "--debug"
"""Global flag: show the traceback of an error (accepted before or after the subcommand)."""

USAGE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # ConfigError, CheckpointError, SchemaError, bad arguments
    KeyError,  # unknown hook names, columns (the message suggests the closest)
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
"""Errors in what the user passed (arguments, config, input files): one line on stderr, exit code 2."""


def _command_index(argv: Sequence[str]) -> int | None:
    """Index of the first token that is not a global option (the subcommand's place), or None."""
    for i, tok in enumerate(argv):
        if tok != DEBUG_FLAG:
            return i
    return None


def _strip_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (anywhere before a ``--``), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [tok for tok in argv[:end] if tok != DEBUG_FLAG] + argv[end:]
    return kept, len(kept) != len(argv)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="deltalens",
        description="What does fine-tuning do inside a language model?",
        epilog="With no subcommand, runs the default battery (deltalens run).",
    )
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command")
    i = _command_index(argv)
    chosen = argv[i] if i is not None else None
    for name, (module, add, _main, help_) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            DEBUG_FLAG,
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the full traceback of an error",
        )
        # only the chosen subcommand's module is imported (keeps `deltalens --help` fast)
        if name == chosen:
            _lookup(module, add)(p)
    return parser


def _with_command(argv: list[str]) -> list[str]:
    """``argv`` with ``run`` inserted where no subcommand (nor ``-h``) was given."""
    i = _command_index(argv)
    if i is None:
        return [*argv, "run"]
    if argv[i] in _SUBCOMMANDS or argv[i] in ("-h", "--help"):
        return argv
    return [*argv[:i], "run", *argv[i:]]


def error_message(e: BaseException) -> str:
    """The one-line text of an error (a ``KeyError``'s message without the repr quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return str(msg) or type(e).__name__


def _run_command(args: argparse.Namespace) -> int:
    """Run the chosen subcommand with deltalens's thread settings (see :mod:`deltalens.threads`)."""
    from deltalens import threads

    module, _add, fn, _help = _SUBCOMMANDS[args.command]
    with threads.use(getattr(args, "threads", None), what="--threads"):
        return int(_lookup(module, fn)(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; with no subcommand, runs the default battery (``deltalens run``).

    An error in what was passed (see :data:`USAGE_ERRORS`: a bad config, argument, path or input
    file) prints one line, ``deltalens CMD: error: ...``, on stderr and returns 2; any other error
    prints one line and returns 1; Ctrl-C returns 130. ``--debug`` (before or after the
    subcommand) lets the error propagate with its traceback instead.
    """
    argv, debug = _strip_debug(list(sys.argv[1:] if argv is None else argv))
    argv = _with_command(argv)
    args = build_parser(argv).parse_args(argv)
    args.debug = debug
    if debug:
        return _run_command(args)
    prog = f"deltalens {args.command}"
    try:
        return _run_command(args)
    except USAGE_ERRORS as e:
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print(
            f"{prog}: error: {type(e).__name__}: {error_message(e)} "
            f"(rerun with {DEBUG_FLAG} for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
