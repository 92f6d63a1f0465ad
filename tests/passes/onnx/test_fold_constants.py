"""fold-constants: constant subgraphs evaluated at compile time; outputs unchanged."""

from __future__ import annotations

import numpy as np
from onnx import helper

from slimc.passes.onnx.fold_constants import FoldConstants
from support import check_same_function, init, make_onnx, onnx_program, op_types


def _constant_chain():
    """y = x @ ((w + c) * (w + c)): everything but the MatMul depends on constants only."""
    c = helper.make_tensor("cval", 1, [4, 3], np.full(12, 0.5, np.float32).tolist())
    nodes = [
        helper.make_node("Constant", [], ["c"], value=c),
        helper.make_node("Add", ["w", "c"], ["wc"]),
        helper.make_node("Mul", ["wc", "wc"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["y"]),
    ]
    w = np.random.default_rng(0).standard_normal((4, 3))
    return make_onnx(nodes, [("x", [2, 4])], [("y", [2, 3])], [init("w", w)])


def test_constant_subgraph_is_folded():
    model = _constant_chain()
    original = model.SerializeToString()
    result = FoldConstants().apply(onnx_program(model))
    out = result.program.ir
    assert result.changed and result.details["nodes_removed"] == 3
    assert op_types(out) == ["MatMul"]
    assert len(out.graph.initializer) == 1 and tuple(out.graph.initializer[0].dims) == (4, 3)
    check_same_function(model, out)
    assert model.SerializeToString() == original


def test_size_threshold_keeps_large_results_unfolded():
    model = _constant_chain()  # the folded weight is 4x3 float32 = 48 bytes
    result = FoldConstants(size_threshold_mb=16 / 2**20).apply(onnx_program(model))  # 16 bytes
    assert op_types(result.program.ir) != ["MatMul"]
    assert "Mul" in op_types(result.program.ir)
    check_same_function(model, result.program.ir)


def _shape_reshape():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["t", "s"], ["y"]),
    ]
    return make_onnx(nodes, [("x", [2, 6])], [("y", [2, 6])])


def test_fold_shapes_option():
    model = _shape_reshape()
    folded = FoldConstants(fold_shapes=True).apply(onnx_program(model))
    assert folded.changed and op_types(folded.program.ir) == ["Relu", "Transpose", "Reshape"]
    check_same_function(model, folded.program.ir)
    kept = FoldConstants(fold_shapes=False).apply(onnx_program(model))
    assert not kept.changed and "Shape" in op_types(kept.program.ir)


def test_nothing_to_fold_is_unchanged():
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 3])], [("y", [2, 3])])
    result = FoldConstants().apply(onnx_program(model))
    assert not result.changed and result.details["nodes_removed"] == 0
    assert op_types(result.program.ir) == ["Relu"]
