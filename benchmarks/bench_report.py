"""Size and offline load time of a results folder's report.html in headless Chromium.

Usage::

    python benchmarks/bench_report.py deltalens-results     # after `deltalens run`

Goal: under 5 MB, load event under 2 s, no network request.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PROBE = (
    "<script>window.addEventListener('load',function(){var b=document.body;"
    "b.setAttribute('data-load-ms',JSON.stringify(performance.now()));"
    "b.setAttribute('data-resources',JSON.stringify(performance.getEntriesByType('resource')"
    ".map(function(e){return e.name;})));});</script>"
)
EXTERNAL = r"""(?:src|href)=["']https?://"""
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=3000",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", default="deltalens-results")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    page = Path(args.results) / "report.html"
    text = page.read_text()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("Debian's chromium is needed: apt-get install -y chromium")
    external = len(re.findall(EXTERNAL, text))
    print(f"{page}: {page.stat().st_size / 1e6:.2f} MB; external src/href: {external}")
    with tempfile.TemporaryDirectory() as d:
        probed = Path(d) / "report.html"
        probed.write_text(text.replace("</body>", PROBE + "</body>"))
        for i in range(args.runs):
            t = time.perf_counter()
            out = subprocess.run(
                [browser, *FLAGS, f"--user-data-dir={d}/p{i}", "--dump-dom", probed.as_uri()],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            wall = time.perf_counter() - t

            def attr(name: str, dom: str = out):
                m = re.search(rf'<body[^>]*\s{name}="([^"]*)"', dom)
                return json.loads(html.unescape(m.group(1))) if m else None

            print(
                f"run {i + 1}: load event {attr('data-load-ms'):.0f} ms in page; browser process {wall:.2f} s; "
                f"requests other than the page itself: {[r for r in attr('data-resources') or [] if 'report.html' not in r]}"
            )


if __name__ == "__main__":
    main()
