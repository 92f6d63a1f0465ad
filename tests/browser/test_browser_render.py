"""The HTML report and the explore server's page, loaded in headless Chromium.

Marked `browser`: skipped where Chromium (or websocket-client, which drives it) is missing; run with
`make browser-test`. Each test checks that the page renders (a screenshot that is not blank) and
that the expected node/module names are in the DOM.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import profile_support as ps
from headless import CHROMIUM, open_page

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")]
ROOT = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _driver():
    pytest.importorskip("websocket", reason="websocket-client drives Chromium (the dev extra)")


def pixel_spread(png: Path) -> float:
    """Standard deviation of the grey levels: 0 for a blank page."""
    from PIL import Image

    return float(np.asarray(Image.open(png).convert("L"), dtype=np.float32).std())


def test_html_report_renders(tmp_path, cli):
    model = ps.save(ps.model("torchscript"), tmp_path / "m.onnx")
    page_file = tmp_path / "report.html"
    rc, _, err = cli("profile", model, "--runs", "2", "--rounds", "1", "--warmup", "1", "--report-html", page_file)
    assert rc == 0, err
    with open_page(page_file.as_uri()) as page:
        assert page.wait_for_text(["Latency breakdown", "layers.1.conv"], limit=30)
        shot = page.screenshot(tmp_path / "report.png")
        dom = page.dom()
    assert pixel_spread(shot) > 10
    assert "<svg" in dom and "stem" in dom and "head" in dom


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


def test_explore_page_renders_graph_and_overlays(tmp_path):
    pytest.importorskip("model_explorer")
    pytest.importorskip("model_explorer_onnx")
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    for folder, width in ((dense, 8), (pruned, 4)):
        folder.mkdir()
        ps.save(ps.model("dynamo", width=width), folder / "03-simplify.onnx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen([sys.executable, "-m", "slimc.cli.main", "explore", str(pruned), "--compare", str(dense),
                             "--no-browser", "--timeout", "180"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        url = _wait_for_url(proc)
        assert url.startswith("http://127.0.0.1:")
        with open_page(url) as page:
            # the graph converted and drawn, with slimc's overlays listed as node data providers
            assert page.wait_for_text(["03-simplify.onnx", "channels kept", "out channels"], limit=90), page.dom()[:2000]
            page.evaluate("document.querySelector('div.expand-all') && document.querySelector('div.expand-all').click()")
            time.sleep(2)
            shot = page.screenshot(tmp_path / "explore.png")
            dom = page.dom()
        assert pixel_spread(shot) > 10
        assert "main_graph" in dom and "Conv" in dom and "Gemm" in dom
    finally:
        proc.terminate()
        proc.wait(timeout=30)
