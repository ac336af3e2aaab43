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
import sys
from collections import Counter
from pathlib import Path

from deltalens.atomic import atomic_write, write_json


def add_probe_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``deltalens probe`` options to ``parser`` (returns it)."""
    parser.add_argument("--model", required=True, help="HF checkpoint directory (or .gguf file)")
    parser.add_argument("--adapter", default=None, help="peft LoRA adapter directory trained on --model")
    parser.add_argument("--backend", default="transformer_lens", choices=["transformer_lens", "nnsight"])
    parser.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, ...)")
    parser.add_argument("--prompts", required=True, help="CSV, TSV or JSONL prompt file")
    parser.add_argument("--labels", required=True, help="label column of the prompt file")
    parser.add_argument("--text-column", default="text", help="text column (default: text)")
    parser.add_argument("--groups", default=None, help="group column: prompts of a group stay on one side")
    parser.add_argument(
        "--names", nargs="+", default=["blocks.*.hook_resid_post"], help="hook names or globs to probe"
    )
    parser.add_argument("--layers", default=None, help="layer spec: '65-90%%', '2:5', '3'")
    parser.add_argument("--positions", default="last", choices=["last", "mean"], help="token reduction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--test-size", type=float, default=0.25, help="fraction of groups held out")
    parser.add_argument("--folds", type=int, default=None, help="k-fold group cross-validation instead")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument(
        "--cache-activations", action="store_true", help="stream activations to OUT/activations (resumable)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def probe_main(args: argparse.Namespace) -> int:
    """Run ``deltalens probe``; returns the exit code (2 for bad input, with a message on stderr)."""
    try:
        return _run(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"deltalens probe: error: {msg}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import deltalens as dl
    from deltalens.data import load_prompts
    from deltalens.probes.collect import collect
    from deltalens.probes.linear import ProbeConfig, probe_layers

    out = Path(args.out)
    ps = load_prompts(
        args.prompts, text_column=args.text_column, label_column=args.labels, group_column=args.groups
    )
    if args.limit is not None:
        ps = ps[: args.limit]
    config = ProbeConfig(test_size=args.test_size, n_splits=args.folds, C=args.C, seed=args.seed)
    model = dl.load(args.model, adapter=args.adapter, backend=args.backend, dtype=args.dtype)
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
