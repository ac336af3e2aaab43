"""The saved report opens offline in headless Chromium: the attention view and every plot are drawn.

The browser is Debian's ``chromium`` (or another Chromium-family browser on PATH). The tests never
install anything: without a browser they are skipped, and the reason says so (``pytest -rs``).
CI's ``.ci/run`` installs Debian's ``chromium`` package before the tests. The page is opened
with networking disabled (a private network namespace when ``unshare -n`` works, plus a dead
proxy and resolver).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import deltalens as dl
from deltalens import viz
from deltalens.viz.browser import body_attr, dump_dom

from .test_viz import EXTERNAL_URL, act_table, patch_table, probe_table, sweep_table, weight_table

WINDOW = (1280, 8000)
PROBE = """<script>(function(){var b=document.body;
function put(name,value){b.setAttribute(name,JSON.stringify(value));}
function rect(el){var r=el.getBoundingClientRect();
return [Math.round(r.left),Math.round(r.top+window.scrollY),Math.round(r.width),Math.round(r.height)];}
window.addEventListener('load',function(){
put('data-load-ms',performance.now());
put('data-resources',performance.getEntriesByType('resource').map(function(e){return e.name;}));
setTimeout(function(){
put('data-roots',[].map.call(document.querySelectorAll('.dl-cv-root'),function(el){
return {id:el.id,children:el.childElementCount,text:el.textContent.length,rect:rect(el)};}));
put('data-imgs',[].map.call(document.querySelectorAll('figure.dl-figure'),function(f){
var i=f.querySelector('img');
return {kind:f.getAttribute('data-kind'),complete:i.complete,width:i.naturalWidth,rect:rect(i)};}));
},1500);});})();</script>"""


# ---------------------------------------------------------------------------------------- chromium
def _run(chromium: list[str], profile: Path, page: Path, *extra: str) -> tuple[str, float]:
    return dump_dom(chromium, page, profile, *extra)


def _attr(dom: str, name: str):
    value = body_attr(dom, name)
    assert value is not None, f"the page did not record {name}; did its scripts run?"
    return value


# ---------------------------------------------------------------------------------------- the report
@pytest.fixture(scope="module")
def family_report(tiny_dirs, tmp_path_factory) -> Path:
    """A report for a small family: tiny base and 'fine-tuned' models plus synthetic result tables."""
    from deltalens.testing import tiny_checkpoint

    root = tmp_path_factory.mktemp("family")
    base = dl.load(tiny_dirs["llama"], backend="transformer_lens")
    tuned = dl.load(tiny_checkpoint("llama", root / "tuned", seed=1), backend="nnsight")
    sd_base, sd_tuned = base.state_dict(), tuned.state_dict()
    delta = {k: sd_tuned[k] - sd_base[k] for k in sd_base}
    sweep = sweep_table()
    prompt = "def add(a, b): return a + b"
    rep = (
        viz.Report("Tiny family", description="Tiny random models and synthetic tables.")
        .add_section("Subspace steering", viz.steering_sweep(sweep), viz.energy_kept(sweep), sweep)
        .add_section("Overlap", viz.weight_overlap(weight_table()), viz.activation_overlap(act_table()))
        .add_section("Probes and patching", viz.probe_accuracy(probe_table()), viz.patching(patch_table()))
        .add_section("Weights", viz.delta_norms({"tuned": delta}, reference=sd_base))
        .add_section("Logit lens", viz.logit_lens(base, prompt))
        .add_section("Attention", viz.attention_compare({"base": base, "tuned": tuned}, prompt, layer=1))
    )
    return rep.save(root / "report.html")


def test_report_is_small_and_self_contained(family_report):
    size = family_report.stat().st_size
    page = family_report.read_text()
    print(f"family report: {size / 1e6:.2f} MB")
    assert size < 5e6
    assert not EXTERNAL_URL.search(page), EXTERNAL_URL.search(page)
    assert "unpkg.com" not in page and "circuits-vis-" not in page


def test_report_renders_offline_in_chromium(chromium, family_report, tmp_path):
    probe = tmp_path / "report_probe.html"
    probe.write_text(family_report.read_text().replace("</body>", PROBE + "</body>"))

    # 1. load time, real clock
    dom, wall = _run(chromium, tmp_path / "p1", probe)
    load_ms = _attr(dom, "data-load-ms")
    print(f"chromium: load event after {load_ms:.0f} ms in the page; {wall:.2f} s for the whole browser run")
    assert load_ms < 2000
    assert _attr(dom, "data-resources") == [], "the page fetched resources"

    # 2. after the scripts ran: the DOM and a screenshot
    shot = tmp_path / "shot.png"
    dom, _ = _run(
        chromium,
        tmp_path / "p2",
        probe,
        "--virtual-time-budget=5000",
        "--run-all-compositor-stages-before-draw",
        "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={shot}",
    )
    roots = _attr(dom, "data-roots")
    assert len(roots) == 2
    for r in roots:
        assert r["children"] > 0 and r["text"] > 0, f"attention view {r['id']} was not drawn"
    imgs = _attr(dom, "data-imgs")
    kinds = {i["kind"] for i in imgs}
    assert kinds == {
        "steering_sweep", "energy_kept", "weight_overlap", "activation_overlap", "probe_accuracy", "patching",
        "delta_norms", "logit_lens",
    }  # fmt: skip
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == WINDOW
    for item in imgs + [
        {"kind": f"attention {r['id']}", "rect": r["rect"], "complete": True, "width": 1} for r in roots
    ]:
        assert item["complete"] and item["width"] > 0, f"{item['kind']} picture did not load"
        left, top, w, h = item["rect"]
        assert top + h <= WINDOW[1], f"{item['kind']} lies below the screenshot; reorder the test report"
        crop = image.crop((left, top, left + w, top + h))
        colors = crop.getcolors(maxcolors=w * h) or []
        inked = sum(n for n, rgb in colors if sum(rgb) < 720) / (w * h)
        assert len(colors) > 10 and inked > 0.005, f"{item['kind']} region of the screenshot is blank"
