"""Edge attribution (EAP, EAP-IG) against activation patching of every edge, in one process.

Activation patching of an edge ``u -> v``: the clean run with that one edge carrying its corrupted
value (node v's input copy gets ``a_u(corrupted) - a_u(clean)`` added), with the same machinery as
:func:`deltalens.circuits.faithfulness` (:func:`deltalens.circuits.edges.patched_metric`); its effect
is ``metric(patched) - metric(clean)``, which EAP's score estimates to first order. Timing is
round-robin: each round runs EAP, EAP-IG and the full per-edge patching sweep once, in an order
rotated between rounds; the table gives medians over rounds of wall and process-CPU time, and the
ratio patching / EAP per round. Agreement: Pearson and Spearman correlation of the scores with the
patching effects over all edges. Usage::

    python benchmarks/bench_edges.py                          # random Llama, 4 layers x 4 heads, d 128
    python benchmarks/bench_edges.py --layers 6 --rounds 5 --backend transformer_lens
    python benchmarks/bench_edges.py --model PATH             # any local checkpoint

Results: benchmarks/bench_edges.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _patch_every_edge(m, clean, corrupted, metric):
    import torch

    from deltalens.circuits.edges import Layout, node_outputs, patched_metric
    from deltalens.hooks.nodes import NodeModules

    nodes, lay = NodeModules(m), Layout(m.n_layers, m.n_heads)
    b_clean, b_corr = m.tokenize(clean), m.tokenize(corrupted)
    corr = node_outputs(m, b_corr)
    base = float(metric(m.logits(clean)))
    n_src = lay.n_src()
    effects = {}
    for t, target in enumerate(lay.targets):
        for s in range(n_src[t]):
            removed = torch.zeros(len(lay.sources), len(lay.targets), dtype=torch.bool)
            removed[s, t] = True
            effects[(lay.sources[s], target)] = (
                patched_metric(m, nodes, b_clean, corr, removed, metric) - base
            )
    return effects


def _model(args):
    import deltalens as dl
    from deltalens.testing import perturb, tiny_model

    if args.model:
        return dl.load(args.model, backend=args.backend)
    hf, tok = tiny_model("llama", seed=0, n_layers=args.layers, d_model=args.d_model)
    perturb(hf, seed=1, scale=0.05)
    return dl.load(hf, tokenizer=tok, backend=args.backend)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--backend", default="nnsight", choices=["nnsight", "transformer_lens"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pos", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import pandas as pd
    import torch

    from deltalens import circuits

    torch.set_num_threads(args.threads)
    m = _model(args)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, m.vocab_size, (args.batch, args.pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, args.pos // 2 :] = torch.randint(
        1, m.vocab_size, (args.batch, args.pos - args.pos // 2), generator=g
    )

    def metric(logits):
        return logits[:, -1].log_softmax(-1)[:, 7].mean()

    calls = {
        "eap": lambda: circuits.edge_attribution(m, clean, corrupted, metric),
        f"eap-ig ({args.steps} steps)": lambda: circuits.edge_attribution(
            m, clean, corrupted, metric, method="eap-ig", steps=args.steps
        ),
        "patch every edge": lambda: _patch_every_edge(m, clean, corrupted, metric),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in calls}
    outs = {}
    names = list(calls)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            outs[name], w, c = _timed(calls[name])
            times[name].append((w, c))
    effects = pd.Series(outs["patch every edge"])
    print(
        f"{m!r}\nbatch {args.batch} x {args.pos}, {len(effects)} edges, {args.rounds} rounds, {args.threads} thread(s)"
    )
    print("| call | wall s (median) | CPU s (median) | patching / call (wall, median over rounds) |")
    print("|---|---:|---:|---:|")
    patch_w = [w for w, _ in times["patch every edge"]]
    for name in names:
        ws, cs = [w for w, _ in times[name]], [c for _, c in times[name]]
        ratio = statistics.median(pw / w for pw, w in zip(patch_w, ws))
        print(f"| {name} | {statistics.median(ws):.3f} | {statistics.median(cs):.3f} | {ratio:.1f} |")
    for name in names[:2]:
        df = outs[name].to_frame().set_index(["source", "target"])["score"]
        both = pd.concat([df, effects.rename("effect")], axis=1, join="inner")
        pear = both.corr().iloc[0, 1]
        spear = both.corr(method="spearman").iloc[0, 1]
        print(f"{name}: Pearson r = {pear:.3f}, Spearman rho = {spear:.3f} with the patching effects")


if __name__ == "__main__":
    main()
