"""Textual IR dumps: FX code and node tables, ONNX text with weights beside it."""

from __future__ import annotations

from torch.fx.passes.shape_prop import ShapeProp

from slimc.ir.dump import dump_program, fx_node_table
from slimc.ir.onnx_io import load_onnx
from slimc.passes.lower import ToOnnx
from support import assert_outputs_close, fresh_inputs, program_of


def test_fx_dump(tmp_path, tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    files = dump_program(program, tmp_path / "d", "00-input")
    assert [f.name for f in files] == ["00-input.py", "00-input.nodes.txt"]
    code = files[0].read_text()
    assert code.startswith("# TinyCNN after '00-input' (torch.export ATen graph)")
    assert "def forward(self" in code and "torch.ops.aten.conv2d.default(" in code
    table = files[1].read_text().splitlines()
    assert table[0].split() == ["name", "op", "target", "args", "shape", "module"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert rows["conv2d"].split()[1:3] == ["call_function", "conv2d.default"]
    assert rows["x"].split()[1] == "placeholder"
    assert len(rows) == len(program.exported().graph.nodes)


def test_node_table_shows_shapes_and_modules(tiny_cnn, tiny_input):
    rows = {line.split()[0]: line for line in fx_node_table(program_of(tiny_cnn, tiny_input).exported()).splitlines()[1:]}
    assert "2x8x8x8" in rows["conv2d"] and rows["conv2d"].rstrip().endswith("conv1 (Conv2d)")
    assert "2x10" in rows["linear"] and rows["linear"].rstrip().endswith("fc (Linear)")
    assert "8x3x3x3" in rows["p_conv1_weight"]  # parameters too


def test_node_table_of_a_traced_graph_uses_shape_prop(tiny_cnn, tiny_input):
    import torch.fx

    gm = torch.fx.symbolic_trace(tiny_cnn)
    ShapeProp(gm).propagate(tiny_input)
    rows = {line.split()[0]: line for line in fx_node_table(gm).splitlines()[1:]}
    assert rows["conv1"].split()[-3:] == ["2x8x8x8", "conv1", "(Conv2d)"]
    assert rows["fc"].split()[-3:] == ["2x10", "fc", "(Linear)"]


def test_onnx_dump_loads_back_with_the_same_outputs(tmp_path, tiny_cnn, tiny_input):
    program = ToOnnx().apply(program_of(tiny_cnn, tiny_input)).program
    files = dump_program(program, tmp_path, "02-to-onnx")
    assert [f.name for f in files] == ["02-to-onnx.onnxtxt", "02-to-onnx.onnx"]
    assert "Conv" in files[0].read_text()
    xs = fresh_inputs(program)
    for f in files:
        back = load_onnx(f)
        assert_outputs_close(program.run(xs), program.with_ir(back).run(xs), rel=0)
