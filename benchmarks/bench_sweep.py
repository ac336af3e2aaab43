"""Cost of a subspace sweep against its unavoidable work: one pass of all SVDs + one forward per point.

The sweep is the paper's Exp-1/2 grid — 5 fractions × 3 methods (TopK, RandomK, Random) × 2 modes
(parallel, orth) = 30 points — with a trivial ``evaluate`` (one forward pass). The baseline is

    T_base = T_svd + 30 · T_forward

where ``T_svd`` is one exact ``torch.linalg.svd`` of every 2-D ΔW tensor plus one of a Gaussian
matrix of each shape (what Random needs), timed with plain torch calls, and ``T_forward`` is the
median time of the same forward outside the sweep. The goal is ``T_sweep / T_base <= 1.2``. Both
wall-clock and process CPU-time ratios are printed (with one thread, the CPU-time ratio is less
disturbed by other jobs on the machine).
Per-point edit time (writing one configuration into the live weights) is reported next to
``T_forward``. Usage::

    python benchmarks/bench_sweep.py                       # random ~5M-param Llama, synthetic deltas
    python benchmarks/bench_sweep.py --model PATH          # W_A from a checkpoint, synthetic deltas
    python benchmarks/bench_sweep.py --model W_A --base W_0 --task W_T   # a real family (e.g. the organism)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _perturbed(model, seed: int, scale: float):
    """A copy of ``model`` with each tensor moved by ``scale · std(tensor)`` Gaussian noise."""
    import copy

    import torch

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            std = float(p.float().std()) if p.numel() > 1 else 1.0
            p.add_(scale * (std or 1.0) * torch.randn(p.shape, generator=g).to(p.dtype))
    return out


def main() -> None:
    import pandas  # noqa: F401  (imported here so that no timing below includes library imports)
    import torch
    import tqdm.auto  # noqa: F401
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from deltalens.interventions import subspace_sweep, weight_delta

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="W_A: a local HF checkpoint (default: a random ~5M-param Llama)"
    )
    ap.add_argument("--base", default=None, help="W_0 checkpoint (default: W_A minus synthetic noise)")
    ap.add_argument("--task", default=None, help="W_T checkpoint (default: W_A plus synthetic noise)")
    ap.add_argument("--fracs", default="0.01,0.25,0.5,0.75,0.99")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="repeat the whole measurement, report medians")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fracs = [float(f) for f in args.fracs.split(",")]

    if args.model:
        wa = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        name = args.model
    else:
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=4096,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=256,
            tie_word_embeddings=False,
        )
        wa = LlamaForCausalLM(cfg).eval()
        name = "random Llama d256 x4"
    n_params = sum(p.numel() for p in wa.parameters())
    w0 = AutoModelForCausalLM.from_pretrained(args.base).eval() if args.base else _perturbed(wa, 1, 0.05)
    wt = AutoModelForCausalLM.from_pretrained(args.task).eval() if args.task else _perturbed(wa, 2, 0.02)
    ids = torch.randint(
        0, wa.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )

    def forward(model) -> dict[str, float]:
        with torch.inference_mode():
            return {"logit_mean": float(model(input_ids=ids).logits[:, -1].float().mean())}

    results = []
    for rep in range(args.reps):
        d_task = weight_delta(wa, wt)
        d_align = weight_delta(w0, wa)  # fresh: no cached SVDs
        two_d = d_align.names("2d")
        for _ in range(2):
            forward(wa)  # warm-up
        fwd, fwd_cpu = [], []
        for _ in range(15):
            t0, c0 = time.perf_counter(), time.process_time()
            forward(wa)
            fwd.append(time.perf_counter() - t0)
            fwd_cpu.append(time.process_time() - c0)
        t_fwd, c_fwd = statistics.median(fwd), statistics.median(fwd_cpu)
        t0, c0 = time.perf_counter(), time.process_time()
        for n in two_d:
            torch.linalg.svd(d_align.oriented(n), full_matrices=False)
            torch.linalg.svd(torch.randn(d_align.oriented_shape(n)), full_matrices=False)
        t_svd, c_svd = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        df = subspace_sweep(
            wa, d_task, d_align, fracs=fracs, evaluate=forward, seed=rep, baselines=False, progress=False
        )
        t_sweep, c_sweep = time.perf_counter() - t0, time.process_time() - c0
        n_points = len(df)
        t_base = t_svd + n_points * t_fwd
        results.append(
            dict(
                t_sweep_s=t_sweep,
                t_svd_s=t_svd,
                t_forward_s=t_fwd,
                n_points=n_points,
                ratio=t_sweep / t_base,
                ratio_cpu_time=c_sweep / (c_svd + n_points * c_fwd),
                edit_median_s=float(df["edit_s"].median()),
                edit_max_s=float(df["edit_s"].max()),
                eval_median_s=float(df["eval_s"].median()),
            )
        )
        print(
            f"rep {rep}: sweep {t_sweep:.3f}s  svd {t_svd:.3f}s  forward {t_fwd * 1e3:.1f}ms × {n_points}  "
            f"ratio {t_sweep / t_base:.3f} (CPU time {results[-1]['ratio_cpu_time']:.3f})  "
            f"edit/point median {df['edit_s'].median() * 1e3:.1f}ms"
        )
    summary = {k: statistics.median(r[k] for r in results) for k in results[0]}
    summary.update(
        model=name, n_params=n_params, threads=args.threads, batch=args.batch, seq=args.seq, fracs=fracs
    )
    summary["edit_over_forward"] = summary["edit_median_s"] / summary["t_forward_s"]
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "reps": results}, f, indent=2)


if __name__ == "__main__":
    main()
