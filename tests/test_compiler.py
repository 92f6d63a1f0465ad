"""slimc.compile end to end: resnet18 through fuse-bn/to-onnx/simplify on ONNX Runtime, the report,
ONNX inputs, and the user's module left alone; bad inputs are SlimcErrors."""

from __future__ import annotations

import copy
import functools
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import slimc
from slimc import SlimcError
from slimc.ir.onnx_io import load_onnx
from support import assert_outputs_close, bn_modules, fresh_inputs, n_params


@pytest.mark.slow
def test_resnet18_through_the_default_pipeline(tmp_path):
    result = slimc.compile("torchvision:resnet18", torch.randn(1, 3, 64, 64), pipeline="fuse-bn,to-onnx,simplify",
                           backend="onnxruntime", report=slimc.ReportOptions(
                               path=tmp_path / "report.json", output_dir=tmp_path / "out", fidelity_samples=3,
                               benchmark_iters=3))
    r = result.report
    assert set(r) >= {"source", "inputs", "pipeline", "passes", "before", "after", "fidelity", "artifact", "backend",
                      "seconds", "benchmark"}
    assert r["source"] == "torchvision:resnet18"
    assert r["inputs"] == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert r["pipeline"].startswith("fuse-bn,to-onnx{opset=18 ") and ",simplify{check-n=" in r["pipeline"]
    assert r["frontend"] == "torch.export" and r["passes"][1]["details"]["opset"] == 18
    assert [p["name"] for p in r["passes"]] == ["fuse-bn", "to-onnx", "simplify"]
    for p in r["passes"]:
        assert set(p) >= {"name", "level", "seconds", "changed", "stats"}
        assert set(p["stats"]) == {"params", "macs", "nodes"} and p["seconds"] >= 0
    assert [p["level"] for p in r["passes"]] == ["fx", "onnx", "onnx"]
    assert r["passes"][0]["changed"] and r["passes"][0]["details"]["fused"] == 20
    # structure: 20 BatchNorms (9600 parameters) folded, 20 conv biases (4800) added; MACs unchanged
    before, after = r["before"], r["after"]
    assert before["params"] == 11_689_512
    assert r["passes"][0]["stats"]["params"] == before["params"] - 9600 + 4800
    # the exporter shares identical initializers (fresh BNs fold to equal all-zero biases): never more
    assert after["params"] <= r["passes"][0]["stats"]["params"]
    assert after["macs"] == before["macs"] > 0
    assert before["ops"]["native_batch_norm"] == 20 and "BatchNormalization" not in after["ops"]
    assert after["ops"]["Conv"] == 20
    # numbers
    fid = r["fidelity"]
    assert set(fid) >= {"max_abs_err", "rel_err", "cosine", "top1_agreement"}
    assert fid["samples"] == 3
    assert fid["rel_err"] < 1e-4 and fid["cosine"] > 0.99999 and fid["top1_agreement"] == 1.0
    # artifact, backend, report file
    assert r["artifact"] == str(tmp_path / "out" / "model.onnx")
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "model.json").is_file()
    assert r["backend"]["backend"] == "onnxruntime"
    assert 0 < r["benchmark"]["median_ms"] <= r["benchmark"]["p90_ms"]
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(r))
    # the trainable module after the FX passes
    assert isinstance(result.module, nn.Module) and bn_modules(result.module) == []
    assert isinstance(result.onnx, onnx.ModelProto)
    xs = fresh_inputs(result.program)
    with torch.no_grad():
        from_module = result.module(torch.from_numpy(xs[0])).numpy()
    assert_outputs_close([from_module], result.artifact.run(xs), rel=1e-4)


def test_user_module_is_not_modified(tiny_cnn, tiny_input):
    tiny_cnn.train()
    state = copy.deepcopy(tiny_cnn.state_dict())
    result = slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn,to-onnx", fidelity_samples=2)
    assert bn_modules(tiny_cnn) == ["bn1", "bn2"]
    assert tiny_cnn.training
    after = tiny_cnn.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert result.module is not tiny_cnn and bn_modules(result.module) == []
    assert n_params(result.module) == n_params(tiny_cnn) - 32 + 8
    assert result.report["fidelity"]["max_abs_err"] < 1e-4  # the report compares against eval mode


def test_compile_without_backend_and_with_dumps(tmp_path, tiny_cnn, tiny_input):
    seen = []
    inst = slimc.Instrumentation(dump_ir=tmp_path / "dump", dump_ir_changed_only=True, verify_each=True,
                                 on_pass=lambda rec: seen.append(rec.name))
    result = slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn,to-onnx,eliminate-dead", backend=None,
                           instrumentation=inst)
    assert result.artifact is None and result.report["artifact"] is None and result.report["backend"] is None
    assert seen == ["fuse-bn", "to-onnx", "eliminate-dead"]
    assert result.report["fidelity"]["max_abs_err"] < 1e-4
    stems = sorted({p.name.split(".")[0] for p in (tmp_path / "dump").iterdir() if not p.name.startswith(".")})
    assert stems == ["00-input", "01-fuse-bn", "02-to-onnx"]


@pytest.mark.parametrize("rank, writes", [("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_writes(monkeypatch, tmp_path, tiny_cnn, tiny_input, rank, writes):
    monkeypatch.setenv("RANK", rank)
    result = slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn", instrumentation=slimc.Instrumentation(dump_ir=tmp_path / "dump"),
                           report=slimc.ReportOptions(path=tmp_path / "report.json", output_dir=tmp_path / "out"))
    assert result.artifact is not None and result.artifact.run([tiny_input])[0].shape == (tiny_input.shape[0], 10)
    assert (result.report["artifact"] is not None) == writes
    assert (tmp_path / "report.json").exists() == writes
    assert (tmp_path / "out").exists() == writes and (tmp_path / "dump").exists() == writes


def test_onnx_file_input(tmp_path, tiny_cnn, tiny_input):
    exported = slimc.compile(tiny_cnn, tiny_input, pipeline="to-onnx", backend=None, fidelity_samples=0).onnx
    src = tmp_path / "tiny.onnx"
    onnx.save(exported, src)
    result = slimc.compile(str(src), pipeline="simplify,dedupe-weights", backend="onnxruntime",
                           output_dir=tmp_path / "out", fidelity_samples=2)
    assert result.module is None
    assert result.report["pipeline"].startswith("simplify{")
    assert result.report["inputs"] == [{"name": "input", "shape": [2, 3, 8, 8], "dtype": "float32"}]
    assert result.report["fidelity"]["max_abs_err"] < 1e-5
    xs = fresh_inputs(result.program)
    assert_outputs_close(result.program.with_ir(load_onnx(src)).run(xs), result.artifact.run(xs), rel=1e-5)


def test_compile_accepts_pass_objects_and_pipelines(tiny_cnn, tiny_input):
    from slimc.passes.fx.fuse_bn import FuseBN

    result = slimc.compile(tiny_cnn, tiny_input, pipeline=[FuseBN()], backend="torch", fidelity_samples=0)
    assert result.report["pipeline"] == "fuse-bn" and result.report["fidelity"] is None


# ---- bad input ----------------------------------------------------------------------

def test_torch_model_needs_input_shapes(tiny_cnn):
    with pytest.raises(SlimcError, match="needs the input shapes"):
        slimc.compile(tiny_cnn)


def test_inputs_that_do_not_fit_the_torch_model(tiny_cnn):
    with pytest.raises(SlimcError, match="does not run on inputs of shape 1x4x8x8"):
        slimc.compile(tiny_cnn, input_shapes=["1x4x8x8"])


def test_inputs_that_do_not_fit_the_onnx_model(tmp_path, tiny_cnn, tiny_input):
    exported = slimc.compile(tiny_cnn, tiny_input, pipeline="to-onnx", backend=None, fidelity_samples=0).onnx
    src = tmp_path / "tiny.onnx"
    onnx.save(exported, src)
    with pytest.raises(SlimcError) as e:
        slimc.compile(str(src), pipeline="simplify", input_shapes=["1x3x5x5"])
    assert "does not run on the given input shapes (1x3x5x5:float32)" in str(e.value)
    with pytest.raises(SlimcError, match="does not run on the given input shapes"):
        slimc.compile(str(src), pipeline="simplify", input_shapes=["2x3x8x8:int64"])
    with pytest.raises(SlimcError, match="has 1 inputs \\(input\\), but 2 input shapes"):
        slimc.compile(str(src), pipeline="simplify", input_shapes=["2x3x8x8", "2x3x8x8"])


def test_output_directory_that_cannot_be_written(tmp_path, tiny_cnn, tiny_input):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SlimcError) as e:
        slimc.compile(tiny_cnn, tiny_input, output_dir=blocker / "out")
    assert "output directory" in str(e.value) and "cannot be written" in str(e.value)


def test_unknown_backend_and_bad_pipeline_fail_before_any_work(tiny_cnn, tiny_input):
    with pytest.raises(SlimcError, match="did you mean 'onnxruntime'"):
        slimc.compile(tiny_cnn, tiny_input, backend="onnxrt")
    with pytest.raises(SlimcError, match="did you mean 'fuse-bn'"):
        slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-nb")


# ---- reproducibility, fidelity that cannot fail the compile, NaN is a failure ------------------

SEEDED_FACTORY = "import torch.nn as nn\n\ndef make():\n    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))\n"


def _weights(result):
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in result.onnx.graph.initializer]


def test_the_seed_makes_model_creation_reproducible(tmp_path):
    import numpy as np

    f = tmp_path / "factory.py"
    f.write_text(SEEDED_FACTORY)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = slimc.compile(f"{f}:make", input_shapes=["2x6"], pipeline="to-onnx", backend=None)
    b = slimc.compile(f"{f}:make", pipeline="to-onnx", backend=None, inputs=slimc.InputOptions(shapes=("2x6",)))
    c = slimc.compile(f"{f}:make", input_shapes=["2x6"], pipeline="to-onnx", backend=None, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(c)))
    assert a.report["seed"] == 0 and c.report["seed"] == 1
    assert a.report["fidelity"] == b.report["fidelity"]  # the check's inputs follow the seed too
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone


@functools.lru_cache(maxsize=1)
def _node_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators' own overflow warnings
        return {c.name: c for c in collect_testcases(None)}


def _node_case(name):
    case = _node_cases()[name]
    return case.model, [torch.from_numpy(np.ascontiguousarray(a)) for a in case.data_sets[0][0]]


# Cases from ONNX's node tests where drawing index-like inputs at random (axes, split sizes, scales),
# empty outputs or integer division ended the compile in a raw ONNX Runtime or numpy error.
NODE_CASES = ["test_reduce_sum_square_negative_axes_keepdims_example", "test_constantofshape_int_shape_zero",
              "test_split_variable_parts_default_axis_opset18", "test_resize_upsample_sizes_nearest_not_larger",
              "test_slice_end_out_of_bounds", "test_div_uint32", "test_reduce_max_empty_set"]


@pytest.mark.parametrize("name", NODE_CASES)
def test_fidelity_on_onnx_node_cases_with_integer_and_index_inputs(tmp_path, name):
    model, inputs = _node_case(name)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    result = slimc.compile(str(path), inputs, pipeline="simplify", backend="onnxruntime", fidelity_samples=4)
    fid = result.report["fidelity"]
    assert fid["ok"] is True and fid["max_abs_err"] == 0.0 and fid["nonfinite"] == 0, fid
    assert result.ok


def test_a_fidelity_check_that_cannot_run_does_not_end_the_compile(monkeypatch, tiny_cnn, tiny_input):
    from slimc.ir.program import Program

    def broken(self, seed=0, batch=None):
        raise ValueError("cannot draw inputs")

    monkeypatch.setattr(Program, "random_inputs", broken)
    result = slimc.compile(tiny_cnn, tiny_input, pipeline="to-onnx", backend="onnxruntime", fidelity_samples=2)
    assert result.report["fidelity"] == {"error": "failed to measure: cannot draw inputs"}
    assert result.artifact is not None and result.ok  # unmeasured is not a failure


def overflowing_onnx():
    """y = x * 1e5 + x: the scale is past float16's 65504, so in float16 every y is +-Inf."""
    from onnx import TensorProto, helper

    from support import make_onnx

    scale = helper.make_tensor("scale", TensorProto.FLOAT, [1], [1e5])
    return make_onnx([helper.make_node("Mul", ["x", "scale"], ["s"]), helper.make_node("Add", ["s", "x"], ["y"])],
                     [("x", [2, 16])], [("y", [2, 16])], [scale])


def test_nan_or_inf_after_to_fp16_fails_the_fidelity_check(tmp_path):
    path = tmp_path / "overflow.onnx"
    onnx.save(overflowing_onnx(), path)
    result = slimc.compile(str(path), pipeline="to-fp16", backend="onnxruntime", input_shapes=["2x16"])
    fid = result.report["fidelity"]
    assert fid["ok"] is False and fid["nonfinite"] > 0 and "NaN or Inf" in fid["failure"]
    assert not result.ok
    fine = slimc.compile(str(path), pipeline="simplify", backend="onnxruntime", input_shapes=["2x16"])
    assert fine.ok and fine.report["fidelity"]["nonfinite"] == 0


def test_torchvision_weights_are_the_same_each_run():
    pytest.importorskip("torchvision")
    a = slimc.compile("torchvision:squeezenet1_1", input_shapes=["1x3x32x32"], pipeline="to-onnx", backend=None,
                      fidelity_samples=0)
    b = slimc.compile("torchvision:squeezenet1_1", input_shapes=["1x3x32x32"], pipeline="to-onnx", backend=None,
                      fidelity_samples=0)
    assert all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b)))
