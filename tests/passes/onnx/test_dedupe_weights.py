"""dedupe-weights: identical initializers become one; outputs unchanged."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from slimc.passes.onnx.dedupe_weights import DedupeWeights
from support import check_same_function, init, make_onnx, onnx_program


def _two_matmuls(w1, w2, w3):
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("MatMul", ["x", "w2"], ["b"]),
        helper.make_node("MatMul", ["x", "w3"], ["c"]),
        helper.make_node("Sum", ["a", "b", "c"], ["y"]),
    ]
    return make_onnx(nodes, [("x", [2, 4])], [("y", [2, 3])], [init("w1", w1), init("w2", w2), init("w3", w3)])


def test_identical_initializers_become_one():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3))
    model = _two_matmuls(w, w.copy(), rng.standard_normal((4, 3)))
    original = model.SerializeToString()
    result = DedupeWeights().apply(onnx_program(model))
    out = result.program.ir
    assert result.changed and result.details["merged"] == 1
    assert result.details["bytes_saved"] > 4 * 3 * 4
    assert sorted(t.name for t in out.graph.initializer) == ["w1", "w3"]
    assert [list(n.input) for n in out.graph.node[:3]] == [["x", "w1"], ["x", "w1"], ["x", "w3"]]
    check_same_function(model, out)
    assert model.SerializeToString() == original  # the input model is untouched


def test_different_values_dtypes_or_shapes_are_kept():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3))
    w2 = w.copy()
    w2[0, 0] += 1e-3
    model = _two_matmuls(w, w2, rng.standard_normal((4, 3)))
    result = DedupeWeights().apply(onnx_program(model))
    assert not result.changed and result.details["merged"] == 0
    assert len(result.program.ir.graph.initializer) == 3


def test_min_size_leaves_small_tensors_alone():
    w = np.ones((4, 3))
    model = _two_matmuls(w, w, w)
    assert not DedupeWeights(min_size=13).apply(onnx_program(model)).changed
    result = DedupeWeights(min_size=12).apply(onnx_program(model))
    assert result.details["merged"] == 2
    assert [t.name for t in result.program.ir.graph.initializer] == ["w1"]
    check_same_function(model, result.program.ir)


def test_subgraph_uses_are_renamed_and_graph_inputs_kept():
    """An If branch reading an outer initializer gets the kept name; an initializer that is also a
    graph input (a default the caller may override) keeps its own tensor."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w2"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "w3"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("MatMul", ["x", "wi"], ["b"]),
        helper.make_node("Sum", ["a", "b", "branch"], ["y"]),
    ]
    model = make_onnx(nodes, [("x", [2, 4])], [("y", [2, 3])],
                      [init("zero", 0.0), init("w1", w), init("w2", w), init("w3", w), init("wi", w)])
    model.graph.input.append(helper.make_tensor_value_info("wi", TensorProto.FLOAT, [4, 3]))
    result = DedupeWeights().apply(onnx_program(model))
    out = result.program.ir
    assert result.details["merged"] == 2
    assert sorted(t.name for t in out.graph.initializer) == ["w1", "wi", "zero"]
    branches = {a.name: a.g for a in out.graph.node[2].attribute}
    assert list(branches["then_branch"].node[0].input) == ["x", "w1"]
    assert list(branches["else_branch"].node[0].input) == ["x", "w1"]
    check_same_function(model, out, seeds=(1, 2, 3, 4))
