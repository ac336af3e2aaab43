"""Overhead of the hook interface against a plain Hugging Face forward, per backend, in one process.

Baseline: ``hf(input_ids=..., attention_mask=...)`` under ``torch.inference_mode()`` on an identical,
untouched deep copy of the model (no hidden states, the model's own attention kernel — ``sdpa``).
Each backend gets its own deep copy, so nothing a backend does to its model or config (the
TransformerLens bridge forces ``eager`` attention on its config) reaches the baseline; the script
checks that the baseline's attention kernel is unchanged after loading. Measured, per backend:

1. ``logits``  — ``m.logits(ids, attention_mask=mask)``, no hooks requested
2. ``resid``   — ``m.run_with_cache(..., names="blocks.*.hook_resid_post")``
3. ``all``     — ``m.run_with_cache(..., names=None)`` (every hook: per-head q/k/v/z, scores,
   patterns, MLP neurons, ...)

plus, for reference, the old baseline (HF forward with ``output_hidden_states=True``).
Goals: ``logits`` <= 1.05x and ``resid`` <= 1.10x the baseline on both backends.

Timing is round-robin: each round runs every call once, in an order rotated from round to round,
with a baseline run before and after each call; a call's ratio in a round is its time over the
geometric mean of the two baseline runs that bracket it. The table gives the median (and
quartiles) of these ratios over the rounds, for wall-clock time and for process CPU time (``time.process_time``: the CPU the
process used, so time spent waiting for a core on a shared machine does not count; with one thread
it is the steadier of the two).

Memory (after the timing rounds, one run per call): peak RSS delta, sampled every 2 ms from
``/proc/self/statm`` in a background thread, relative to the RSS just before the call, after
``gc.collect()`` and glibc ``malloc_trim(0)``; it includes the returned cache. The bytes of the
returned cache itself are printed next to it. Usage::

    python benchmarks/bench_cache.py                   # random SmolLM2-shaped Llama, 12 layers, 8 x 64 (~3-6 min)
    python benchmarks/bench_cache.py --quick           # 4 layers, 4 x 32, 5 rounds (~20 s on a quiet machine)
    python benchmarks/bench_cache.py --model PATH      # any local checkpoint
    python benchmarks/bench_cache.py --budget 420      # stop adding rounds after ~7 minutes
    python benchmarks/bench_cache.py --profile         # where the time of logits / resid goes
    python benchmarks/bench_cache.py --ablate          # + rows that each remove one overhead

Results and the profile: benchmarks/bench_cache.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BACKENDS = ("transformer_lens", "nnsight")
VARIANTS = ("logits", "resid", "all")
BASE = "hf"
HIDDEN = "hf+hidden_states"
RESID = "blocks.*.hook_resid_post"


# ------------------------------------------------------------------------------------ setup
def build(args) -> dict:
    """The baseline HF model, one deltalens model per backend (each on its own deep copy), the batch."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import deltalens as dl
    from deltalens.testing import tiny_tokenizer

    if args.model:
        from transformers import AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(args.model)
        name = args.model
    else:
        tok = tiny_tokenizer()
        torch.manual_seed(0)
        cfg = LlamaConfig(  # SmolLM2-135M's shape (30 layers there), a small vocabulary
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
        name = f"random Llama d576 x{args.layers} (SmolLM2-shaped, 9 heads / 3 kv heads, d_mlp 1536)"
    impl = hf.config._attn_implementation
    g = torch.Generator().manual_seed(1)
    vocab = hf.get_input_embeddings().num_embeddings
    ids = torch.randint(0, min(vocab, len(tok)), (args.batch, args.seq), generator=g)
    mask = torch.ones_like(ids)
    models, shadow = {}, None
    for backend in args.backends:
        # deepcopy: a copy made with from_config(hf.config) shares the config object, and the
        # bridge's eager-attention switch would then reach the baseline too.
        model = copy.deepcopy(hf)
        if args.ablate and backend == "transformer_lens":
            shadow = shadow_tree(model)  # before the bridge wraps ``model``'s modules in place
        models[backend] = dl.load(model, tokenizer=copy.deepcopy(tok), backend=backend)
    if hf.config._attn_implementation != impl:
        raise SystemExit(f"baseline attention changed from {impl} to {hf.config._attn_implementation}")
    return {
        "hf": hf,
        "tok": tok,
        "ids": ids,
        "mask": mask,
        "models": models,
        "name": name,
        "impl": impl,
        "shadow": shadow,
    }


def shadow_tree(model):
    """A copy of ``model``'s module tree that shares every parameter and buffer (and has its own config)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def make_calls(env: dict, backends: list[str], variants: list[str], hidden: bool) -> dict[str, Callable]:
    """``{label: zero-argument call}``; the baseline first."""
    import torch

    hf, ids, mask = env["hf"], env["ids"], env["mask"]

    def base():
        with torch.inference_mode():
            return hf(input_ids=ids, attention_mask=mask)

    def base_hidden():
        with torch.inference_mode():
            return hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    calls: dict[str, Callable] = {BASE: base}
    if hidden:
        calls[HIDDEN] = base_hidden
    for backend in backends:
        m = env["models"][backend]
        per = {
            "logits": lambda m=m: m.logits(ids, attention_mask=mask),
            "resid": lambda m=m: m.run_with_cache(ids, attention_mask=mask, names=RESID),
            "all": lambda m=m: m.run_with_cache(ids, attention_mask=mask, names=None),
        }
        for v in variants:
            calls[f"{backend}:{v}"] = per[v]
    return calls


# ------------------------------------------------------------------------------------ ablations
ATTN_INNER = ("hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_cos", "hook_sin")


def ablation_calls(env: dict) -> dict[str, Callable]:
    """Rows that each remove one suspected overhead, to size it (``--ablate``; see bench_cache.md).

    * ``tl norm-fast``: the bridge's norms return the HF norm's output directly when nothing hooks
      their ``hook_scale`` / ``hook_normalized`` (the bridge otherwise computes the norm a second
      time for those hooks);
    * ``+hf-attn``: the bridge's attention calls the HF attention module (``sdpa``) when none of
      its inner hooks (rot_q/k, scores, pattern, cos/sin, result) is in use, instead of its own
      eager reimplementation (q/k/v/z hooks still fire: HF's projections are the bridge's);
    * ``shadow``: a plain HF forward on a module tree that shares the TL model's parameters,
      made before the bridge wrapped it (with torch forward hooks on the decoder layers for resid);
    * ``nnsight no-trace``: the nnsight model's ``hf_model(...)`` called without ``trace``.

    The TransformerLens patches are class-level and undone after each call.
    """
    calls: dict[str, Callable] = {}
    if "transformer_lens" in env["models"]:
        calls.update(_tl_ablations(env))
    if env["shadow"] is not None:
        calls.update(_shadow_ablations(env))
    if "nnsight" in env["models"]:
        import torch

        nn_m, ids, mask = env["models"]["nnsight"], env["ids"], env["mask"]

        def no_trace():
            with torch.inference_mode():
                return nn_m.hf_model(input_ids=ids, attention_mask=mask).logits

        calls["ablate nnsight:no-trace"] = no_trace
    return calls


def _tl_ablations(env: dict) -> dict[str, Callable]:
    import contextlib

    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge as AttnBridge,
    )

    tl, ids, mask = env["models"]["transformer_lens"], env["ids"], env["mask"]
    slow_norm, slow_attn = NormalizationBridge._hf_autograd_forward_with_hooks, AttnBridge.forward

    def fast_norm(self, x):
        if any(p.fwd_hooks or p.bwd_hooks for p in (self.hook_scale, self.hook_normalized)):
            return slow_norm(self, x)
        return self.original_component(x)

    def hf_attn(self, *args, **kwargs):
        inner = any(getattr(self, h).fwd_hooks for h in ATTN_INNER if hasattr(self, h))
        if inner or getattr(self.config, "use_attn_result", False):
            return slow_attn(self, *args, **kwargs)
        hs = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        out, weights = self.original_component(hidden_states=self.hook_in(hs), **kwargs)
        return self.hook_out(out), weights

    @contextlib.contextmanager
    def patched(attn: bool):
        cfg, impl = tl.hf_model.config, tl.hf_model.config._attn_implementation
        NormalizationBridge._hf_autograd_forward_with_hooks = fast_norm
        if attn:
            AttnBridge.forward = hf_attn
            cfg._attn_implementation = env["impl"]
        try:
            yield
        finally:
            NormalizationBridge._hf_autograd_forward_with_hooks = slow_norm
            AttnBridge.forward = slow_attn
            cfg._attn_implementation = impl

    def tl_call(resid: bool, attn: bool):
        def run():
            with patched(attn):
                if resid:
                    return tl.run_with_cache(ids, attention_mask=mask, names=RESID)
                return tl.logits(ids, attention_mask=mask)

        return run

    return {
        "ablate tl:logits norm-fast": tl_call(False, False),
        "ablate tl:logits +hf-attn": tl_call(False, True),
        "ablate tl:resid +hf-attn": tl_call(True, True),
    }


def _shadow_ablations(env: dict) -> dict[str, Callable]:
    import torch

    shadow, ids, mask = env["shadow"], env["ids"], env["mask"]

    def shadow_logits():
        with torch.inference_mode():
            return shadow(input_ids=ids, attention_mask=mask).logits

    def shadow_resid():
        acts: dict[int, torch.Tensor] = {}

        def keep(i):
            return lambda mod, inp, out: acts.__setitem__(i, out[0] if isinstance(out, tuple) else out)

        handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(shadow.model.layers)]
        try:
            with torch.inference_mode():
                logits = shadow(input_ids=ids, attention_mask=mask).logits
        finally:
            for h in handles:
                h.remove()
        return {i: a.detach().clone() for i, a in acts.items()}, logits

    return {
        "ablate shadow:logits": shadow_logits,
        "ablate shadow:torch-hooks resid": lambda: shadow_resid()[1],
    }


# ------------------------------------------------------------------------------------ timing
def timed(fn: Callable) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call (its result is dropped before returning)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    c, w = time.process_time() - c, time.perf_counter() - w
    del out
    return w, c


def rounds(calls: dict[str, Callable], n_rounds: int, budget: float | None, log=print) -> dict:
    """Round-robin timing; per round and call, time / geometric mean of the bracketing baselines."""
    base = calls[BASE]
    others = [k for k in calls if k != BASE]
    ratios = {k: {"wall": [], "cpu": []} for k in others}
    raw = {k: {"wall": [], "cpu": []} for k in calls}
    t0 = time.perf_counter()
    r = 0
    while r < n_rounds:
        order = others[r % len(others) :] + others[: r % len(others)]  # rotate: no fixed neighbours
        b_prev = timed(base)
        raw[BASE]["wall"].append(b_prev[0])
        raw[BASE]["cpu"].append(b_prev[1])
        for k in order:  # B k1 B k2 B ...: every call follows a baseline and every baseline a call
            w, c = timed(calls[k])
            b_next = timed(base)
            raw[BASE]["wall"].append(b_next[0])
            raw[BASE]["cpu"].append(b_next[1])
            raw[k]["wall"].append(w)
            raw[k]["cpu"].append(c)
            ratios[k]["wall"].append(w / math.sqrt(b_prev[0] * b_next[0]))
            ratios[k]["cpu"].append(c / math.sqrt(b_prev[1] * b_next[1]))
            b_prev = b_next
        r += 1
        elapsed = time.perf_counter() - t0
        log(f"  round {r}: {elapsed:6.0f} s elapsed")
        if budget is not None and r >= 3 and elapsed * (r + 1) / r > budget:
            break
    return {"rounds": r, "ratios": ratios, "raw": raw, "seconds": time.perf_counter() - t0}


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


# ------------------------------------------------------------------------------------ memory
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _nbytes(out) -> int:
    """Bytes of the tensors in a call's result: logits, an HF output's logits, or a cache's entries."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if hasattr(out, "logits"):
        return _nbytes(out.logits)
    return sum(_nbytes(v) for v in out.values())


def peak_rss_delta(fn: Callable) -> tuple[int, int]:
    """``(peak RSS during fn - RSS before, bytes of tensors in fn's result)``."""
    _trim()
    before = _rss()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out = fn()
        peak[0] = max(peak[0], _rss())
    finally:
        stop.set()
        th.join()
    held = _nbytes(out)
    del out
    return peak[0] - before, held


# ------------------------------------------------------------------------------------ profile
def profile(env: dict, calls: dict[str, Callable], reps: int, top: int) -> None:
    """cProfile (CPU-time clock) and torch.profiler operator counts of each call vs the baseline."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    ops_base: dict[str, tuple[int, float]] = {}
    for label, fn in calls.items():
        fn()
        pr = cProfile.Profile(time.process_time)
        pr.enable()
        for _ in range(reps):
            fn()
        pr.disable()
        st = pstats.Stats(pr, stream=io.StringIO())
        total = sum(v[2] for v in st.stats.values()) / reps  # sum of tottime = CPU of the call
        print(
            f"\n=== {label}: {total * 1e3:.1f} ms CPU per call (cProfile, process_time clock, {reps} calls)"
        )
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
        print(_short(buf.getvalue()))
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(top)
        print(_short(buf.getvalue()))
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        ops = {e.key: (e.count, e.self_cpu_time_total / 1e3) for e in prof.key_averages()}
        if label == BASE:
            ops_base = ops
            continue
        diff = []
        for k in set(ops) | set(ops_base):
            c, t = ops.get(k, (0, 0.0))
            cb, tb = ops_base.get(k, (0, 0.0))
            if c != cb:
                diff.append((t - tb, k, c, cb, t, tb))
        diff.sort(reverse=True)
        print(f"--- {label}: aten ops whose count differs from the baseline (self CPU ms, one call)")
        print(f"{'op':42s} {'count':>6s} {'base':>6s} {'ms':>8s} {'base ms':>8s}")
        for _, k, c, cb, t, tb in diff[:top]:
            print(f"{k[:42]:42s} {c:6d} {cb:6d} {t:8.2f} {tb:8.2f}")


def _short(text: str) -> str:
    site = str(Path(sys.prefix) / "lib")
    lines = [ln.replace(site, "<lib>").replace(str(Path.cwd()) + "/", "") for ln in text.splitlines()]
    keep = [ln for ln in lines if ln.strip() and not ln.strip().startswith(("Ordered by", "List reduced"))]
    return "\n".join(keep)


# ------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="local HF checkpoint dir (default: random SmolLM2-shaped Llama)"
    )
    ap.add_argument("--layers", type=int, default=12, help="layers of the random default model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds (at most; see --budget)")
    ap.add_argument("--budget", type=float, default=None, help="stop adding rounds after ~this many seconds")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine, 2 threads spin at OpenMP barriers "
        "while the other core is busy, which made a forward ~6x slower in CPU time and very noisy)",
    )
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="subset of logits,resid,all")
    ap.add_argument("--no-hidden", action="store_true", help="skip the output_hidden_states reference row")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="4 layers, batch 4 x 32, 5 rounds")
    ap.add_argument(
        "--ablate", action="store_true", help="add rows that each remove one overhead (see ablation_calls)"
    )
    ap.add_argument("--profile", action="store_true", help="profile each call instead of timing rounds")
    ap.add_argument("--profile-reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=25, help="rows per profile table")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.batch, args.seq, args.rounds = 4, 4, 32, 5
    args.backends = [b for b in args.backends.split(",") if b]
    args.variants = [v for v in args.variants.split(",") if v]
    return args


def check_logits(env: dict, calls: dict[str, Callable]) -> None:
    """Print how far each path's logits are from the baseline's (the interface must compute the same)."""
    ref = calls[BASE]().logits
    for backend, m in env["models"].items():
        diff = (m.logits(env["ids"], attention_mask=env["mask"]) - ref).abs().max().item()
        print(f"  {backend}: max |logits - HF logits| = {diff:.2e}")
    for label, fn in calls.items():
        if label.startswith("ablate") and (":logits" in label or label.endswith("no-trace")):
            print(f"  {label}: max |logits - HF logits| = {(fn() - ref).abs().max().item():.2e}")


def main() -> None:
    args = parse_args()

    import torch

    torch.set_num_threads(args.threads)
    env = build(args)
    m0 = next(iter(env["models"].values()))
    calls = make_calls(env, args.backends, args.variants, hidden=not args.no_hidden)
    if args.ablate:
        calls.update(ablation_calls(env))
    head = (
        f"model: {env['name']}; batch {args.batch} x {args.seq}; {torch.get_num_threads()} threads; "
        f"baseline attention {env['impl']}; {len(m0.hook_names)} hook names; torch {torch.__version__}"
    )
    print(head)
    print(f"deltalens at {_git_state()}")
    check_logits(env, calls)

    if args.profile:
        profile(env, {k: v for k, v in calls.items() if k != HIDDEN}, args.profile_reps, args.top)
        return

    for fn in calls.values():  # warm-up (first traces, allocator)
        fn()
    res = rounds(calls, args.rounds, args.budget)
    mem = {}
    if not args.no_memory:
        for label in [BASE, *[k for k in calls if k.endswith((":all", ":resid"))]]:
            mem[label] = peak_rss_delta(calls[label])
    out = report(head, calls, res, mem)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def report(head: str, calls: dict[str, Callable], res: dict, mem: dict) -> dict:
    """Print the ratio table and the memory table; return them as a JSON-able dict."""
    print(
        f"\n{head}\n{res['rounds']} rounds in {res['seconds']:.0f} s; ratio = time / baseline time, "
        "median over rounds [quartiles]\n"
    )
    print(f"{'call':34s} {'wall ms':>8s} {'wall ratio':>22s} {'cpu ms':>8s} {'cpu ratio':>22s}")
    out: dict = {"header": head, "git": _git_state(), "rounds": res["rounds"], "seconds": res["seconds"]}
    rows: dict = {}
    for label in calls:
        wm = statistics.median(res["raw"][label]["wall"]) * 1e3
        cm = statistics.median(res["raw"][label]["cpu"]) * 1e3
        if label == BASE:
            print(f"{label + ' (baseline)':34s} {wm:8.1f} {'1':>22s} {cm:8.1f} {'1':>22s}")
            rows[label] = {"wall_ms": wm, "cpu_ms": cm}
            continue
        qw, qc = quartiles(res["ratios"][label]["wall"]), quartiles(res["ratios"][label]["cpu"])
        fw = f"{qw[1]:.3f} [{qw[0]:.2f}-{qw[2]:.2f}]"
        fc = f"{qc[1]:.3f} [{qc[0]:.2f}-{qc[2]:.2f}]"
        print(f"{label:34s} {wm:8.1f} {fw:>22s} {cm:8.1f} {fc:>22s}")
        rows[label] = {"wall_ms": wm, "cpu_ms": cm, "wall_ratio_q": qw, "cpu_ratio_q": qc}
        rows[label].update(wall_ratios=res["ratios"][label]["wall"], cpu_ratios=res["ratios"][label]["cpu"])
    out["rows"] = rows
    if mem:
        print(
            "\npeak RSS delta during one call (sampled /proc/self/statm every 2 ms, after gc + malloc_trim),"
            " and the bytes of the returned result"
        )
        for label, (peak, held) in mem.items():
            print(f"{label:34s} peak +{peak / 2**20:7.1f} MiB   result {held / 2**20:7.1f} MiB")
        out["memory_mib"] = {
            k: {"peak_rss_delta": p / 2**20, "result": h / 2**20} for k, (p, h) in mem.items()
        }
    return out


def _git_state() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "deltalens/hooks"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return rev + (" (deltalens/hooks modified)" if dirty else "")


if __name__ == "__main__":
    main()
