"""`fuse` (ONNX): one test per rule (structure + numbers against the unrewritten graph), disable, rejects."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import slimc
from slimc.errors import SlimcError
from slimc.passes.pipeline import Pipeline
from support import assert_outputs_close, init, make_onnx, op_types, ort_run

RNG = np.random.default_rng(0)


def _r(*shape, lo=None):
    a = RNG.standard_normal(shape)
    return np.abs(a) + lo if lo is not None else a


def _fuse(model, text="fuse"):
    program = slimc.load_program(model)
    return Pipeline.parse(text).passes[0].apply(program)


def _check(model, rule, ops_after, rel=1e-5, text="fuse", seed=7):
    """Run `fuse`; the rule matched, the ops are `ops_after`, and outputs agree on fresh inputs."""
    result = _fuse(model, text)
    assert result.changed, result.details
    assert result.details["matches"].get(rule, 0) >= 1, result.details
    assert sorted(op_types(result.program.ir)) == sorted(ops_after)
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    assert_outputs_close(ort_run(model, feeds), ort_run(result.program.ir, feeds), rel=rel)
    return result


def _n_params(model) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _bn_inits(c, prefix="bn"):
    return [init(f"{prefix}_g", _r(c, lo=0.5)), init(f"{prefix}_b", _r(c)), init(f"{prefix}_m", _r(c)),
            init(f"{prefix}_v", _r(c, lo=0.5))]


def _bn(inp, out, prefix="bn"):
    return helper.make_node("BatchNormalization", [inp] + [f"{prefix}_{s}" for s in "gbmv"], [out])


# ---- batchnorm.py ---------------------------------------------------------------------

def test_conv_bn_folds_into_conv_weights():
    m = make_onnx([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), _bn("c", "y")],
                  [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])], [init("w", _r(4, 3, 3, 3))] + _bn_inits(4))
    r = _check(m, "conv-bn", ["Conv"])
    assert _n_params(r.program.ir) == 4 * 3 * 9 + 4  # weight + new bias, BN's 16 numbers gone


def test_conv_transpose_bn_with_groups():
    m = make_onnx([helper.make_node("ConvTranspose", ["x", "w", "cb"], ["c"], group=2, strides=[2, 2]),
                   _bn("c", "y")], [("x", [1, 4, 5, 5])], [("y", [1, 6, 11, 11])],
                  [init("w", _r(4, 3, 3, 3)), init("cb", _r(6))] + _bn_inits(6))
    _check(m, "conv-bn", ["ConvTranspose"])


def test_gemm_bn_with_trans_b_and_beta():
    m = make_onnx([helper.make_node("Gemm", ["x", "w", "c0"], ["g"], transB=1, beta=0.5, alpha=2.0),
                   _bn("g", "y")], [("x", [3, 5])], [("y", [3, 4])],
                  [init("w", _r(4, 5)), init("c0", _r(4))] + _bn_inits(4))
    _check(m, "gemm-bn", ["Gemm"])


def test_bn_on_a_shared_weight_keeps_the_other_user_intact():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y"), helper.make_node("Conv", ["x", "w"], ["z"])]
    m = make_onnx(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 4, 4]), ("z", [1, 4, 4, 4])],
                  [init("w", _r(4, 3, 3, 3))] + _bn_inits(4))
    r = _check(m, "conv-bn", ["Conv", "Conv"])
    assert {t.name for t in r.program.ir.graph.initializer} >= {"w"}


# ---- bias.py --------------------------------------------------------------------------

def test_conv_add_becomes_conv_bias():
    m = make_onnx([helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Add", ["k", "c"], ["y"])],
                  [("x", [1, 3, 6, 6])], [("y", [1, 4, 4, 4])],
                  [init("w", _r(4, 3, 3, 3)), init("b", _r(4)), init("k", _r(1, 4, 1, 1))])
    _check(m, "conv-add", ["Conv"])


def test_conv_add_of_a_full_tensor_is_rejected_with_a_reason():
    m = make_onnx([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "k"], ["y"])],
                  [("x", [1, 3, 6, 6])], [("y", [1, 4, 4, 4])], [init("w", _r(4, 3, 3, 3)), init("k", _r(4, 4, 4))])
    r = _fuse(m)
    assert not r.changed
    assert any("not per output channel" in why for why in r.details["rejected"]["conv-add"])


def test_matmul_add_becomes_gemm():
    m = make_onnx([helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])],
                  [("x", [3, 5])], [("y", [3, 4])], [init("w", _r(5, 4)), init("b", _r(4))])
    _check(m, "matmul-add", ["Gemm"])


def test_matmul_add_on_3d_is_rejected():
    m = make_onnx([helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])],
                  [("x", [2, 3, 5])], [("y", [2, 3, 4])], [init("w", _r(5, 4)), init("b", _r(4))])
    r = _fuse(m)
    assert not r.changed and "Gemm needs 2 and 2" in " ".join(r.details["rejected"]["matmul-add"])


# ---- layout.py ------------------------------------------------------------------------

def test_transpose_pair_collapses():
    m = make_onnx([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                   helper.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 1, 3])],
                  [("x", [1, 2, 3, 4])], [("y", [1, 4, 3, 2])])
    r = _check(m, "transpose", ["Transpose"])
    assert list(r.program.ir.graph.node[0].attribute[0].ints) == [0, 3, 2, 1]


def test_inverse_transposes_vanish():
    m = make_onnx([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                   helper.make_node("Transpose", ["t"], ["u"], perm=[0, 3, 1, 2]),
                   helper.make_node("Relu", ["u"], ["y"])], [("x", [1, 2, 3, 4])], [("y", [1, 2, 3, 4])])
    _check(m, "transpose", ["Relu"])


def test_reshape_pair_collapses():
    m = make_onnx([helper.make_node("Reshape", ["x", "s1"], ["t"]), helper.make_node("Reshape", ["t", "s2"], ["y"])],
                  [("x", [2, 3, 4])], [("y", [4, 6])],
                  [helper.make_tensor("s1", 7, [2], [6, 4]), helper.make_tensor("s2", 7, [2], [4, -1])])
    _check(m, "reshape", ["Reshape"])


# ---- pad.py ---------------------------------------------------------------------------

def test_pad_folds_into_conv():
    m = make_onnx([helper.make_node("Pad", ["x", "p"], ["xp"]), helper.make_node("Conv", ["xp", "w"], ["y"], pads=[0, 1, 0, 1])],
                  [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 8])],
                  [helper.make_tensor("p", 7, [8], [0, 0, 1, 0, 0, 0, 1, 0]), init("w", _r(4, 3, 3, 3))])
    r = _check(m, "pad-conv", ["Conv"])
    conv = r.program.ir.graph.node[0]
    assert [list(a.ints) for a in conv.attribute if a.name == "pads"] == [[1, 1, 1, 1]]


def test_pad_folds_into_average_pool_only_when_it_counts_padding():
    def model(count_include_pad):
        return make_onnx([helper.make_node("Pad", ["x", "p"], ["xp"]),
                          helper.make_node("AveragePool", ["xp"], ["y"], kernel_shape=[3, 3],
                                           count_include_pad=count_include_pad)],
                         [("x", [1, 2, 6, 6])], [("y", [1, 2, 6, 6])],
                         [helper.make_tensor("p", 7, [8], [0, 0, 1, 1, 0, 0, 1, 1])])
    _check(model(1), "pad-pool", ["AveragePool"])
    r = _fuse(model(0))
    assert not r.changed and any("count_include_pad" in w for w in r.details["rejected"]["pad-pool"])


def test_nonzero_pad_value_is_rejected_for_conv():
    m = make_onnx([helper.make_node("Pad", ["x", "p", "v"], ["xp"]), helper.make_node("Conv", ["xp", "w"], ["y"])],
                  [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 6])],
                  [helper.make_tensor("p", 7, [8], [0, 0, 1, 1, 0, 0, 1, 1]), init("v", np.array(1.0)),
                   init("w", _r(4, 3, 3, 3))])
    assert not _fuse(m).changed


# ---- norm.py --------------------------------------------------------------------------

def _layer_norm_nodes(opset):
    if opset >= 18:
        mean = [helper.make_node("ReduceMean", ["x", "ax"], ["mu"]), helper.make_node("ReduceMean", ["sq", "ax"], ["var"])]
        extra = [helper.make_tensor("ax", 7, [1], [-1])]
    else:
        mean = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
                helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1])]
        extra = []
    nodes = [mean[0], helper.make_node("Sub", ["x", "mu"], ["d"]), helper.make_node("Pow", ["d", "two"], ["sq"]),
             mean[1], helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "b"], ["y"])]
    inits = [init("two", np.array(2.0)), init("eps", np.array(1e-5)), init("g", _r(8, lo=0.5)), init("b", _r(8))]
    return nodes, inits + extra


@pytest.mark.parametrize("opset", [17, 18])
def test_decomposed_layer_norm_becomes_one_op(opset):
    nodes, inits = _layer_norm_nodes(opset)
    m = make_onnx(nodes, [("x", [2, 5, 8])], [("y", [2, 5, 8])], inits, opset=opset)
    _check(m, "layer-norm", ["LayerNormalization"], rel=1e-4)


def test_layer_norm_variants_mul_square_reciprocal_and_no_affine():
    """Var as mean(d * d), division as d * Reciprocal(std), no gamma/beta (the ONNX function's shape)."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Reciprocal", ["sd"], ["inv"]), helper.make_node("Mul", ["d", "inv"], ["y"])]
    m = make_onnx(nodes, [("x", [2, 5, 8])], [("y", [2, 5, 8])], [init("eps", np.array(1e-5))], opset=17)
    _check(m, "layer-norm", ["LayerNormalization"], rel=1e-4)


def test_layer_norm_below_opset_17_is_rejected_with_the_reason():
    nodes, inits = _layer_norm_nodes(13)
    m = make_onnx(nodes, [("x", [2, 5, 8])], [("y", [2, 5, 8])], inits, opset=13)
    r = _fuse(m)
    assert not r.changed and any("opset 17" in w for w in r.details["rejected"]["layer-norm"])


def _gelu_erf_model(opset=20):
    nodes = [helper.make_node("Div", ["x", "s2"], ["t"]), helper.make_node("Erf", ["t"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["x", "e1"], ["xe"]),
             helper.make_node("Mul", ["xe", "half"], ["y"])]
    inits = [init("s2", np.array(np.sqrt(2.0))), init("one", np.array(1.0)), init("half", np.array(0.5))]
    return make_onnx(nodes, [("x", [2, 16])], [("y", [2, 16])], inits, opset=opset)


def test_decomposed_gelu_becomes_gelu():
    _check(_gelu_erf_model(), "gelu", ["Gelu"], rel=1e-5)


def test_tanh_gelu_from_torch_becomes_gelu_tanh():
    torch = pytest.importorskip("torch")
    import io

    import onnx

    buf = io.BytesIO()
    # opset 18: torch writes the decomposed form (at 20 it writes Gelu itself); the ops in it mean the
    # same at 20, so stamping 20 gives the graph an exporter that targets 20 without Gelu would write.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.GELU(approximate="tanh"), (torch.randn(2, 16),), buf, dynamo=False,
                          opset_version=18, input_names=["x"], output_names=["y"])
    m = onnx.load_from_string(buf.getvalue())
    m.opset_import[0].version = 20
    r = _check(m, "gelu", ["Gelu"], rel=1e-4)
    assert any(a.s == b"tanh" for a in r.program.ir.graph.node[0].attribute)


def test_disable_option_turns_a_rule_off():
    r = _fuse(_gelu_erf_model(), "fuse{disable=gelu,layer-norm}")
    assert not r.changed and "gelu" not in r.details["matches"]
    assert Pipeline.parse("fuse{disable=gelu}").passes[0].disable == ("gelu",)


def test_disable_unknown_rule_names_the_closest():
    with pytest.raises(SlimcError, match="gelu"):
        Pipeline.parse("fuse{disable=gelv}")


# ---- affine.py ------------------------------------------------------------------------

def test_conv_mul_scales_conv_weights():
    m = make_onnx([helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Mul", ["c", "s"], ["y"])],
                  [("x", [1, 3, 6, 6])], [("y", [1, 4, 4, 4])],
                  [init("w", _r(4, 3, 3, 3)), init("b", _r(4)), init("s", _r(4, 1, 1))])
    _check(m, "conv-mul", ["Conv"])


def test_mul_before_grouped_conv_with_padding_folds():
    m = make_onnx([helper.make_node("Mul", ["x", "s"], ["xs"]),
                   helper.make_node("Conv", ["xs", "w"], ["y"], group=2, pads=[1, 1, 1, 1])],
                  [("x", [1, 4, 6, 6])], [("y", [1, 6, 6, 6])], [init("w", _r(6, 2, 3, 3)), init("s", _r(1, 4, 1, 1))])
    _check(m, "mul-conv", ["Conv"])


def test_add_before_conv_folds_without_padding_and_is_rejected_with_padding():
    def model(pads):
        return make_onnx([helper.make_node("Add", ["x", "k"], ["xk"]), helper.make_node("Conv", ["xk", "w"], ["y"], pads=pads)],
                         [("x", [1, 3, 6, 6])], [("y", [1, 4, 4 + pads[0] * 2, 4 + pads[0] * 2])],
                         [init("w", _r(4, 3, 3, 3)), init("k", _r(3, 1, 1))])
    _check(model([0, 0, 0, 0]), "add-conv", ["Conv"])
    r = _fuse(model([1, 1, 1, 1]))
    assert not r.changed and any("pads its input" in w for w in r.details["rejected"]["add-conv"])


def test_gemm_mul_and_add_fold_into_gemm():
    m = make_onnx([helper.make_node("Gemm", ["x", "w", "c0"], ["g"], beta=0.5),
                   helper.make_node("Mul", ["g", "s"], ["gs"]), helper.make_node("Add", ["gs", "k"], ["y"])],
                  [("x", [3, 5])], [("y", [3, 4])],
                  [init("w", _r(5, 4)), init("c0", _r(4)), init("s", _r(4)), init("k", _r(1, 4))])
    r = _check(m, "gemm-mul", ["Gemm"])
    assert r.details["matches"]["gemm-add"] == 1


def test_pad_conv_bn_chain_fuses_in_one_pass():
    m = make_onnx([helper.make_node("Pad", ["x", "p"], ["xp"]), helper.make_node("Conv", ["xp", "w"], ["c"]),
                   _bn("c", "y")], [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 6])],
                  [helper.make_tensor("p", 7, [8], [0, 0, 1, 1, 0, 0, 1, 1]), init("w", _r(4, 3, 3, 3))] + _bn_inits(4))
    r = _check(m, "pad-conv", ["Conv"])
    assert r.details["matches"]["conv-bn"] == 1


def test_conv_bn_and_gemm_bn_from_a_torch_export():
    """torch.onnx.export without constant folding leaves BatchNormalization (fed through Identity)."""
    torch = pytest.importorskip("torch")
    import io
    import warnings

    import onnx

    from support import randomize_bn

    nn = torch.nn
    module = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5)))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 6, 6),), buf, dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["x"], output_names=["y"])
    model = onnx.load_from_string(buf.getvalue())
    assert op_types(model).count("BatchNormalization") == 2
    r = _check(model, "conv-bn", ["Conv", "Relu", "Flatten", "Gemm"], text="fuse", rel=1e-4)
    assert r.details["matches"] == {"conv-bn": 1, "gemm-bn": 1}
    assert _n_params(r.program.ir) == 4 * 3 * 9 + 4 + 4 * 36 * 5 + 5


def test_initializer_that_is_also_a_graph_input_is_not_folded():
    """Old exporters list weights as graph inputs too: a caller may feed another value, so no fold."""
    from onnx import TensorProto

    m = make_onnx([helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y")],
                  [("x", [1, 3, 6, 6])], [("y", [1, 4, 4, 4])], [init("w", _r(4, 3, 3, 3))] + _bn_inits(4))
    m.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    r = _fuse(m)
    assert not r.changed and r.details["rejected"]["conv-bn"]
