"""Size and offline load time of a results folder's report.html in headless Chromium.

Usage::

    python benchmarks/bench_report.py deltalens-results     # after `deltalens run`

Goal: under 5 MB, load event under 2 s, no network request.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

PROBE = (
    "<script>window.addEventListener('load',function(){var b=document.body;"
    "b.setAttribute('data-load-ms',JSON.stringify(performance.now()));"
    "b.setAttribute('data-resources',JSON.stringify(performance.getEntriesByType('resource')"
    ".map(function(e){return e.name;})));});</script>"
)
EXTERNAL = r"""(?:src|href)=["']https?://"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", default="deltalens-results")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    page = Path(args.results) / "report.html"
    text = page.read_text()
    from deltalens.viz.browser import body_attr, dump_dom, find_chromium

    browser = find_chromium()
    if browser is None:
        raise SystemExit("Debian's chromium is needed: apt-get install -y chromium")
    external = len(re.findall(EXTERNAL, text))
    print(f"{page}: {page.stat().st_size / 1e6:.2f} MB; external src/href: {external}")
    with tempfile.TemporaryDirectory() as d:
        probed = Path(d) / "report.html"
        probed.write_text(text.replace("</body>", PROBE + "</body>"))
        for i in range(args.runs):
            dom, wall = dump_dom(
                [browser], probed, Path(d) / f"p{i}", "--virtual-time-budget=3000", timeout=120
            )
            others = [r for r in body_attr(dom, "data-resources") or [] if "report.html" not in r]
            print(
                f"run {i + 1}: load event {body_attr(dom, 'data-load-ms'):.0f} ms in page; "
                f"browser process {wall:.2f} s; requests other than the page itself: {others}"
            )


if __name__ == "__main__":
    main()
