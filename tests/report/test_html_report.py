"""The self-contained HTML report: sections present, data escaped, nothing fetched from the network."""

from __future__ import annotations

import re

from slimc.profile import LayerTime, Profile, compare
from slimc.report import render_html_report, write_html_report

COMPILE = {"source": "torchvision:resnet18", "pipeline": "fuse-bn,to-onnx,simplify", "backend": {"backend": "onnxruntime"},
           "before": {"params": 100, "macs": 1000, "nodes": 5, "ops": {"Conv": 2, "BatchNormalization": 2, "Relu": 1}},
           "after": {"params": 90, "macs": 1000, "nodes": 3, "ops": {"Conv": 2, "Relu": 1}},
           "passes": [{"name": "fuse-bn", "level": "fx", "seconds": 0.01, "changed": True,
                       "stats": {"params": 90, "macs": 1000, "nodes": 3}}],
           "fidelity": {"samples": 2, "max_abs_err": 1e-6, "cosine": 1.0}}


def _profiles():
    a = Profile("openvino", "dense", [LayerTime("x", "Convolution", "x", "layer1.0.conv1", 2.0)], 2.2, 3,
                {"layer1.0.conv1": 400})
    b = Profile("openvino", "pruned<b>", [LayerTime("x", "Convolution", "x", "layer1.0.conv1", 1.9)], 2.0, 3,
                {"layer1.0.conv1": 100})
    return {"profiles": [a.as_dict(), b.as_dict()], "compare": {"openvino": compare(a, b)}}


def test_report_has_every_section_and_no_external_resources(tmp_path):
    search = tmp_path / "search"
    search.mkdir()
    (search / "pareto.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (search / "summary.md").write_text("| id | score |\n| 1 | 0.9 |\n")
    page = write_html_report(tmp_path / "r.html", COMPILE, _profiles(), search)
    html = page.read_text()
    for expected in ("Passes", "fuse-bn", "Op histogram", "BatchNormalization", "Latency breakdown",
                     "layer1.0.conv1", "fewer MACs, same time", "Search", "data:image/png;base64,"):
        assert expected in html, expected
    assert "pruned&lt;b&gt;" in html and "pruned<b>" not in html  # labels are escaped
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained: nothing to fetch
    assert html.count("<svg") == 2  # op histogram + latency bars


def test_report_without_profile_or_search():
    html = render_html_report(COMPILE)
    assert "Passes" in html and "Latency breakdown" not in html and "Search" not in html


def test_report_html_command(cli, tmp_path):
    import json

    (tmp_path / "c.json").write_text(json.dumps(COMPILE))
    (tmp_path / "p.json").write_text(json.dumps(_profiles()))
    out = tmp_path / "r.html"
    rc, stdout, err = cli("report-html", "-o", out, "--compile-report", tmp_path / "c.json", "--profile", tmp_path / "p.json")
    assert rc == 0, err
    html = out.read_text()
    assert "fuse-bn" in html and "layer1.0.conv1" in html
    rc, _, err = cli("report-html", "-o", out, "--compile-report", tmp_path / "p.json")
    assert rc == 2 and "not a compile report" in err
    rc, _, err = cli("report-html", "-o", out)
    assert rc == 2 and "at least one" in err
