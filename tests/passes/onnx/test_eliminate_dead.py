"""eliminate-dead: nodes and initializers no output depends on are removed; graph inputs stay."""

from __future__ import annotations

import numpy as np
from onnx import helper

from slimc.passes.onnx.eliminate_dead import EliminateDead
from support import check_same_function, init, make_onnx, onnx_program, op_types


def test_dead_nodes_and_weights_are_removed():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
        helper.make_node("Sigmoid", ["x"], ["dead1"]),
        helper.make_node("Add", ["dead1", "z"], ["dead2"]),
        helper.make_node("MatMul", ["dead2", "unused_w"], ["dead3"]),
    ]
    rng = np.random.default_rng(0)
    model = make_onnx(nodes, [("x", [2, 4]), ("z", [2, 4])], [("y", [2, 3])],
                      [init("w", rng.standard_normal((4, 3))), init("unused_w", rng.standard_normal((4, 5))),
                       init("orphan", np.ones(7))])
    original = model.SerializeToString()
    result = EliminateDead().apply(onnx_program(model))
    out = result.program.ir
    assert result.changed
    assert result.details == {"nodes_removed": 3, "initializers_removed": 2}
    assert op_types(out) == ["MatMul", "Relu"]
    assert [t.name for t in out.graph.initializer] == ["w"]
    assert [i.name for i in out.graph.input] == ["x", "z"]  # the signature is kept, even the unused input
    check_same_function(model, out)
    assert model.SerializeToString() == original


def test_live_graph_is_unchanged():
    model = make_onnx([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                      [("x", [2, 3])], [("y", [2, 3])])
    result = EliminateDead().apply(onnx_program(model))
    assert not result.changed
    assert result.details == {"nodes_removed": 0, "initializers_removed": 0}
    assert op_types(result.program.ir) == ["Relu", "Neg"]
