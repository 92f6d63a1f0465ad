"""The OpenVINO backend: numbers against torch and ONNX Runtime, saved IR, options, errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import slimc
from slimc.backend.onnxruntime import session_for
from support import assert_outputs_close

ov = pytest.importorskip("openvino")

from slimc.backend.openvino import KNOWN_OPTIONS, OpenVinoArtifact  # noqa: E402

PIPE = "fuse-bn,to-onnx,simplify"


def _torch_out(module, x):
    with torch.no_grad():
        return [module(torch.from_numpy(x)).numpy()]


def _ort_out(model, x):
    sess = session_for(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def tiny_compiled():
    from support import TinyCNN, randomize_bn

    torch.manual_seed(0)
    module = randomize_bn(TinyCNN())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    result = slimc.compile(module, x, pipeline=PIPE, backend="openvino", backend_options={"threads": 1},
                           fidelity_samples=0)
    return module, result


def test_tiny_cnn_matches_torch_and_ort(tiny_compiled):
    module, result = tiny_compiled
    assert isinstance(result.artifact, OpenVinoArtifact)
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = result.artifact.run([x])
    assert_outputs_close(_torch_out(module, x), got, rel=1e-4)
    assert_outputs_close(_ort_out(result.onnx, x), got, rel=1e-4)


def test_resnet18_small_input_matches_torch_and_ort():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    result = slimc.compile(module, x, pipeline=PIPE, backend="openvino", fidelity_samples=1)
    fresh = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = result.artifact.run([fresh])
    assert_outputs_close(_torch_out(module, fresh), got, rel=1e-4)
    assert_outputs_close(_ort_out(result.onnx, fresh), got, rel=1e-4)
    # fp32 graphs stay fp32 (the CPU plugin's own default may be bf16)
    assert result.report["backend"]["compiled_properties"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_save_writes_ir_and_sidecar_that_load_back(tiny_compiled, tmp_path):
    _, result = tiny_compiled
    art = result.artifact
    path = art.save(tmp_path / "out")
    assert path.endswith("model.xml")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.bin", "model.json", "model.xml"]
    side = json.loads((tmp_path / "out" / "model.json").read_text())
    assert side["backend"] == "openvino" and side["openvino"] == ov.__version__
    assert side["options"]["threads"] == 1
    assert side["inputs"][0]["name"] == "input" and side["outputs"][0]["name"] == "output"
    x = art.sample_inputs()[0]
    with OpenVinoArtifact.load(path) as again:
        assert again.property("INFERENCE_NUM_THREADS") == 1  # options come back from the sidecar
        assert_outputs_close(art.run([x]), again.run([x]), rel=1e-6)


def test_save_is_atomic_when_writing_fails(tiny_compiled, tmp_path, monkeypatch):
    _, result = tiny_compiled
    out = tmp_path / "out"
    result.artifact.save(out / "model.xml")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(model, path, **kw):
        open(path, "w").write("<half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ov, "save_model", broken)
    with pytest.raises(RuntimeError):
        result.artifact.save(out / "model.xml")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old files intact, no temp leftovers


def test_compress_to_fp16_on_save(tiny_compiled, tmp_path):
    _, result = tiny_compiled
    full = result.artifact.save(tmp_path / "f32" / "m.xml")
    half = result.artifact.save(tmp_path / "f16" / "m.xml", compress_to_fp16=True)
    assert (tmp_path / "f16" / "m.bin").stat().st_size < (tmp_path / "f32" / "m.bin").stat().st_size
    assert json.loads((tmp_path / "f16" / "m.json").read_text())["compress_to_fp16"] is True
    x = result.artifact.sample_inputs()[0]
    with OpenVinoArtifact.load(half) as a, OpenVinoArtifact.load(full) as b:
        assert_outputs_close(b.run([x]), a.run([x]), rel=1e-2)


def test_benchmark_returns_median_and_p90(tiny_compiled):
    bench = tiny_compiled[1].artifact.benchmark(warmup=1, iters=5)
    assert bench.iters == 5 and 0 < bench.median_ms <= bench.p90_ms


def test_options_are_applied(tmp_path):
    from support import TinyCNN

    x = torch.randn(1, 3, 8, 8)
    cache = tmp_path / "cache"
    result = slimc.compile(TinyCNN().eval(), x, pipeline=PIPE, backend="openvino", fidelity_samples=0,
                           backend_options={"hint": "throughput", "threads": 1, "streams": 1, "cache_dir": str(cache)})
    art = result.artifact
    assert str(art.property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert art.property("INFERENCE_NUM_THREADS") == 1
    assert art.property("NUM_STREAMS") == 1
    assert any(cache.iterdir())  # the compiled blob went to the model cache
    assert result.report["backend"]["options"]["hint"] == "THROUGHPUT"


def test_fp16_graph_is_noted():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    art = slimc.get_backend("openvino").build(slimc.Program(model, (torch.zeros(1, 4, dtype=torch.float16),), ("x",)))
    assert any("float16" in n for n in art.describe()["notes"])
    x = np.array([[-1, 0, 2, -3]], dtype=np.float16)
    np.testing.assert_array_equal(art.run([x])[0], np.maximum(x, 0))


@pytest.mark.parametrize("options, words", [
    ({"thread": 2}, ["thread", "threads", *(k.replace("_", "-") for k in KNOWN_OPTIONS)]),
    ({"hint": "FAST"}, ["FAST", "LATENCY", "THROUGHPUT"]),
    ({"threads": "many"}, ["threads"]),
    ({"precision": "int4"}, ["int4", "f32"]),
])
def test_bad_options_fail_before_compiling(options, words):
    with pytest.raises(slimc.SlimcError) as err:
        slimc.get_backend("openvino", **options)
    assert all(w in str(err.value) for w in words)


def test_missing_openvino_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import now raises ImportError
    backend = slimc.get_backend("openvino")
    with pytest.raises(slimc.SlimcError, match=r"pip install 'slimc\[openvino\]'"):
        backend.require("openvino")


def test_cli_compile_with_backend_options(cli, tmp_path, monkeypatch):
    import slimc.cli.common as common
    from support import TinyCNN

    # common.table binds sys.stdout as a default when first imported, which may be an earlier test's
    # closed capture stream; point it at this test's stream.
    monkeypatch.setattr(common.table, "__defaults__", (sys.stdout,))

    src = tmp_path / "tiny.onnx"
    torch.onnx.export(TinyCNN().eval(), (torch.randn(1, 3, 8, 8),), str(src), dynamo=False, opset_version=17)
    rc, out, err = cli("compile", src, "--pipeline", "simplify", "--backend", "openvino",
                       "--backend-option", "threads=1", "--backend-option", "hint=LATENCY", "-o", tmp_path / "art")
    assert rc == 0, err
    assert (tmp_path / "art" / "model.xml").is_file() and (tmp_path / "art" / "model.bin").is_file()
    assert json.loads((tmp_path / "art" / "model.json").read_text())["options"]["threads"] == 1
    rc, out, err = cli("compile", src, "--pipeline", "simplify", "--backend", "openvino",
                       "--backend-option", "hints=LATENCY")
    assert rc == 2 and "has no option 'hints' (did you mean 'hint'?)" in err and "Its options are: device" in err
