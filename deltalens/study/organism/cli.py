"""Command line of the organism: ``deltalens organism build OUT [--seed N ...]`` and ``organism show OUT``.

Example:
    >>> import argparse
    >>> p = add_organism_arguments(argparse.ArgumentParser())
    >>> args = p.parse_args(["build", "organism-out", "--seed", "1"])
    >>> organism_main(args)                                   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_organism_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``build`` and ``show`` subcommands to ``parser`` and return it."""
    sub = parser.add_subparsers(dest="organism_command", required=True, metavar="{build,show}")
    b = sub.add_parser("build", help="build (or reuse) the organism family in OUT and check it")
    b.add_argument("out", help="output directory (finished stages are cached there)")
    b.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    b.add_argument("--split-seed", type=int, default=1234, help="held-out split seed (default 1234)")
    b.add_argument("--pre-steps", type=int, default=None, help="pretraining steps (default 800)")
    b.add_argument("--threads", type=int, default=None, help="torch threads, 1 or 2 (default: 1, the bitwise-reproducible build)")
    b.add_argument("--no-lora", action="store_true", help="skip the LoRA variants")
    b.add_argument("--force", action="store_true", help="retrain every stage, ignoring the cache")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    s = sub.add_parser("show", help="print the metrics and checks of a built family")
    s.add_argument("out", help="a directory holding manifest.json (what `organism build OUT` wrote)")
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return parser


def _check_out(args: argparse.Namespace, manifest: str) -> None:
    """``OUT`` is a folder (``show``: one holding the manifest), before any work.

    Raises:
        FileNotFoundError: ``show`` on a folder without a built family.
        NotADirectoryError: ``OUT`` is a file.
    """
    out = Path(args.out)
    if args.organism_command == "show":
        if not (out / manifest).is_file() and not (out.is_file() and out.name == manifest):
            raise FileNotFoundError(
                f"OUT: no {manifest} in {str(out)!r}, so no organism family was built there; "
                f"build one with `deltalens organism build {out}`"
            )
    elif out.exists() and not out.is_dir():
        raise NotADirectoryError(f"OUT: {str(out)!r} is a file; pass a folder to build the family in")


def organism_main(args: argparse.Namespace) -> int:
    """Run ``build`` or ``show``; print a summary. Returns 0 if every check holds, else 1."""
    from deltalens.study.organism import OrganismFamily, build
    from deltalens.study.organism.family import MANIFEST

    _check_out(args, MANIFEST)
    if args.organism_command == "show":
        family = OrganismFamily.from_manifest(args.out)
    else:
        overrides = {"seed": args.seed, "split_seed": args.split_seed}
        if args.threads is not None:
            overrides["num_threads"] = args.threads
        if args.pre_steps is not None:
            overrides["pre_steps"] = args.pre_steps
        if args.no_lora:
            overrides["lora"] = False
        family = build(args.out, progress=not args.quiet, force=args.force, **overrides)
    if args.json:
        print(json.dumps(family.to_dict(), indent=2))
    else:
        print(family.summary())
        print(f"manifest: {family.manifest_path}")
    if not family.passed:
        failed = [k for k, ok in family.checks.items() if not ok]
        print(f"organism checks failed: {failed}")
        return 1
    return 0
