"""The HTML report and the explore server's page, loaded in headless Chromium.

Marked `browser`: skipped where no Chromium is installed (`apt-get install chromium`); run with
`make browser-test`. Each test checks that the page renders (a screenshot that is not blank) and
that the expected node/module names are in the DOM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import profile_support as ps

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")]
FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1280,900"]


def chromium(*args, timeout: float = 120) -> str:
    done = subprocess.run([CHROMIUM, *FLAGS, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return done.stdout


def pixel_spread(png: Path) -> float:
    """Standard deviation of the grey levels: 0 for a blank page."""
    from PIL import Image

    return float(np.asarray(Image.open(png).convert("L"), dtype=np.float32).std())


def test_html_report_renders(tmp_path, cli):
    model = ps.save(ps.model("torchscript"), tmp_path / "m.onnx")
    page = tmp_path / "report.html"
    rc, _, err = cli("profile", model, "--runs", "2", "--rounds", "1", "--warmup", "1", "--report-html", page)
    assert rc == 0, err
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and pixel_spread(shot) > 10
    dom = chromium("--dump-dom", page.as_uri())
    assert "Latency breakdown" in dom and "layers.1.conv" in dom and "<svg" in dom


def _wait_for_url(proc, limit: float = 120) -> str:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        line = proc.stdout.readline()
        found = re.search(r"Model Explorer: (http://127\.0\.0\.1:\d+/\S*)", line or "")
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
    raise AssertionError("slimc explore printed no URL")


def test_explore_page_renders(tmp_path):
    pytest.importorskip("model_explorer")
    pytest.importorskip("model_explorer_onnx")
    dumps = tmp_path / "ir"
    dumps.mkdir()
    ps.save(ps.model("dynamo"), dumps / "03-simplify.onnx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), str(Path(__file__).parents[1])])}
    proc = subprocess.Popen([sys.executable, "-m", "slimc.cli.main", "explore", str(dumps), "--no-browser",
                             "--timeout", "180"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        url = _wait_for_url(proc)
        assert url.startswith("http://127.0.0.1:")
        shot = tmp_path / "explore.png"
        chromium(f"--screenshot={shot}", "--timeout=15000", url)
        assert shot.is_file() and pixel_spread(shot) > 10
        dom = chromium("--dump-dom", "--timeout=15000", url)
        assert "Model Explorer" in dom and "03-simplify.onnx" in dom
    finally:
        proc.terminate()
        proc.wait(timeout=30)
