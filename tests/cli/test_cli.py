"""The `slimc` command: compile, opt, inspect, passes; every bad input exits 2 with 'slimc: error:' and no traceback."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import helper

import slimc
from slimc.ir.onnx_io import load_onnx
from slimc.ir.stats import onnx_stats
from slimc.passes.registry import format_value
from support import check_same_function, init, make_onnx

MODELS_PY = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


    class Gate(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x


    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gate = Gate()

        def forward(self, x):
            return self.gate(self.conv(x)).relu()


    def tiny():
        torch.manual_seed(0)
        m = Tiny()
        with torch.no_grad():
            m.bn.running_mean.uniform_(-1, 1)
            m.bn.running_var.uniform_(0.5, 2)
        return m


    def gated():
        return Gated()


    def not_a_module():
        return [1, 2, 3]
''')

GATE_IF_LINE = MODELS_PY.splitlines().index("        if x.sum() > 0:") + 1


@pytest.fixture
def models_py(tmp_path):
    f = tmp_path / "models.py"
    f.write_text(MODELS_PY)
    return f


@pytest.fixture
def dup_onnx(tmp_path):
    """An ONNX file with two identical weights, an identity and a constant subgraph."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3))
    nodes = [helper.make_node("Identity", ["x"], ["xi"]),
             helper.make_node("MatMul", ["xi", "w1"], ["a"]), helper.make_node("MatMul", ["xi", "w2"], ["b"]),
             helper.make_node("Add", ["c1", "c2"], ["c"]), helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Add", ["s", "c"], ["y"])]
    model = make_onnx(nodes, [("x", [2, 4])], [("y", [2, 3])],
                      [init("w1", w), init("w2", w.copy()), init("c1", np.ones(3)), init("c2", np.arange(3))])
    f = tmp_path / "dup.onnx"
    onnx.save(model, f)
    return f


def assert_user_error(rc, err, *words):
    assert rc == 2, err
    assert err.startswith("slimc: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"


# ---- passes, inspect ----------------------------------------------------------------

def test_passes_lists_every_pass_with_its_options(cli):
    rc, out, err = cli("passes")
    assert rc == 0
    lines = out.splitlines()
    for name, cls in slimc.registered_passes().items():
        assert any(line.split()[0] == name for line in lines if line and not line.startswith(" ")), name
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert f"{f.name.replace('_', '-')}={format_value(default)}" in out, (name, f.name)
    assert any(line.startswith("to-onnx") and "fx->onnx" in line for line in lines)
    assert any(line.startswith("fuse-bn") and "lossless" in line for line in lines)


def test_inspect_onnx(cli, dup_onnx):
    rc, out, err = cli("inspect", dup_onnx)
    assert rc == 0, err
    assert "onnx level" in out and "opset {'ai.onnx': 17}" in out
    assert "input  x: 2x4 float" in out and "output y: 2x3 float" in out
    stats = onnx_stats(onnx.load(dup_onnx))
    assert f"params {stats.params}" in out.replace(",", "") or f"({stats.params:,})" in out
    assert f"MACs {stats.macs}" in out and "nodes 6" in out
    assert any(line.split() == ["Add", "3"] for line in out.splitlines())
    assert any(line.split() == ["MatMul", "2"] for line in out.splitlines())


def test_inspect_json(cli, dup_onnx):
    rc, out, err = cli("inspect", dup_onnx, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["level"] == "onnx" and s["opset"] == {"ai.onnx": 17}
    assert s["inputs"] == [{"name": "x", "shape": [2, 4], "dtype": "float"}]
    assert s["outputs"] == [{"name": "y", "shape": [2, 3], "dtype": "float"}]
    assert s["params"] == 4 * 3 * 2 + 3 + 3 and s["macs"] == 2 * 3 * 4 * 2 and s["nodes"] == 6
    assert s["ops"] == {"Add": 3, "MatMul": 2, "Identity": 1}


def test_inspect_torch_spec(cli, models_py):
    rc, out, err = cli("inspect", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["level"] == "fx" and s["params"] == 4 * 27 + 4 + 8 + 15
    assert s["macs"] == 64 * 4 * 27 + 12
    rc, out, err = cli("inspect", f"{models_py}:tiny")
    assert_user_error(rc, err, "needs the input shapes", "--input-shape")


# ---- compile, opt -------------------------------------------------------------------

def test_compile_factory_to_onnxruntime(cli, tmp_path, models_py):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "2x3x8x8", "-o", tmp_path / "out",
                       "--report", tmp_path / "r.json", "--verify-each", "--benchmark", "2")
    assert rc == 0, err
    lines = out.splitlines()
    # the table streams first, one row per pass (with --verify-each's verdict), then the summary
    assert lines[0].split() == ["#", "pass", "level", "seconds", "changed", "params", "MACs", "nodes", "check"]
    rows = [ln.split() for ln in lines[2:5]]
    assert [r[1] for r in rows] == ["fuse-bn", "to-onnx", "simplify"] and all(r[-2] == "ok" for r in rows)
    assert lines[5].split() == ["(fidelity)", "ok"]
    assert lines[6].startswith("pipeline: fuse-bn,to-onnx{")
    assert "(seed 0)" in out
    assert "fidelity vs original" in out and "latency on onnxruntime" in out
    assert f"artifact (onnxruntime): {tmp_path / 'out' / 'model.onnx'}" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["fuse-bn", "to-onnx", "simplify"]
    assert report["fidelity"]["max_abs_err"] < 1e-4
    assert report["before"]["params"] - report["passes"][0]["stats"]["params"] == 8  # BN folded; conv had a bias
    assert (tmp_path / "out" / "model.json").is_file()


def test_compile_output_named_like_a_file(cli, tmp_path, models_py):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "-o", tmp_path / "m" / "tiny.onnx")
    assert rc == 0, err
    assert (tmp_path / "m" / "tiny.onnx").is_file() and (tmp_path / "m" / "tiny.json").is_file()
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--backend", "torch",
                       "--pipeline", "fuse-bn", "-o", tmp_path / "tiny.pt")
    assert rc == 0, err
    assert (tmp_path / "tiny.pt").is_file()


def test_compile_pipeline_file_and_print_pipeline(cli, tmp_path, models_py):
    pf = tmp_path / "p.txt"
    pf.write_text("# fold, then deploy\nfuse-bn\nto-onnx{opset=18}  # newer opset\neliminate-dead\n")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline-file", pf,
                       "--print-pipeline", "--backend", "onnxruntime", "--backend-option", "threads=1")
    assert rc == 0, err
    first = out.splitlines()[0]
    assert first == "fuse-bn,to-onnx{opset=18 dynamic-batch=auto exporter=dynamo},eliminate-dead"


def test_opt_onnx_file(cli, tmp_path, dup_onnx):
    small = tmp_path / "small.onnx"
    rc, out, err = cli("opt", dup_onnx, "--pipeline", "simplify,dedupe-weights", "-o", small)
    assert rc == 0, err
    assert f"wrote {small}" in out
    before, after = onnx.load(dup_onnx), load_onnx(small)
    assert len(after.graph.initializer) < len(before.graph.initializer)
    assert "Identity" not in {n.op_type for n in after.graph.node}
    inits = [t.name for t in after.graph.initializer if tuple(t.dims) == (4, 3)]
    assert len(inits) == 1  # the two identical weights are one now
    check_same_function(before, after)

    txt = tmp_path / "small.onnxtxt"
    rc, out, err = cli("opt", dup_onnx, "--pipeline", "simplify,dedupe-weights", "-o", txt, "--dump-ir",
                       tmp_path / "dump", "--report", tmp_path / "r.json")
    assert rc == 0, err
    back = load_onnx(txt)
    check_same_function(before, back)
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in after.graph.node]
    assert (tmp_path / "dump" / "00-input.onnxtxt").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["passes"][1]["name"] == "dedupe-weights"


def test_opt_text_output_never_overwrites_the_input(cli, tmp_path, dup_onnx):
    original = dup_onnx.read_bytes()
    rc, out, err = cli("opt", dup_onnx, "--pipeline", "simplify", "-o", dup_onnx.with_suffix(".onnxtxt"))
    assert_user_error(rc, err, "which is the input model")
    assert dup_onnx.read_bytes() == original
    assert not dup_onnx.with_suffix(".onnxtxt").exists()


def test_opt_torch_model_to_pt(cli, tmp_path, models_py):
    import torch

    rc, out, err = cli("opt", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline", "fuse-bn",
                       "-o", tmp_path / "m.pt")
    assert rc == 0, err
    gm = torch.load(tmp_path / "m.pt", weights_only=False)
    assert not any("BatchNorm" in type(m).__name__ for m in gm.modules())
    rc, out, err = cli("opt", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline", "fuse-bn",
                       "-o", tmp_path / "m.onnx")
    assert_user_error(rc, err, "ends at the FX level", "to-onnx")


# ---- bad input ----------------------------------------------------------------------

def test_unknown_torchvision_model(cli, tmp_path):
    rc, out, err = cli("compile", "torchvision:resnet181", "--input-shape", "1x3x8x8")
    assert_user_error(rc, err, "no model 'resnet181'", "did you mean 'resnet18'")


def test_spec_that_does_not_resolve(cli):
    rc, out, err = cli("compile", "resnet18", "--input-shape", "1x3x8x8")
    assert_user_error(rc, err, "'resnet18' is not a model spec", "torchvision:NAME")


def test_factory_file_missing(cli, tmp_path):
    rc, out, err = cli("compile", f"{tmp_path / 'missing.py'}:tiny", "--input-shape", "1x3x8x8")
    assert_user_error(rc, err, "missing.py' does not exist")


def test_factory_function_missing(cli, models_py):
    rc, out, err = cli("compile", f"{models_py}:tinny", "--input-shape", "1x3x8x8")
    assert_user_error(rc, err, "has no callable 'tinny'", "did you mean 'tiny'")


def test_factory_returns_non_module(cli, models_py):
    rc, out, err = cli("compile", f"{models_py}:not_a_module", "--input-shape", "1x3x8x8")
    assert_user_error(rc, err, "returned a list, not a torch.nn.Module")


def test_untraceable_model_then_leaf_module(cli, tmp_path, models_py):
    rc, out, err = cli("compile", f"{models_py}:gated", "--input-shape", "1x3x8x8")
    assert_user_error(rc, err, "submodule 'gate' (Gate)", f"models.py:{GATE_IF_LINE}", "if x.sum() > 0:",
                      "--leaf-module gate")
    rc, out, err = cli("compile", f"{models_py}:gated", "--input-shape", "1x3x8x8", "--leaf-module", "gate",
                       "-o", tmp_path / "out")
    assert rc == 0, err
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_inspect_untraceable_model_takes_the_leaf_module_hint(cli, models_py):
    rc, out, err = cli("inspect", f"{models_py}:gated", "--input-shape", "1x3x8x8")
    assert_user_error(rc, err, "--leaf-module gate")
    rc, out, err = cli("inspect", f"{models_py}:gated", "--input-shape", "1x3x8x8", "--leaf-module", "gate", "--json")
    assert rc == 0, err
    assert json.loads(out)["ops"]["convolution"] >= 1  # ATen ops that ran, inside the leaf too


def test_corrupt_onnx_file(cli, tmp_path, dup_onnx):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(dup_onnx.read_bytes()[:100])
    for cmd in (("inspect", bad), ("opt", bad, "--pipeline", "simplify", "-o", tmp_path / "o.onnx"),
                ("compile", bad, "--pipeline", "simplify")):
        rc, out, err = cli(*cmd)
        assert_user_error(rc, err, "bad.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_input_shapes_that_do_not_fit(cli, models_py, dup_onnx):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x5x8x8")
    assert_user_error(rc, err, "does not run on inputs of shape 1x5x8x8", "--input-shape")
    rc, out, err = cli("inspect", dup_onnx, "--input-shape", "2x5")
    assert_user_error(rc, err, "does not run on the given input shapes (2x5:float32)")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3xeight")
    assert_user_error(rc, err, "'1x3xeight'")


def test_output_directory_cannot_be_written(cli, tmp_path, models_py):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "-o", blocker / "out")
    assert_user_error(rc, err, "cannot be written")
    rc, out, err = cli("opt", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline", "fuse-bn,to-onnx",
                       "-o", blocker / "m.onnx")
    assert_user_error(rc, err, "cannot write")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--report", tmp_path)
    assert_user_error(rc, err, "cannot write", str(tmp_path))


@pytest.mark.parametrize("pipeline,words", [
    ("fuse-bn,simplfy", ["column 9", "did you mean 'simplify'"]),
    ("simplify{check-n=x}", ["expects an integer"]),
    ("simplify{check-n=1", ["never closed"]),
    ("", ["empty"]),
])
def test_bad_pipeline_text(cli, models_py, pipeline, words):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline", pipeline)
    assert_user_error(rc, err, *words)


def test_fx_pass_after_onnx(cli, models_py, tmp_path):
    rc, out, err = cli("opt", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline", "simplify,fuse-bn",
                       "-o", tmp_path / "o.onnx")
    assert_user_error(rc, err, "'fuse-bn'", "torch.fx")


def test_unknown_backend(cli, models_py):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--backend", "onnxrt")
    assert_user_error(rc, err, "unknown backend 'onnxrt'", "did you mean 'onnxruntime'")


def test_misc_usage_errors(cli, tmp_path, models_py, dup_onnx):
    rc, out, err = cli("opt", dup_onnx, "--pipeline", "simplify", "-o", tmp_path / "o.bin")
    assert_user_error(rc, err, "must end in .onnx, .onnxtxt or .pt")
    rc, out, err = cli("opt", dup_onnx, "-o", tmp_path / "o.onnx")
    assert_user_error(rc, err, "--pipeline")
    rc, out, err = cli("opt", dup_onnx, "--pipeline-file", tmp_path / "none.txt", "-o", tmp_path / "o.onnx")
    assert_user_error(rc, err, "cannot read pipeline file")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--backend-option", "threads")
    assert_user_error(rc, err, "'threads' is not KEY=VALUE")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--backend-option", "threads=abc")
    assert_user_error(rc, err, "option 'threads' of backend 'onnxruntime' expects an integer, got 'abc'")


# ---- print-pipeline exits, file locations, streamed table, seed, fidelity failures ----------------

def test_print_pipeline_prints_the_lowered_pipeline_and_exits(cli, tmp_path, models_py):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline", "fuse-bn,simplify",
                       "--print-pipeline", "-o", tmp_path / "never")
    assert rc == 0, err
    assert out.splitlines() == [slimc.Pipeline.parse("fuse-bn,to-onnx,simplify").print()]
    assert not (tmp_path / "never").exists()  # nothing compiled, nothing written
    rc, out, err = cli("opt", f"{models_py}:tiny", "--pipeline", "fuse-bn", "--print-pipeline")
    assert rc == 0 and out.strip() == "fuse-bn"  # opt needs no -o to print


def test_pipeline_file_errors_name_the_file_line_and_column(cli, tmp_path, models_py):
    pf = tmp_path / "p.txt"
    pf.write_text("# deploy\nfuse-bn\n  simplfy{check-n=0}\n")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline-file", pf)
    assert_user_error(rc, err, f"{pf}, line 3, column 3", "did you mean 'simplify'")
    assert "pipeline text, column" not in err
    pf.write_text("fuse-bn\nsimplify{check-n=}\n")
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--pipeline-file", pf)
    assert_user_error(rc, err, f"{pf}, line 2, column 18", "missing option value")
    assert "  simplify{check-n=}\n  " + " " * 17 + "^" in err


@dataclasses.dataclass(frozen=True)
class _ScaleWeights(slimc.Pass):
    """Claims to be lossless but scales every weight."""

    name: ClassVar[str] = "test-cli-scale-weights"
    level: ClassVar[str] = "fx"

    def apply(self, program):
        import copy

        import torch

        from slimc.passes.registry import PassResult

        gm = copy.deepcopy(program.ir)
        with torch.no_grad():
            for p in gm.parameters():
                p.mul_(1.5)
        return PassResult(program.with_ir(gm), True)


def test_verify_each_failure_shows_in_the_table(cli, tmp_path, models_py):
    from support import temporary_pass

    with temporary_pass(_ScaleWeights):
        rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--verify-each",
                           "--pipeline", "fuse-bn,test-cli-scale-weights,to-onnx")
    assert_user_error(rc, err, "'test-cli-scale-weights' (#2) is lossless but changed the outputs")
    rows = [ln.split() for ln in out.splitlines()[2:]]
    assert rows[0][1] == "fuse-bn" and rows[0][-2] == "ok"
    assert rows[1][1] == "test-cli-scale-weights" and rows[1][-1] == "FAILED"


def test_seed_flag_is_reported(cli, tmp_path, models_py):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x3x8x8", "--seed", "7",
                       "--report", tmp_path / "r.json")
    assert rc == 0, err
    assert "(seed 7)" in out and json.loads((tmp_path / "r.json").read_text())["seed"] == 7


@pytest.mark.parametrize("name", ["test_constantofshape_int_shape_zero",
                                  "test_reduce_sum_square_negative_axes_keepdims_example"])
def test_compile_onnx_node_cases_with_index_inputs(cli, tmp_path, name):
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case = next(c for c in collect_testcases(None) if c.name == name)
    path = tmp_path / f"{name}.onnx"
    onnx.save(case.model, path)
    rc, out, err = cli("compile", path, "--pipeline", "simplify", "--report", tmp_path / "r.json")
    assert rc == 0, err
    assert "fidelity vs original" in out and "Traceback" not in err
    assert json.loads((tmp_path / "r.json").read_text())["fidelity"]["ok"] is True


def test_nan_after_to_fp16_fails_with_exit_code_3(cli, tmp_path):
    scale = helper.make_tensor("scale", onnx.TensorProto.FLOAT, [1], [1e5])
    model = make_onnx([helper.make_node("Mul", ["x", "scale"], ["y"])], [("x", [2, 8])], [("y", [2, 8])], [scale])
    path = tmp_path / "overflow.onnx"
    onnx.save(model, path)
    rc, out, err = cli("compile", path, "--pipeline", "to-fp16")
    assert rc == 3
    assert "fidelity FAILED" in out and "NaN or Inf" in out
    assert [ln.split() for ln in out.splitlines() if "(fidelity)" in ln] == [["(fidelity)", "FAILED"]]
    rc, out, err = cli("opt", path, "--pipeline", "to-fp16", "-o", tmp_path / "o.onnx")
    assert rc == 3 and "fidelity FAILED" in out
    rc, out, err = cli("compile", path, "--pipeline", "simplify")
    assert rc == 0, err


def test_a_model_that_fails_to_load_prints_no_table(cli, models_py):
    rc, out, err = cli("compile", f"{models_py}:tiny", "--input-shape", "1x4x8x8")
    assert rc == 2 and out == "" and "slimc: error:" in err
