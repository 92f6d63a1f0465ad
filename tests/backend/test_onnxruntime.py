"""ONNX Runtime backend: build, run, save (model + .json sidecar), benchmark; options and errors."""

from __future__ import annotations

import json

import onnx
import pytest

import slimc
from slimc import SlimcError
from slimc.backend.base import BenchmarkResult, get_backend, time_calls
from slimc.backend.onnxruntime import OnnxRuntimeArtifact, session_for
from slimc.passes.lower import ToOnnx
from support import assert_outputs_close, fresh_inputs, program_of


@pytest.fixture
def onnx_prog(tiny_cnn, tiny_input):
    return ToOnnx().apply(program_of(tiny_cnn, tiny_input)).program


def test_build_and_run(onnx_prog, tiny_cnn):
    art = get_backend("onnxruntime").build(onnx_prog)
    assert isinstance(art, OnnxRuntimeArtifact) and art.backend == "onnxruntime"
    xs = fresh_inputs(onnx_prog)
    out = art.run(xs)
    assert_outputs_close(onnx_prog.run(xs), out, rel=1e-5)
    from slimc.ir.runner import run_torch

    assert_outputs_close(run_torch(tiny_cnn, xs), out, rel=1e-5)
    assert [a.shape for a in art.sample_inputs()] == [(2, 3, 8, 8)]
    with pytest.raises(SlimcError, match="takes 1 inputs \\(input\\), got 2"):
        art.run(xs + xs)


def test_save_writes_model_and_sidecar(onnx_prog, tmp_path):
    with get_backend("onnxruntime", threads=1, optimization="basic").build(onnx_prog) as art:
        path = art.save(tmp_path / "out")
        assert path == str(tmp_path / "out" / "model.onnx") == art.path
        sidecar = json.loads((tmp_path / "out" / "model.json").read_text())
        assert sidecar["backend"] == "onnxruntime" and sidecar["threads"] == 1 and sidecar["optimization"] == "basic"
        assert sidecar["inputs"] == [{"name": "input", "shape": [2, 3, 8, 8], "type": "tensor(float)"}]
        assert sidecar["outputs"][0]["name"] == "output" and sidecar["outputs"][0]["shape"] == [2, 10]
        assert "onnxruntime" in sidecar  # the runtime version
        saved = onnx.load(path)
        xs = fresh_inputs(onnx_prog)
        assert_outputs_close(art.run(xs), onnx_prog.with_ir(saved).run(xs), rel=1e-6)
        # an explicit .onnx name: sidecar beside it with the same stem
        named = art.save(tmp_path / "named.onnx")
        assert named == str(tmp_path / "named.onnx") and (tmp_path / "named.json").is_file()


def test_benchmark_reports_median_and_p90(onnx_prog):
    art = get_backend("onnxruntime").build(onnx_prog)
    b = art.benchmark(warmup=1, iters=7)
    assert isinstance(b, BenchmarkResult) and b.iters == 7
    assert 0 < b.median_ms <= b.p90_ms
    assert set(b.as_dict()) == {"median_ms", "p90_ms", "mean_ms", "iters"}


def test_time_calls_statistics():
    ticks = iter(range(1000))
    r = time_calls(lambda: next(ticks), warmup=2, iters=11)
    assert r.iters == 11 and r.median_ms >= 0 and r.p90_ms >= r.median_ms
    assert next(ticks) == 13  # 2 warm-up calls + 11 timed ones


def test_backend_options_are_checked_when_the_backend_is_made():
    with pytest.raises(SlimcError, match="has no option 'thread' \\(did you mean 'threads'\\?\\). Its options are: threads"):
        get_backend("onnxruntime", thread=2)
    with pytest.raises(SlimcError, match="'optimization' .* expects one of disable\\|basic\\|extended\\|all, got 'max'"):
        get_backend("onnxruntime", optimization="max")
    with pytest.raises(SlimcError, match="'threads' .* expects an integer, got 'two'"):
        get_backend("onnxruntime", threads="two")
    opts = get_backend("onnxruntime", threads="2", providers="CPUExecutionProvider").options
    assert opts.threads == 2 and opts.providers == ("CPUExecutionProvider",)


def test_unknown_backend_suggests_the_nearest():
    with pytest.raises(SlimcError) as e:
        get_backend("onnxruntim")
    msg = str(e.value)
    assert "unknown backend 'onnxruntim'" in msg and "did you mean 'onnxruntime'" in msg
    assert "onnxruntime" in slimc.backend_names() and "torch" in slimc.backend_names()


def test_missing_runtime_names_the_extra():
    backend = get_backend("onnxruntime")
    with pytest.raises(SlimcError) as e:
        backend.require("slimc_tests_no_such_runtime")
    assert "backend 'onnxruntime' needs the Python package 'slimc_tests_no_such_runtime'" in str(e.value)
    assert "pip install" in str(e.value)


def test_unloadable_model_is_a_clear_error(onnx_prog):
    model = onnx.ModelProto()
    model.CopyFrom(onnx_prog.ir)
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(SlimcError, match="ONNX Runtime cannot load this model"):
        session_for(model)
