"""Streaming activation collection: throughput and peak memory against model size + 1 GiB.

Collects the last-token activations of N prompts at every layer of a model, streamed to
safetensors shards, and reports wall time, prompts per second, bytes written, and the peak
resident set size (sampled with psutil every 10 ms, cross-checked with ``getrusage``) next to the
budget ``model size + 1 GiB`` (and that budget on top of the RSS before the model was loaded).

Usage:
    python benchmarks/bench_collect.py --n 2000                       # random ~4M-param Llama
    python benchmarks/bench_collect.py --n 2000 --model ckpts/organism/wa --backend nnsight
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

GiB = 2**30


class PeakRSS:
    """Samples this process's RSS in a background thread; ``.peak`` is the highest seen."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def random_llama(directory: Path, d_model: int, n_layers: int) -> Path:
    """A random Llama checkpoint (byte-level BPE tokenizer trained offline) saved to ``directory``."""
    import torch
    import transformers as tr

    from deltalens.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tr.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=max(1, d_model // 64),
        num_key_value_heads=max(1, d_model // 128),
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = tr.AutoModelForCausalLM.from_config(cfg).eval()
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def prompts(n: int, seed: int = 0) -> list[str]:
    words = (
        "the model answers a question about arithmetic safety refusal python json list value print "
        "how do I make a cake please explain why sky blue write short poem"
    ).split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for _ in range(n)]


def fmt_bytes(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="number of prompts")
    p.add_argument("--model", default=None, help="checkpoint directory (default: a random Llama built here)")
    p.add_argument("--backend", default="nnsight", choices=["nnsight", "transformer_lens"])
    p.add_argument("--names", default="blocks.*.hook_resid_post", help="hooks to collect (glob)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=None, help="prompts per shard (default ~64 MiB shards)")
    p.add_argument("--d-model", type=int, default=256, help="width of the random Llama")
    p.add_argument("--layers", type=int, default=6, help="depth of the random Llama")
    p.add_argument("--out", default=None, help="shard folder (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import deltalens as dl
    from deltalens.probes import collect

    tmp = tempfile.TemporaryDirectory(prefix="bench-collect-")
    source = (
        Path(args.model) if args.model else random_llama(Path(tmp.name) / "model", args.d_model, args.layers)
    )
    texts = prompts(args.n)
    rss_before_load = rss()
    model = dl.load(source, backend=args.backend)
    model_bytes = sum(t.numel() * t.element_size() for t in model.hf_model.parameters())
    n_params = sum(t.numel() for t in model.hf_model.parameters())
    out = Path(args.out) if args.out else Path(tmp.name) / "acts"
    rss_before = rss()
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        acts = collect(
            model,
            texts,
            args.names,
            batch_size=args.batch_size,
            out=out,
            shard_size=args.shard_size,
            progress=False,
        )
        wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    one = acts.stack(acts.names[-1])
    read_s = time.perf_counter() - t1
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    written = sum(f.stat().st_size for f in out.iterdir())
    budget = model_bytes + GiB
    rows = [
        ("model", f"{source.name if args.model else 'random Llama'} ({args.backend})"),
        ("parameters", f"{n_params / 1e6:.2f} M ({fmt_bytes(model_bytes)})"),
        ("layers x d_model", f"{model.n_layers} x {model.d_model}"),
        ("prompts / hooks", f"{args.n} / {len(acts.names)} ({args.names})"),
        ("shards written", f"{len(list(out.glob('shard-*.safetensors')))} ({fmt_bytes(written)})"),
        ("collect wall time", f"{wall:.1f} s ({args.n / wall:.1f} prompts/s, batch {args.batch_size})"),
        ("read one hook back", f"{read_s * 1000:.0f} ms -> {tuple(one.shape)}"),
        ("RSS before model load", fmt_bytes(rss_before_load)),
        ("RSS before collect", fmt_bytes(rss_before)),
        (
            "peak RSS during collect",
            f"{fmt_bytes(peak.peak)} (+{fmt_bytes(peak.peak - rss_before)} over start)",
        ),
        ("ru_maxrss (whole run)", fmt_bytes(maxrss)),
        ("budget: model + 1 GiB", f"{fmt_bytes(budget)} -> {'within' if peak.peak <= budget else 'OVER'}"),
        (
            "budget over pre-load RSS",
            f"{fmt_bytes(rss_before_load + budget)} -> "
            f"{'within' if peak.peak <= rss_before_load + budget else 'OVER'}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print(
        f"bench_collect  (python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, pid {os.getpid()})"
    )
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    tmp.cleanup()
    return 0 if peak.peak <= rss_before_load + budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
