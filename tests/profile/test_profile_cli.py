"""`slimc profile` and `slimc compile --profile` end to end, on ONNX Runtime and OpenVINO, tiny models."""

from __future__ import annotations

import json
import textwrap

import pytest

import profile_support as ps
from slimc.ir.stats import onnx_node_macs

pytest.importorskip("openvino")

FAST = ["--runs", "3", "--rounds", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"ts": ps.save(ps.model("torchscript"), d / "dense.onnx"),
            "narrow": ps.save(ps.model("torchscript", width=4), d / "narrow.onnx"),
            "dynamo": ps.save(ps.model("dynamo"), d / "dynamo.onnx")}


@pytest.mark.parametrize("which", ["ts", "dynamo"])
def test_profile_on_both_backends(cli, models, tmp_path, which):
    report, png, page = tmp_path / "p.json", tmp_path / "p.png", tmp_path / "p.html"
    rc, out, err = cli("profile", models[which], "--backend", "onnxruntime", "--backend", "openvino", *FAST,
                       "--report", report, "--plot", png, "--report-html", page)
    assert rc == 0, err
    data = json.loads(report.read_text())
    assert [p["backend"] for p in data["profiles"]] == ["onnxruntime", "openvino"]
    macs = onnx_node_macs(ps.model("torchscript"))
    for prof in data["profiles"]:
        modules = {r["module"]: r for r in prof["by_module"]}
        # every conv and the linear got time, under its PyTorch module path, with its MACs
        for module, node in (("stem", "/stem/Conv"), ("layers.1.conv", "/layers/layers.1/conv/Conv"),
                             ("head", "/head/Gemm")):
            assert modules[module]["ms"] > 0, (prof["backend"], module)
            assert modules[module]["macs"] == macs[node]
        assert prof["end_to_end_ms"] > 0 and prof["profiled_ms"] > 0
        assert sum(r["ms"] for r in prof["by_op"]) == pytest.approx(prof["profiled_ms"], rel=1e-3)
        assert prof["runs"] == 6
    assert "layers.1.conv" in out and "end to end" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "layers.1.conv" in page.read_text()


def test_compare_puts_two_models_side_by_side(cli, models, tmp_path):
    report = tmp_path / "c.json"
    rc, out, err = cli("profile", models["ts"], "--compare", models["narrow"], *FAST, "--report", report)
    assert rc == 0, err
    rows = {r["module"]: r for r in json.loads(report.read_text())["compare"]["onnxruntime"]}
    # layers.0.conv: 8->8 channels become 4->4, a quarter of the MACs; the stem keeps its input, half
    assert rows["layers.0.conv"]["macs_ratio"] == pytest.approx(0.25)
    assert rows["stem"]["macs_ratio"] == pytest.approx(0.5)
    assert rows["stem"]["ms_before"] > 0 and rows["stem"]["ms_after"] > 0
    assert "MACs before" in out and "dense.onnx vs narrow.onnx" in out


def test_compile_profile_and_html_report(cli, tmp_path):
    factory = tmp_path / "nets.py"
    factory.write_text(textwrap.dedent("""
        import profile_support
        def nested():
            return profile_support.Nested().eval()
    """))
    report, page = tmp_path / "r.json", tmp_path / "r.html"
    rc, out, err = cli("compile", f"{factory}:nested", "--input-shape", "1x3x16x16", "--profile",
                       "--profile-runs", "3", "--report", report, "--report-html", page)
    assert rc == 0, err
    data = json.loads(report.read_text())
    prof = data["profile"]["profiles"][0]
    assert prof["backend"] == "onnxruntime" and prof["layers"]
    # the default TorchScript export of the FX module names nodes '/conv_1/Conv'; the paths come back
    assert {"stem", "layers.0.conv", "layers.1.conv", "head"} <= {r["module"] for r in prof["by_module"] if r["ms"] > 0}
    html = page.read_text()
    assert "Passes" in html and "simplify" in html and "Latency breakdown" in html


def test_no_profiling_unless_asked(tmp_path):
    import slimc

    result = slimc.compile(ps.Nested().eval(), __import__("torch").randn(*ps.SHAPE), backend="onnxruntime",
                           fidelity_samples=0)
    assert result.artifact.session.get_session_options().enable_profiling is False
    assert "profile" not in result.report


def test_tensorrt_says_it_cannot_run_here():
    from slimc.backend.base import CannotRunHere
    from slimc.profile.runtimes import timer_for

    class FakeEngine:
        backend = "tensorrt"

    try:
        timer_for(FakeEngine())
    except CannotRunHere as exc:
        assert "GPU" in str(exc) or "TensorRT" in str(exc)
    else:  # pragma: no cover - a GPU machine has no TensorRT layer timer yet either
        pytest.fail("expected CannotRunHere")


def test_bad_backend_is_a_clean_error(cli, models):
    rc, out, err = cli("profile", models["ts"], "--backend", "torch")
    assert rc == 2 and "slimc: error:" in err


def test_profile_a_saved_openvino_ir(cli, models, tmp_path):
    rc, _, err = cli("compile", models["ts"], "--pipeline", "simplify", "--backend", "openvino", "-o", tmp_path / "ov")
    assert rc == 0, err
    report = tmp_path / "ov.json"
    rc, out, err = cli("profile", tmp_path / "ov" / "model.xml", "--backend", "openvino", *FAST, "--report", report)
    assert rc == 0, err
    prof = json.loads(report.read_text())["profiles"][0]
    modules = {r["module"] for r in prof["by_module"] if r["ms"] > 0}
    assert {"stem", "layers.0.conv", "layers.1.conv"} <= modules  # from OpenVINO's layer names alone
    rc, _, err = cli("profile", tmp_path / "ov" / "model.xml")
    assert rc == 2 and "--backend openvino" in err


def test_profile_a_torch_spec_through_a_pipeline(cli, tmp_path):
    factory = tmp_path / "nets2.py"
    factory.write_text("import profile_support\ndef nested():\n    return profile_support.Nested().eval()\n")
    report = tmp_path / "t.json"
    rc, out, err = cli("profile", f"{factory}:nested", "--input-shape", "1x3x16x16", "--pipeline",
                       "fuse-bn,to-onnx{exporter=dynamo},simplify", "--backend", "openvino", *FAST, "--report", report)
    assert rc == 0, err
    prof = json.loads(report.read_text())["profiles"][0]
    assert prof["backend"] == "openvino"
    assert {"stem", "layers.0.conv", "layers.1.conv", "head"} <= {r["module"] for r in prof["by_module"] if r["ms"] > 0}
