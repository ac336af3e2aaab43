"""Time of caching every layer's hook_resid_post, per backend, as a ratio to a plain HF forward.

Baseline: the same HF model, same batch, ``output_hidden_states=True`` (sdpa attention), in the
same process. Usage::

    python benchmarks/bench_cache.py                  # a random SmolLM2-shaped Llama (no download)
    python benchmarks/bench_cache.py --model PATH     # any local checkpoint
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import deltalens as dl
    from deltalens.testing import tiny_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="local HF checkpoint dir (default: random SmolLM2-shaped Llama)"
    )
    ap.add_argument("--layers", type=int, default=12, help="layers of the random default model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        hf = AutoModelForCausalLM.from_pretrained(args.model).eval()
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        name = args.model
    else:
        tok = tiny_tokenizer()
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=args.layers,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        hf = LlamaForCausalLM(cfg).eval()
        name = f"random Llama d576 x{args.layers}"
    ids = torch.randint(0, len(tok), (args.batch, args.seq))
    mask = torch.ones_like(ids)

    def hf_forward():
        with torch.inference_mode():
            hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    calls = {"HF forward, output_hidden_states (baseline)": hf_forward}
    for backend in ("transformer_lens", "nnsight"):
        model_copy = AutoModelForCausalLM.from_config(hf.config).eval()
        model_copy.load_state_dict(hf.state_dict())
        m = dl.load(model_copy, tokenizer=tok, backend=backend)

        def cached(m=m):
            m.run_with_cache(ids, attention_mask=mask, names="blocks.*.hook_resid_post")

        calls[f"{backend}: run_with_cache(all hook_resid_post)"] = cached
    # round-robin so that machine-load drift hits every call alike
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()
    for _ in range(args.reps):
        for label, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
    rows = [(label, statistics.median(ts)) for label, ts in times.items()]
    base = rows[0][1]
    print(
        f"\nmodel: {name}; batch {args.batch} x {args.seq}; {torch.get_num_threads()} threads; median of {args.reps}\n"
    )
    print(f"{'call':58s} {'ms':>9s} {'ratio':>7s}")
    for label, t in rows:
        print(f"{label:58s} {t * 1e3:9.1f} {t / base:7.2f}x")


if __name__ == "__main__":
    main()
