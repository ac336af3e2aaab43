"""``deltalens probe``: linear probes per layer for a labelled prompt file, for scripted batteries.

Writes into ``--out``::

    probes.parquet          the tidy probe table (one row per hook and fold)
    directions.safetensors  one unit probe direction [d_model] per hook (for steering)
    summary.json            model provenance, arguments, class counts, best hook per kind

Example:
    deltalens probe --model ckpts/aligned --prompts prompts.csv --labels label --groups topic \\
        --names 'blocks.*.hook_resid_post' --out results/probe-aligned
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from deltalens.atomic import atomic_write, write_json

PROBE_OUTPUTS = frozenset(
    {"probes.parquet", "directions.safetensors", "summary.json", "activations", "report.html"}
)
"""What ``deltalens probe`` (and ``deltalens report`` on its folder) writes into ``--out``."""

INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
)
"""Errors in the arguments or input files: one line on stderr, exit code 2."""


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option's help, except where the default is None / off."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _open_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def add_probe_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``deltalens probe`` options to ``parser`` (returns it); ``--help`` shows every default."""
    parser.formatter_class = _DefaultsFormatter
    if not parser.description:
        parser.description = "Linear probes per layer for a labelled prompt file (see deltalens.probes.cli)."
    add = parser.add_argument
    add("--model", required=True, help="HF checkpoint directory (or .gguf file)")
    add("--adapter", default=None, help="peft LoRA adapter directory trained on --model (default: none)")
    add("--backend", default="transformer_lens", choices=["transformer_lens", "nnsight"], help="hook engine")
    add("--dtype", default="float32", help="model dtype (float32, bfloat16, float16, ...)")
    add("--prompts", required=True, help="CSV, TSV or JSONL prompt file")
    add("--labels", required=True, help="label column of the prompt file")
    add("--text-column", default="text", help="text column of the prompt file")
    add("--groups", default=None, help="group column: prompts of a group stay on one side (default: none)")
    add("--names", nargs="+", default=["blocks.*.hook_resid_post"], help="hook names or globs to probe")
    add("--layers", default=None, help="layer spec: '65-90%%', '2:5', '3' (default: every layer)")
    add("--positions", default="last", choices=["last", "mean"], help="token reduction")
    add("--batch-size", type=_positive_int, default=16, help="prompts per forward pass")
    add("--test-size", type=_open_fraction, default=0.25, help="fraction of groups held out")
    add("--folds", type=int, default=None, help="k-fold group cross-validation, k >= 2 (default: one split)")
    add("--C", type=float, default=1.0, help="inverse L2 strength of the probe")
    add("--seed", type=int, default=0, help="seed of the split and the probe")
    add("--limit", type=_positive_int, default=None, help="use only the first N prompts (default: all)")
    add("--cache-activations", action="store_true", help="stream activations to OUT/activations (resumable)")
    add(
        "--out",
        required=True,
        help="output folder: new, empty, or a previous `deltalens probe` output (checked before any work)",
    )
    add("--quiet", action="store_true", help="no progress bars")
    return parser


def check_out(out: str | Path) -> Path:
    """``--out`` as a path, refused before any work unless it is new, empty or a probe output.

    Raises:
        NotADirectoryError: ``out`` is a file.
        FileExistsError: ``out`` holds files ``deltalens probe`` does not write, or a
            ``summary.json`` another command wrote.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out: {str(out)!r} is a file; pass a new or empty folder")
    if not out.is_dir():
        return out
    foreign = sorted(
        p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in PROBE_OUTPUTS
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"--out: {str(out)!r} is not empty and is not a `deltalens probe` output (it holds {shown}); "
            "pass a new or empty folder"
        )
    summary = out / "summary.json"
    if summary.is_file():
        try:
            command = json.loads(summary.read_text(encoding="utf-8")).get("command")
        except (OSError, ValueError, AttributeError):
            command = None
        if command != "probe":
            raise FileExistsError(
                f"--out: {str(summary)!r} was not written by `deltalens probe` (command: {command!r}); "
                "pass a new or empty folder"
            )
    return out


def probe_main(args: argparse.Namespace) -> int:
    """Run ``deltalens probe``; returns the exit code (2 for bad input, with a message on stderr).

    With ``args.debug`` (``deltalens --debug probe ...``) an input error propagates with its traceback.
    """
    try:
        return _run(args)
    except INPUT_ERRORS as e:
        if getattr(args, "debug", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"deltalens probe: error: {msg}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import deltalens as dl
    from deltalens.data import load_prompts
    from deltalens.hooks.names import parse_layers
    from deltalens.probes.collect import collect
    from deltalens.probes.linear import ProbeConfig, probe_layers

    out = check_out(args.out)
    ps = load_prompts(
        args.prompts, text_column=args.text_column, label_column=args.labels, group_column=args.groups
    )
    if args.limit is not None:
        ps = ps[: args.limit]
    config = ProbeConfig(test_size=args.test_size, n_splits=args.folds, C=args.C, seed=args.seed)
    model = dl.load(args.model, adapter=args.adapter, backend=args.backend, dtype=args.dtype)
    parse_layers(args.layers, model.n_layers)  # a bad --layers fails before the forward passes
    acts = collect(
        model,
        ps,
        args.names,
        args.positions,
        batch_size=args.batch_size,
        out=out / "activations" if args.cache_activations else None,
        progress=not args.quiet,
    )
    res = probe_layers(acts, names=args.names, layers=args.layers, config=config)

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "probes.parquet", lambda p: res.table.to_parquet(p, index=False))
    directions = {k: v.float().contiguous() for k, v in res.directions.items()}
    atomic_write(out / "directions.safetensors", lambda p: save_file(directions, p))
    summary = {
        "command": "probe",
        "arguments": {k: v for k, v in vars(args).items() if not callable(v)},
        "model": model.provenance.to_dict(),
        "n_prompts": len(ps),
        "class_counts": dict(Counter(str(x) for x in ps.labels)),
        "n_groups": len(set(ps.groups)) if args.groups else None,
        **res.to_dict(),
    }
    write_json(out / "summary.json", summary)
    if not args.quiet:
        print(res)
        print(f"wrote {out / 'probes.parquet'}, {out / 'directions.safetensors'}, {out / 'summary.json'}")
    return 0
