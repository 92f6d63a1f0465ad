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


# ---- tied weights: a transposed copy of an initializer is re-tied ----------------------------

class TiedLM:
    """A tiny language model whose output head shares the embedding matrix (GPT-2's lm_head)."""

    @staticmethod
    def make(vocab: int = 128, d: int = 16):
        import torch
        import torch.nn as nn

        class _Tied(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(vocab, d)
                self.mix = nn.Linear(d, d)
                self.head = nn.Linear(d, vocab, bias=False)
                self.head.weight = self.emb.weight

            def forward(self, ids):
                return self.head(torch.tanh(self.mix(self.emb(ids))))

        torch.manual_seed(0)
        return _Tied().eval(), torch.randint(0, vocab, (2, 8))


def _matmul_with_transposed_copy():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((128, 16)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h"]), helper.make_node("MatMul", ["h", "head"], ["y"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 128])],
                              [init("emb", emb), init("head", emb.T.copy())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_transposed_copy_becomes_a_transpose_of_the_original():
    from slimc.ir.stats import onnx_stats

    model = _matmul_with_transposed_copy()
    result = DedupeWeights().apply(onnx_program(model))
    out = result.program.ir
    assert result.changed and result.details["retied"] == 1
    assert [t.name for t in out.graph.initializer] == ["emb"]
    transpose = [n for n in out.graph.node if n.op_type == "Transpose"]
    assert len(transpose) == 1 and list(transpose[0].input) == ["emb"] and list(transpose[0].output) == ["head"]
    assert onnx_stats(out).params == 128 * 16 == onnx_stats(model).params - 128 * 16
    ids = [np.random.default_rng(1).integers(0, 128, (2, 5))]
    program = onnx_program(model)
    np.testing.assert_array_equal(program.run(ids)[0], program.with_ir(out).run(ids)[0])


def test_tied_embedding_model_keeps_its_parameter_count_through_the_lossless_pipeline():
    import slimc

    model, ids = TiedLM.make()
    n_params = sum(p.numel() for p in model.parameters())  # the tied matrix counts once
    result = slimc.compile(model, ids, pipeline="to-onnx,simplify,dedupe-weights", backend="onnxruntime",
                           fidelity_samples=3)
    r = result.report
    assert r["after"]["params"] <= n_params, r["passes"]
    simplify = r["passes"][1]
    assert simplify["name"] == "simplify" and simplify["stats"]["params"] <= n_params
    assert r["fidelity"]["ok"] and r["fidelity"]["max_abs_err"] < 1e-5
    assert "Transpose" in r["after"]["ops"] or r["after"]["ops"].get("Gemm")
    # the untying export is flagged where it happens, and the pipeline as a whole is not
    assert any(w.startswith("to-onnx: lossless pass grew the parameters") for w in r["warnings"])
    assert not any(w.startswith("the pipeline is lossless but grew") for w in r["warnings"])
