"""simplify (onnxsim): constant folding and no-op removal; outputs unchanged."""

from __future__ import annotations

import numpy as np
from onnx import helper

from slimc.passes.onnx.simplify import Simplify
from support import check_same_function, init, make_onnx, onnx_program, op_types


def _foldable():
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("Add", ["c1", "c2"], ["c"]),
        helper.make_node("Exp", ["c"], ["ce"]),
        helper.make_node("Mul", ["xi", "ce"], ["m"]),
        helper.make_node("Relu", ["m"], ["y"]),
        helper.make_node("Tanh", ["x"], ["dead"]),
    ]
    rng = np.random.default_rng(0)
    return make_onnx(nodes, [("x", [2, 3])], [("y", [2, 3])],
                     [init("c1", rng.standard_normal(3)), init("c2", rng.standard_normal(3))])


def test_simplify_folds_constants_and_drops_no_ops():
    model = _foldable()
    original = model.SerializeToString()
    result = Simplify(check_n=1).apply(onnx_program(model))
    out = result.program.ir
    assert result.changed
    assert op_types(out) == ["Mul", "Relu"]
    assert result.details["nodes_removed"] == 4
    assert len(out.graph.initializer) == 1
    assert not any(p.key.startswith("onnxsim") for p in out.metadata_props)
    check_same_function(model, out)
    assert model.SerializeToString() == original


def test_simplify_without_check_gives_the_same_graph():
    model = _foldable()
    a = Simplify(check_n=0).apply(onnx_program(model)).program.ir
    assert op_types(a) == ["Mul", "Relu"]
    check_same_function(model, a)


def test_already_simple_graph_is_unchanged():
    model = make_onnx([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 3])], [("y", [2, 3])])
    result = Simplify().apply(onnx_program(model))
    assert not result.changed
    assert op_types(result.program.ir) == ["Relu"]


def test_simplify_does_not_untie_a_transposed_embedding():
    """MatMul(h, Transpose(emb)) with a tied embedding: folding the Transpose would copy the matrix."""
    import numpy as np
    from onnx import TensorProto, helper

    from slimc.ir.stats import onnx_stats
    from support import init

    emb = np.random.default_rng(0).standard_normal((128, 16)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h"]),
             helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["h", "emb_t"], ["y"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 128])], [init("emb", emb)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    program = onnx_program(model)
    result = Simplify().apply(program)
    out = result.program.ir
    assert onnx_stats(out).params == onnx_stats(model).params == 128 * 16
    assert result.details.get("retied") == 1
    ids = [np.random.default_rng(1).integers(0, 128, (2, 5))]
    np.testing.assert_array_equal(program.run(ids)[0], result.program.run(ids)[0])
