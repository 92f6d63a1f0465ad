"""`to-fp16` / `to-bf16`: converted weights and activations, kept ops with Casts, auto mode, I/O types."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

import slimc
from slimc.passes.pipeline import Pipeline
from support import TinyCNN, assert_outputs_close, init, make_onnx, ort_run, randomize_bn


class _CNNSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = TinyCNN()

    def forward(self, x):
        return torch.softmax(self.body(x), dim=1)


def _export(module, *args, opset=17):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"])
    import onnx

    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def cnn_model():
    torch.manual_seed(0)
    m = _CNNSoftmax()
    randomize_bn(m)
    return _export(m, torch.randn(2, 3, 8, 8))


def _apply(model, text):
    program = slimc.load_program(model)
    return Pipeline.parse(text).passes[0].apply(program)


def _feeds(model, seed=11, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(dtype)
            for i in model.graph.input}


def _producer(model, name):
    return next(n for n in model.graph.node if name in n.output)


def test_fp16_converts_weights_keeps_softmax_and_io_in_fp32(cnn_model):
    r = _apply(cnn_model, "to-fp16")
    out = r.program.ir
    assert r.changed and r.details["converted"] > 0
    weights = {t.name: t.data_type for t in out.graph.initializer}
    conv_w = [n.input[1] for n in out.graph.node if n.op_type in ("Conv", "Gemm")]
    assert conv_w and all(weights[w] == TensorProto.FLOAT16 for w in conv_w)
    softmax = next(n for n in out.graph.node if n.op_type == "Softmax")
    cast_in = _producer(out, softmax.input[0])
    assert cast_in.op_type == "Cast" and cast_in.attribute[0].i == TensorProto.FLOAT  # fp16 -> fp32 before Softmax
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    feeds = _feeds(cnn_model)
    assert_outputs_close(ort_run(cnn_model, feeds), ort_run(out, feeds), rel=1e-2)  # ORT CPU runs the fp16 graph
    assert r.details["kept_fp32"].get("Softmax: numerically sensitive") == 1


def test_keep_fp32_by_op_type_and_by_node_name(cnn_model):
    by_type = _apply(cnn_model, "to-fp16{keep-fp32=Conv}").program.ir
    inits = {t.name: t.data_type for t in by_type.graph.initializer}
    assert all(inits[n.input[1]] == TensorProto.FLOAT for n in by_type.graph.node if n.op_type == "Conv")
    gemm = next(n for n in cnn_model.graph.node if n.op_type == "Gemm")
    by_name = _apply(cnn_model, f"to-fp16{{keep-fp32={gemm.name}}}").program.ir
    inits = {t.name: t.data_type for t in by_name.graph.initializer}
    kept = next(n for n in by_name.graph.node if n.name == gemm.name)
    assert inits[kept.input[1]] == TensorProto.FLOAT
    assert any(inits[n.input[1]] == TensorProto.FLOAT16 for n in by_name.graph.node if n.op_type == "Conv")


def test_keep_io_false_makes_the_signature_fp16(cnn_model):
    r = _apply(cnn_model, "to-fp16{keep-io=false}")
    out = r.program.ir
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert r.program.example_inputs[0].dtype == torch.float16
    got = r.program.run(r.program.random_inputs(seed=3))  # the program's own inputs fit its new signature
    assert got[0].dtype == np.float32  # the output comes from the kept Softmax
    feeds = _feeds(cnn_model)
    ref = ort_run(cnn_model, feeds)
    low = ort_run(out, {k: v.astype(np.float16) for k, v in feeds.items()})
    assert_outputs_close(ref, low, rel=2e-2)


def _overflowing_model():
    """x -> Gemm A (fine) -> Gemm B (outputs ~1e6: inf in fp16) -> Mul 1e-6 -> Relu."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "wa"], ["a"], name="fine"),
             helper.make_node("Gemm", ["a", "wb"], ["b"], name="huge"),
             helper.make_node("Mul", ["b", "s"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    inits = [init("wa", rng.standard_normal((16, 16)) * 0.3), init("wb", rng.standard_normal((16, 8)) * 3e5),
             init("s", np.array(1e-6))]
    return make_onnx(nodes, [("x", [4, 16])], [("y", [4, 8])], inits)


def test_auto_mode_keeps_the_layer_that_overflows():
    model = _overflowing_model()
    everything = _apply(model, "to-fp16").program.ir
    feeds = _feeds(model)
    assert not np.isfinite(ort_run(everything, feeds)[0]).all()  # plain conversion overflows
    r = _apply(model, "to-fp16{mode=auto tolerance=0.01}")
    auto = r.details["auto"]
    assert auto["kept_fp32"] == ["huge"] and auto["within_tolerance"]
    inits = {t.name: t.data_type for t in r.program.ir.graph.initializer}
    nodes = {n.name: n for n in r.program.ir.graph.node}
    assert inits[nodes["huge"].input[1]] == TensorProto.FLOAT and inits[nodes["fine"].input[1]] == TensorProto.FLOAT16
    assert_outputs_close(ort_run(model, feeds), ort_run(r.program.ir, feeds), rel=1e-2)


def test_bf16_runs_on_ort_cpu_and_follows_the_schemas_without_the_probe(cnn_model):
    # ONNX Runtime's CPU provider has almost no bfloat16 kernels: Conv/Gemm/Relu stay float32, and
    # the Flatten between them is not worth two Casts, so nothing changes on CPU.
    on_cpu = _apply(cnn_model, "to-bf16")
    assert not on_cpu.changed
    kept = on_cpu.details["kept_fp32"]
    assert any("cannot run it in bfloat16" in k for k in kept)
    assert any(k.startswith("Flatten: moves data between float32 ops") for k in kept)
    for_trt = _apply(cnn_model, "to-bf16{ort-cpu=false}").program.ir
    inits = {t.name: t.data_type for t in for_trt.graph.initializer}
    # Gemm-13 takes bfloat16; Conv only from opset 22, so at opset 17 the schema keeps it in float32
    assert all(inits[n.input[1]] == TensorProto.BFLOAT16 for n in for_trt.graph.node if n.op_type == "Gemm")
    assert all(inits[n.input[1]] == TensorProto.FLOAT for n in for_trt.graph.node if n.op_type == "Conv")


def test_options_round_trip():
    text = Pipeline.parse("to-fp16{mode=auto keep-fp32=Resize,head tolerance=0.05}").print()
    assert "keep-fp32=Resize,head" in text and "mode=auto" in text
    assert Pipeline.parse(text).print() == text
