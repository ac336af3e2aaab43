"""Generation speed on both backends against plain Hugging Face ``generate``, and load time TL / nnsight.

Model: the built-in organism's W_A with the ``lora_useful`` adapter merged (``--org``, default
/tmp/org2; ``--model`` takes any local checkpoint instead, with ``--adapter`` optional). Calls:

* ``hf``               ``AutoModelForCausalLM.generate`` on a separately loaded, untouched copy
                       (greedy, KV cache on) — the baseline;
* ``transformer_lens`` ``dl.load(..., backend="transformer_lens").generate_ids(...)``;
* ``nnsight``          the same on the nnsight backend;
* ``*+hook``           the same with an identity hook on ``blocks.0.hook_resid_post`` (hooks apply at
                       every step: the decoding loop re-runs the whole sequence, no KV cache), for
                       reference only (``--hooked``; it stops at end-of-sequence, so its tokens/s
                       count the tokens it decoded).

Every call decodes the same left-padded batch of ``--batch`` prompts for exactly ``--new`` tokens
(``min_new_tokens`` = ``max_new_tokens``, so an early end-of-sequence cannot shorten one call's work);
tokens/s counts ``batch × new``. The script checks that both backends produce HF's tokens exactly.

Timing is round-robin: each round runs every call once in an order rotated from round to round,
with an ``hf`` run before and after each call; a call's ratio in a round is its time over the
geometric mean of the two ``hf`` runs that bracket it. Medians over rounds are reported.
Load time: ``dl.load(W_A, adapter=...)`` alternately on each backend (``--load-reps`` each), medians
and the TL / nnsight ratio. Goals: generation within 1.3× of ``hf`` on both backends; TL load
within 2× of nnsight. Usage::

    python benchmarks/bench_generate.py                   # organism, batch 16 × 32 new tokens, 7 rounds
    python benchmarks/bench_generate.py --hooked          # + the hooked decoding loop
    python benchmarks/bench_generate.py --out benchmarks/bench_generate.json

Results: benchmarks/bench_generate.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BACKENDS = ("transformer_lens", "nnsight")
HOOK = "blocks.0.hook_resid_post"


def _prompts(args, n: int) -> list[str]:
    if args.model:
        return [f"Question {i}: what is {i} plus {2 * i}?" for i in range(n)]
    from deltalens.study.organism.data import GENERATION_TEMPLATE

    sets = json.loads((Path(args.org) / "prompts.json").read_text())
    texts = [*sets["harmful"], *sets["harmless"]]
    return [GENERATION_TEMPLATE.format(prompt=t) for t in texts[:n]]


def build(args) -> tuple[dict, dict]:
    """The untouched HF model, one deltalens model per backend, and the left-padded batch."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import deltalens as dl

    base = args.model or str(Path(args.org) / "wa")
    adapter = args.adapter if args.model else str(Path(args.org) / "lora_useful")
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if adapter:
        hf = PeftModel.from_pretrained(hf, adapter).merge_and_unload().eval()
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    enc = tok(_prompts(args, args.batch), padding=True, return_tensors="pt")
    models = {b: dl.load(base, adapter=adapter, backend=b) for b in BACKENDS}
    return {"hf": hf, "tok": tok, **models}, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def calls(objs: dict, enc: dict, args) -> dict:
    """name -> a function that decodes the batch and returns the new token ids."""
    import torch

    tok, n = objs["tok"], args.new

    def hf():
        with torch.inference_mode():
            out = objs["hf"].generate(
                **enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
        return out[:, enc["input_ids"].shape[1] :]

    def backend(name: str, hooked: bool):
        m = objs[name]

        def run():
            if not hooked:
                return m.generate_ids(enc["input_ids"], enc["attention_mask"], n, min_new_tokens=n)
            with m.hooks({HOOK: lambda x: None}):
                return m.generate_ids(enc["input_ids"], enc["attention_mask"], n)

        return run

    out = {"hf": hf, **{b: backend(b, False) for b in BACKENDS}}
    if args.hooked:
        out.update({f"{b}+hook": backend(b, True) for b in BACKENDS})
    return out


def _timed(fn, tokens: dict | None = None, name: str = "") -> float:
    t = time.perf_counter()
    out = fn()
    t = time.perf_counter() - t
    if tokens is not None:
        tokens[name] = int(out.numel())  # new tokens decoded (the hooked loop may stop early)
    return t


def rounds(fns: dict, args, tokens: dict) -> dict[str, dict[str, list[float]]]:
    """Round-robin timings: per call, its seconds and its ratio to the bracketing ``hf`` runs."""
    names = [k for k in fns if k != "hf"]
    res = {k: {"s": [], "ratio": []} for k in fns}
    _timed(fns["hf"], tokens, "hf")
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            before = _timed(fns["hf"])
            t = _timed(fns[name], tokens, name)
            after = _timed(fns["hf"])
            res["hf"]["s"] += [before, after]
            res[name]["s"].append(t)
            res[name]["ratio"].append(t / math.sqrt(before * after))
    return res


def load_times(args) -> dict[str, float]:
    """Median seconds of ``dl.load(W_A, adapter=...)`` per backend, alternating backends."""
    import deltalens as dl

    base = args.model or str(Path(args.org) / "wa")
    adapter = args.adapter if args.model else str(Path(args.org) / "lora_useful")
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for r in range(args.load_reps):
        for b in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            t = time.perf_counter()
            dl.load(base, adapter=adapter, backend=b)
            times[b].append(time.perf_counter() - t)
    return {b: statistics.median(v) for b, v in times.items()}


def check_exact(fns: dict) -> dict[str, bool | None]:
    """Whether each unhooked backend call decodes exactly the ``hf`` tokens (None for the hooked loop,
    which stops at end-of-sequence: its tokens are the first ones of ``hf``'s, checked up to there)."""
    import torch

    want = fns["hf"]()
    out: dict[str, bool | None] = {}
    for k, fn in fns.items():
        if k == "hf":
            continue
        got = fn()
        out[k] = bool(torch.equal(got, want)) if got.shape == want.shape else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--org", default="/tmp/org2", help="a built organism family")
    ap.add_argument("--model", default=None, help="a local HF checkpoint instead of the organism")
    ap.add_argument("--adapter", default=None, help="with --model: a LoRA adapter to merge")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--load-reps", type=int, default=5)
    ap.add_argument("--hooked", action="store_true", help="also time the hooked decoding loop")
    ap.add_argument("--threads", default=None, help="torch threads (default: deltalens's, see deltalens.threads)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    from deltalens import threads

    n_threads = threads.configure(args.threads)
    objs, enc = build(args)
    fns = calls(objs, enc, args)
    exact = check_exact(fns)
    for fn in fns.values():  # warm-up
        fn()
    tokens: dict[str, int] = {}
    res = rounds(fns, args, tokens)
    rows = {
        k: {
            "s": statistics.median(v["s"]),
            "tokens": tokens[k],
            "tokens_per_s": tokens[k] / statistics.median(v["s"]),
            "ratio_to_hf": statistics.median(v["ratio"]) if v["ratio"] else 1.0,
            "exact": exact.get(k, True),
        }
        for k, v in res.items()
    }
    loads = load_times(args)
    summary = {
        "rows": rows,
        "load_s": loads,
        "load_ratio_tl_over_nnsight": loads["transformer_lens"] / loads["nnsight"],
        "batch": args.batch,
        "new_tokens": args.new,
        "prompt_len": int(enc["input_ids"].shape[1]),
        "rounds": args.rounds,
        "threads": n_threads,
        "load_avg": os.getloadavg(),
    }
    print("\n| call | tokens/s | × HF time | exact |")
    print("|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v['tokens_per_s']:.0f} | {v['ratio_to_hf']:.2f} | {v['exact']} |")
    print(f"\nload (s): {loads}  TL/nnsight = {summary['load_ratio_tl_over_nnsight']:.2f}")
    print(f"threads {n_threads}, load average {summary['load_avg']}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
