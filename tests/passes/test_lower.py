"""to-onnx: the FX program lowered to ONNX with the program's names, shapes and function."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimc import SlimcError
from slimc.passes.lower import ToOnnx
from support import assert_outputs_close, fresh_inputs, program_of


def _dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def test_to_onnx_keeps_names_shapes_and_outputs(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    result = ToOnnx().apply(program)
    model = result.program.ir
    assert result.changed and result.program.level == "onnx"
    # the opset reported is the one the dynamo exporter wrote (read back from the model)
    assert result.details == {"opset": 18, "exporter": "dynamo", "dynamic_batch": False}
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert _dims(model.graph.input[0]) == [2, 3, 8, 8]
    assert _dims(model.graph.output[0]) == [2, 10]
    assert {o.domain or "": o.version for o in model.opset_import}[""] == 18
    assert "Conv" in {n.op_type for n in model.graph.node}
    # the FX module stays reachable for fine-tuning, and the input program is untouched
    assert result.program.fx_module is program.ir
    assert program.level == "fx"
    for seed in (1, 2):
        xs = program.random_inputs(seed=seed)
        assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)


@pytest.mark.parametrize("exporter,asked,written", [
    ("dynamo", 20, 20), ("dynamo", 17, 18), ("torchscript", 17, 17)])
def test_opset_reported_is_the_one_written(tiny_cnn, tiny_input, exporter, asked, written):
    program = program_of(tiny_cnn, tiny_input)
    result = ToOnnx(opset=asked, exporter=exporter).apply(program)
    model = result.program.ir
    assert {o.domain or "": o.version for o in model.opset_import}[""] == written
    assert result.details["opset"] == written and result.details["exporter"] == exporter
    assert result.details.get("opset_asked", written) == asked  # said when the exporter wrote another one
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)


@pytest.mark.parametrize("option,program_dynamic,expect", [
    ("true", False, True), ("false", True, False), ("auto", True, True), ("auto", False, False)])
def test_dynamic_batch(tiny_cnn, tiny_input, option, program_dynamic, expect):
    program = program_of(tiny_cnn, tiny_input, dynamic_batch=program_dynamic)
    result = ToOnnx(dynamic_batch=option).apply(program)
    model = result.program.ir
    assert result.program.dynamic_batch is expect
    assert _dims(model.graph.input[0])[0] == ("batch" if expect else 2)
    assert _dims(model.graph.input[0])[1:] == [3, 8, 8]
    if expect:  # really runs on another batch size
        xs = program.random_inputs(seed=3, batch=5)
        out = result.program.run(xs)
        assert out[0].shape == (5, 10)
        assert_outputs_close(program.run(xs), out, rel=1e-5)


@pytest.mark.slow
def test_dynamo_exporter_with_dynamic_batch(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    result = ToOnnx(exporter="dynamo", dynamic_batch="true", opset=18).apply(program)
    model = result.program.ir
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    batch = _dims(model.graph.input[0])[0]
    assert isinstance(batch, str) and batch, f"batch axis is not symbolic: {batch!r}"
    xs = program.random_inputs(seed=4, batch=3)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)


def test_several_inputs_and_outputs_get_numbered_names():
    class TwoInTwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, a, b):
            return self.fc(a), self.fc(b).relu()

    program = program_of(TwoInTwoOut().eval(), torch.randn(2, 4), torch.randn(5, 4))
    assert program.input_names == ("input0", "input1") and program.output_names == ("output0", "output1")
    model = ToOnnx().apply(program).program.ir
    assert [i.name for i in model.graph.input] == ["input0", "input1"]
    assert [o.name for o in model.graph.output] == ["output0", "output1"]
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), ToOnnx().apply(program).program.run(xs), rel=1e-5)


def test_export_failure_is_a_clear_error(tiny_cnn, tiny_input):
    with pytest.raises(SlimcError) as e:
        ToOnnx(opset=3, exporter="torchscript").apply(program_of(tiny_cnn, tiny_input))
    msg = str(e.value)
    assert "torch.onnx.export failed" in msg and "opset 3" in msg
    assert "to-onnx{exporter=dynamo}" in msg


def test_to_onnx_options_print():
    assert ToOnnx().print() == "to-onnx{opset=18 dynamic-batch=auto exporter=dynamo}"
    assert ToOnnx.level == "fx" and ToOnnx().output_level == "onnx" and ToOnnx.lossless


def test_attention_exports_outside_the_fused_fast_path():
    """Under no_grad nn.MultiheadAttention takes a fused path the TorchScript exporter cannot export."""
    import torch
    import torch.nn as nn

    import slimc

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    result = slimc.compile(Attn().eval(), torch.randn(2, 5, 16), pipeline="to-onnx", fidelity_samples=2)
    assert result.report["fidelity"]["max_abs_err"] < 1e-5
    assert result.report["fidelity"]["cosine"] > 0.99999


def test_dynamo_nodes_are_named_after_their_modules(tiny_cnn, tiny_input):
    """Like the TorchScript exporter ('/conv1/Conv'), not 'node_conv2d_0': names users exclude layers by."""
    from slimc.passes.fx.fuse_bn import FuseBN

    program = FuseBN().apply(program_of(tiny_cnn, tiny_input)).program
    model = ToOnnx().apply(program).program.ir
    names = [n.name for n in model.graph.node]
    assert "/conv1/Conv" in names and "/conv2/Conv" in names and "/fc/Gemm" in names, names
    assert len(set(names)) == len(names)


def test_nested_dynamo_names_equal_the_torchscript_exporters():
    """Nested modules: '/layers/layers.1/conv/Conv' from both exporters, not '/layers/layers.1/layers.1.conv/Conv'."""
    import slimc
    from profile_support import SHAPE, Nested

    torch.manual_seed(0)
    names = {}
    for exporter in ("dynamo", "torchscript"):
        result = slimc.compile(Nested().eval(), torch.randn(*SHAPE), pipeline=f"to-onnx{{exporter={exporter}}}",
                               backend=None, fidelity_samples=0)
        names[exporter] = [n.name for n in result.onnx.graph.node if n.op_type in ("Conv", "Relu", "Gemm")]
    assert names["dynamo"] == names["torchscript"], names
    assert "/layers/layers.1/conv/Conv" in names["dynamo"]
