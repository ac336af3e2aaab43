"""Cost of attribution patching over every head, as a multiple of one forward pass, in one process.

Calls, on one deltalens model (nnsight backend unless ``--backend``):

1. ``forward``     — ``m.logits(ids, attention_mask=mask)`` (the unit)
2. ``attribution`` — ``attribution_patching(m, clean, corrupted, metric, names="heads", positions="sum")``:
   one forward + backward on the clean batch, one forward on the corrupted batch, the per-head table
3. ``dla``         — ``dla(m, clean, (a, b), by="head")`` (one forward caching per-head results at the last token)
4. ``patching``    — (``--patching``) real activation patching of every head's ``hook_z``, one forward per
   head (``head_patching_across`` with a model against itself), measured once, for reference

Timing is round-robin as in ``bench_cache.py``: each round runs every call once, in an order rotated
from round to round, with a forward before and after each call; a call's ratio in a round is its
time over the geometric mean of the two bracketing forwards. The table gives the median [quartiles]
over rounds, for wall-clock and process-CPU time. Usage::

    python benchmarks/bench_circuits.py                # random SmolLM2-shaped Llama, 12 layers, 8 x 64
    python benchmarks/bench_circuits.py --quick        # 4 layers, 4 x 32, 5 rounds
    python benchmarks/bench_circuits.py --patching     # + one real per-head patching sweep

Results: benchmarks/bench_circuits.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(args) -> dict:
    """A random SmolLM2-shaped Llama on the chosen backend, a clean and a corrupted batch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import deltalens as dl
    from deltalens.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=args.layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    model = dl.load(LlamaForCausalLM(cfg).eval(), tokenizer=tok, backend=args.backend)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(3, len(tok), (args.batch, args.seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, args.seq // 2] = torch.randint(3, len(tok), (args.batch,), generator=g)  # one token differs
    return {"model": model, "clean": clean, "corrupted": corrupted, "mask": torch.ones_like(clean)}


def calls(env: dict) -> dict:
    """The timed callables (``forward`` is the unit)."""
    from deltalens.circuits import attribution_patching, dla
    from deltalens.circuits.attribution import logit_diff_metric

    m, clean, corrupted, mask = env["model"], env["clean"], env["corrupted"], env["mask"]
    metric = logit_diff_metric(5, 7)
    return {
        "forward": lambda: m.logits(clean, attention_mask=mask),
        "attribution": lambda: attribution_patching(
            m, clean, corrupted, metric, names="heads", positions="sum"
        ),
        "dla": lambda: dla(m, clean, (5, 7), by="head"),
    }


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def rounds(fns: dict, n: int, budget: float) -> dict[str, list[tuple[float, float]]]:
    """Per call, its (wall, CPU) ratio to the bracketing forwards, one entry per round."""
    names = [k for k in fns if k != "forward"]
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    ms: dict[str, list[float]] = {k: [] for k in ["forward", *names]}
    start = time.perf_counter()
    for r in range(n):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            before = _timed(fns["forward"])
            t = _timed(fns[k])
            after = _timed(fns["forward"])
            base = [(before[i] * after[i]) ** 0.5 for i in (0, 1)]
            out[k].append((t[0] / base[0], t[1] / base[1]))
            ms[k].append(t[0] * 1e3)
            ms["forward"].append(base[0] * 1e3)
        if time.perf_counter() - start > budget:
            break
    out["_ms"] = {k: statistics.median(v) for k, v in ms.items()}  # type: ignore[assignment]
    return out


def _q(xs: list[float]) -> str:
    qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"{statistics.median(xs):.2f} [{qs[0]:.2f}–{qs[2]:.2f}]"


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="nnsight", choices=["nnsight", "transformer_lens"])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--budget", type=float, default=600.0, help="stop adding rounds after this many seconds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--patching", action="store_true", help="also time one real per-head patching sweep")
    args = p.parse_args()
    if args.quick:
        args.layers, args.batch, args.seq, args.rounds = 4, 4, 32, 5
    torch.set_num_threads(args.threads)
    env = build(args)
    fns = calls(env)
    for fn in fns.values():  # warm-up
        fn()
    res = rounds(fns, args.rounds, args.budget)
    ms = res.pop("_ms")
    m = env["model"]
    print(f"Llama d576 x{args.layers}, {m.n_heads} heads, batch {args.batch} x {args.seq}, {args.backend}, "
          f"{args.threads} thread(s), {len(next(iter(res.values())))} rounds")  # fmt: skip
    print("| call | ms (median) | ratio to one forward (wall) | ratio (CPU) |\n|---|---:|---|---|")
    print(f"| forward | {ms['forward']:.0f} | 1 | 1 |")
    for k, v in res.items():
        print(f"| {k} | {ms[k]:.0f} | {_q([w for w, _ in v])} | {_q([c for _, c in v])} |")
    if args.patching:
        from deltalens.circuits import head_patching_across
        from deltalens.circuits.attribution import logit_diff_metric

        w = _timed(lambda: head_patching_across({"a": m, "b": m}, "a", "b", env["clean"], logit_diff_metric(5, 7),
                                                progress=False))[0]  # fmt: skip
        n = m.n_layers * m.n_heads
        print(f"| activation patching, {n} heads (once) | {w * 1e3:.0f} | {w * 1e3 / ms['forward']:.1f} | |")


if __name__ == "__main__":
    main()
