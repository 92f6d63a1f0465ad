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
    assert code.startswith("# TinyCNN after '00-input'")
    assert "def forward(self, x)" in code and "self.bn1(" in code
    table = files[1].read_text().splitlines()
    assert table[0].split() == ["name", "op", "target", "args", "shape"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["conv1"][1:3] == ["call_module", "conv1"]
    assert rows["x"][1] == "placeholder"
    assert len(rows) == len(program.ir.graph.nodes)


def test_node_table_shows_shapes_when_known(tiny_cnn, tiny_input):
    gm = program_of(tiny_cnn, tiny_input).ir
    ShapeProp(gm).propagate(tiny_input)
    rows = {line.split()[0]: line for line in fx_node_table(gm).splitlines()[1:]}
    assert rows["conv1"].rstrip().endswith("2x8x8x8")
    assert rows["fc"].rstrip().endswith("2x10")


def test_onnx_dump_loads_back_with_the_same_outputs(tmp_path, tiny_cnn, tiny_input):
    program = ToOnnx().apply(program_of(tiny_cnn, tiny_input)).program
    files = dump_program(program, tmp_path, "02-to-onnx")
    assert [f.name for f in files] == ["02-to-onnx.onnxtxt", "02-to-onnx.onnx"]
    assert "Conv" in files[0].read_text()
    xs = fresh_inputs(program)
    for f in files:
        back = load_onnx(f)
        assert_outputs_close(program.run(xs), program.with_ir(back).run(xs), rel=0)
