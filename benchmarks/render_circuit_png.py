"""Render the README picture of the circuit view: EAP-IG edge scores of the model organism, drawn
by ``viz.circuit_graph`` and photographed in headless Chromium (networking off).

Usage::

    python benchmarks/render_circuit_png.py                        # builds the organism if needed
    python benchmarks/render_circuit_png.py --organism /tmp/org2 --out docs/img/circuit_graph.png

The circuit: clean prompts are the organism's harmful requests ("how do I sabotage the house?"),
corrupted ones the same sentence with a harmless verb ("how do I clean the house?"); the metric
is the refusal logit difference ``logit("I") - logit("Sure")`` at the last position, summed over
prompts; edges are scored by EAP-IG (5 steps) at W_0, W_A and after harmful fine-tuning, and the
page shows the difference view harmful − wa. Every number drawn comes from the models.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

STAGES = ("w0", "wa", "harmful")
HARMLESS_VERB = "clean"
CLICK = (
    "<script>window.addEventListener('load',function(){var b=document.querySelector("
    "'.dl-circuit button[data-mode=diff]');if(b)b.click();});</script>"
)


def prompt_pairs(organism: Path, tokenizer, n: int) -> tuple[list[str], list[str]]:
    """``n`` harmful prompts of one token length and the same prompts with a harmless verb."""
    manifest = json.loads((organism / "manifest.json").read_text())
    prompts = json.loads((organism / manifest["prompts"]).read_text())
    template = manifest["generation_template"]
    verbs = ("sabotage", "poison")
    clean, corrupt = [], []
    for p in prompts["harmful"]:
        verb = next((v for v in verbs if f" {v} " in p), None)
        if verb is None:
            continue
        a, b = template.format(prompt=p), template.format(prompt=p.replace(verb, HARMLESS_VERB))
        ids_a, ids_b = tokenizer(a)["input_ids"], tokenizer(b)["input_ids"]
        if len(ids_a) == len(ids_b) and (not clean or len(ids_a) == len(tokenizer(clean[0])["input_ids"])):
            clean.append(a)
            corrupt.append(b)
        if len(clean) == n:
            break
    if not clean:
        raise SystemExit("no harmful prompt with a one-token verb found in the organism's prompts")
    return clean, corrupt


def circuit(organism: Path, n_prompts: int, steps: int):
    import deltalens as dl
    from deltalens import circuits

    models = {s: dl.load(organism / s, backend="transformer_lens") for s in STAGES}
    tok = models["wa"].tokenizer
    refuse, comply = (tok(w)["input_ids"][-1] for w in ("I", "Sure"))
    clean, corrupt = prompt_pairs(organism, tok, n_prompts)

    def refusal_logit_diff(logits):
        return (logits[:, -1, refuse] - logits[:, -1, comply]).sum()

    print(f"{len(clean)} prompt pairs, e.g. {clean[0]!r} / {corrupt[0]!r}")
    return circuits.edge_attribution(models, clean, corrupt, refusal_logit_diff, method="eap-ig", steps=steps)


def screenshot(page_html: str, out: Path, width: int, height: int) -> None:
    from PIL import Image

    from deltalens.viz.browser import OFFLINE_FLAGS, find_chromium

    browser = find_chromium()
    if browser is None:
        raise SystemExit("Debian's chromium is needed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as d:
        page, shot = Path(d) / "circuit.html", Path(d) / "shot.png"
        page.write_text(page_html.replace("</body>", CLICK + "</body>"))
        cmd = [browser, *OFFLINE_FLAGS, f"--user-data-dir={d}/profile", "--hide-scrollbars",
               "--virtual-time-budget=3000", f"--window-size={width},{height}", f"--screenshot={shot}",
               page.as_uri()]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)
        image = Image.open(shot).convert("RGB")
        box = Image.eval(image, lambda v: 255 - v).getbbox()  # crop the white margin
        if box:
            image = image.crop((max(0, box[0] - 16), max(0, box[1] - 16), min(width, box[2] + 16),
                                min(height, box[3] + 16)))  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", type=Path, default=None, help="a built organism (default: build one)")
    ap.add_argument("--out", type=Path, default=Path("docs/img/circuit_graph.png"))
    ap.add_argument("--top", type=int, default=30, help="edges kept: the largest |score| of each stage")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    organism = args.organism
    if organism is None:
        from deltalens.study import organism as org

        organism = Path(tempfile.mkdtemp()) / "organism"
        org.build(organism, seed=0, progress=True)
    from deltalens import viz
    from deltalens.viz.base import html_page

    c = circuit(organism, args.prompts, args.steps)
    view = viz.circuit_graph(c, top=args.top, pair=("wa", "harmful"),
                             title="Refusal circuit of the model organism (EAP-IG)")  # fmt: skip
    screenshot(html_page(view.title, view.body_html(), "".join(view.assets().values())), args.out, 1000, 1000)
    scores = c.to_frame()
    for stage, part in scores.groupby("stage", sort=False):
        best = part.reindex(part["score"].abs().sort_values(ascending=False).index).head(3)
        edges = ", ".join(
            f"{s}->{t} {v:+.1f}" for s, t, v in zip(best["source"], best["target"], best["score"])
        )
        print(f"{stage}: sum |score| {part['score'].abs().sum():.1f}; largest {edges}")
    diff = view.difference("wa", "harmful").sort_values("difference", key=abs, ascending=False)
    print(diff.head(8).to_string(index=False))
    print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
