"""Open a saved page in headless Chromium with networking disabled (for checks and benchmarks).

Example:
    >>> browser = offline_browser()     # ["unshare", "-n", ".../chromium"], [".../chromium"] or None
    >>> dom, seconds = dump_dom(browser, "report.html", profile="/tmp/profile")
    >>> body_attr(dom, "data-load-ms")                  # a value a page script stored on <body>
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--proxy-server=127.0.0.1:9",  # a dead proxy and resolver: nothing can leave the page
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def offline_browser() -> list[str] | None:
    """The command that starts a Chromium-family browser with networking off, or None without one.

    The browser runs in a private network namespace (``unshare -n``) when that works on this
    machine; :func:`dump_dom` adds :data:`OFFLINE_FLAGS` (a dead proxy and resolver) either way.
    Nothing is installed.
    """
    path = find_chromium()
    if path is None:
        return None
    probe = ["unshare", "-n", "true"]
    if shutil.which("unshare") and subprocess.run(probe, capture_output=True).returncode == 0:
        return ["unshare", "-n", path]
    return [path]


def dump_dom(
    browser: list[str], page: str | Path, profile: str | Path, *extra: str, timeout: float = 180
) -> tuple[str, float]:
    """Load ``page`` offline and return (the DOM after its scripts ran, wall seconds of the browser run).

    Args:
        browser: the command that starts the browser (e.g. ``["unshare", "-n", "/usr/bin/chromium"]``).
        profile: an empty folder for the throw-away browser profile.
        *extra: more flags (``--window-size=...``, ``--virtual-time-budget=...``).

    Raises:
        RuntimeError: the browser exited with an error.
    """
    cmd = [
        *browser,
        *OFFLINE_FLAGS,
        f"--user-data-dir={profile}",
        *extra,
        "--dump-dom",
        Path(page).resolve().as_uri(),
    ]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"chromium failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout, wall


def body_attr(dom: str, name: str) -> Any:
    """The JSON value a page script stored as attribute ``name`` on ``<body>``, or None if absent."""
    m = re.search(rf'<body[^>]*\s{name}="([^"]*)"', dom)
    return json.loads(html.unescape(m.group(1))) if m else None
