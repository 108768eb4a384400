"""Open an HTML file in headless Chromium: console messages, a screenshot, the rendered DOM.

Console messages come from Chromium's own log (``--enable-logging=stderr``), where every
``console.*`` call and every uncaught exception of the page is one ``CONSOLE`` line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
CONSOLE_RE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\]\s*(.*)")


def _run(extra, page: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="crpo-chromium-") as profile:
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def console_messages(stderr: str):
    return [m.group(1) for m in map(CONSOLE_RE.search, stderr.splitlines()) if m]


def open_page(page: Path, screenshot: Path, width: int = 1300, height: int = 2400) -> dict:
    """{"console": [...], "dom": str, "screenshot": Path}; raises if Chromium fails."""
    shot = _run([f"--screenshot={screenshot}", f"--window-size={width},{height}"], page)
    if not screenshot.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (rc {shot.returncode}): {shot.stderr[-2000:]}")
    dom = _run(["--dump-dom"], page)
    return {"console": console_messages(shot.stderr) + console_messages(dom.stderr), "dom": dom.stdout,
            "screenshot": screenshot}


def image_stats(png: Path) -> dict:
    """Size, number of distinct colors and pixel standard deviation of a PNG."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(png).convert("RGB"))
    colors = len(np.unique(arr.reshape(-1, 3), axis=0))
    return {"width": arr.shape[1], "height": arr.shape[0], "colors": colors, "std": float(arr.std())}
