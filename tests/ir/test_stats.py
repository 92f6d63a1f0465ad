"""Parameters and MACs of small models, computed by hand, at the FX and ONNX levels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from onnx import TensorProto, helper

import slimc
from slimc.ir.stats import Stats, fx_stats, onnx_stats, stats_of
from slimc.passes.lower import ToOnnx
from support import init, make_onnx, program_of


class Hand(nn.Module):
    """Input 1x3x6x6. By hand:
    conv   3->4, 3x3, pad 1, bias: params 4*3*9+4 = 112; out 1x4x6x6 = 144 values x 3*9 MACs = 3888
    conv_g 4->4, 3x3, groups 2:    params 4*2*9   = 72;  out 1x4x4x4 = 64 values x 2*9 MACs  = 1152
    fc     64->5:                  params 64*5+5  = 325; out 1x5 x 64 MACs                   = 320
    x @ w  [1,5]@[5,7]:            params 35;            out 1x7 x 5 MACs                    = 35
    """

    PARAMS = 112 + 72 + 325 + 35
    MACS = 3888 + 1152 + 320 + 35

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_g = nn.Conv2d(4, 4, 3, groups=2, bias=False)
        self.fc = nn.Linear(64, 5)
        self.w = nn.Parameter(torch.randn(5, 7))

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = self.conv_g(x).flatten(1)
        return self.fc(x) @ self.w


class HandTransposed(nn.Module):
    """Input 1x4x3x3. By hand:
    up   ConvTranspose 4->2, k2, s2: params 4*2*4+2 = 34; each of 36 input values meets 2*4 weights = 288
    bmm  [1,2,36]@[36,5] via torch.matmul on the flattened map: out 1x2x5 = 10 values x 36 MACs = 360
    """

    PARAMS = 34 + 180
    MACS = 288 + 360

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.w = nn.Parameter(torch.randn(36, 5))

    def forward(self, x):
        return torch.matmul(self.up(x).flatten(2), self.w)


def test_fx_stats_by_hand():
    torch.manual_seed(0)
    program = program_of(Hand().eval(), torch.randn(1, 3, 6, 6))
    s = fx_stats(program.ir, program.example_inputs)
    assert s.params == Hand.PARAMS == 544
    assert s.macs == Hand.MACS == 5395
    assert s.ops == {"Conv2d": 2, "relu": 1, "flatten": 1, "Linear": 1, "matmul": 1}
    assert s.nodes == 6
    assert stats_of(program.ir, program.example_inputs) == s


def test_macs_scale_with_batch_params_do_not():
    torch.manual_seed(0)
    program = program_of(Hand().eval(), torch.randn(3, 3, 6, 6))
    s = stats_of(program.ir, program.example_inputs)
    assert (s.params, s.macs) == (Hand.PARAMS, 3 * Hand.MACS)


def test_fx_stats_conv_transpose_and_matmul_by_hand():
    torch.manual_seed(0)
    program = program_of(HandTransposed().eval(), torch.randn(1, 4, 3, 3))
    s = stats_of(program.ir, program.example_inputs)
    assert (s.params, s.macs) == (HandTransposed.PARAMS, HandTransposed.MACS)


class HandMethods(nn.Module):
    """Input 2x4x5. Method-call matmuls: x.matmul(w) [2,4,5]@[5,7]: 56 values x 5 = 280;
    y.bmm(v) [2,4,7]@[2,7,3]: 24 values x 7 = 168."""

    PARAMS = 35 + 42
    MACS = 280 + 168

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 7))
        self.v = nn.Parameter(torch.randn(2, 7, 3))

    def forward(self, x):
        return x.matmul(self.w).bmm(self.v)


def test_fx_stats_method_matmuls_by_hand():
    program = program_of(HandMethods().eval(), torch.randn(2, 4, 5))
    s = stats_of(program.ir, program.example_inputs)
    assert s.ops == {"matmul": 1, "bmm": 1}
    assert (s.params, s.macs) == (HandMethods.PARAMS, HandMethods.MACS)


def test_onnx_export_has_the_same_stats():
    torch.manual_seed(0)
    cases = ((Hand(), torch.randn(1, 3, 6, 6), Hand.MACS), (HandTransposed(), torch.randn(2, 4, 3, 3), 2 * HandTransposed.MACS),
             (HandMethods(), torch.randn(2, 4, 5), HandMethods.MACS))  # HandMethods' MACs are for batch 2 already
    for model, x, macs in cases:
        program = program_of(model.eval(), x)
        fx = stats_of(program.ir, program.example_inputs)
        onnx_model = ToOnnx().apply(program).program.ir
        on = stats_of(onnx_model)
        assert (on.params, on.macs) == (fx.params, fx.macs) == (type(model).PARAMS, macs), type(model).__name__


def test_dynamic_batch_onnx_counts_macs_for_the_example_inputs():
    """A symbolic batch axis must not make MACs 0: the example inputs say what is compiled for."""
    torch.manual_seed(0)
    program = program_of(Hand().eval(), torch.randn(2, 3, 6, 6), dynamic_batch=True)
    model = ToOnnx().apply(program).program.ir
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert stats_of(model, program.example_inputs).macs == 2 * Hand.MACS
    assert stats_of(model, (torch.zeros(5, 3, 6, 6),)).macs == 5 * Hand.MACS
    assert stats_of(model).params == Hand.PARAMS
    # the pass manager's records (what reports show) use the example inputs too
    result = slimc.compile(program_of(Hand().eval(), torch.randn(2, 3, 6, 6)).ir, torch.randn(2, 3, 6, 6),
                           pipeline="to-onnx,simplify", backend=None, inputs=slimc.InputOptions(dynamic_batch=True),
                           fidelity_samples=0)
    assert [p["stats"]["macs"] for p in result.report["passes"]] == [2 * Hand.MACS] * 2
    assert result.report["after"]["macs"] == result.report["before"]["macs"] == 2 * Hand.MACS


def test_onnx_stats_by_hand():
    """Conv 1x2x5x5 * [3,2,3,3] -> 1x3x3x3: 27*18 = 486; Gemm transA [12,1]^T x [12,4]: 4*12 = 48;
    batched MatMul [2,3,4]@[4,5]: 30*4 = 120. Params: float initializers and Constant tensors, not int64."""
    rng = np.random.default_rng(0)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [12, 1])
    cst = helper.make_tensor("cval", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"]),
        helper.make_node("Flatten", ["c"], ["f"], axis=0),         # [1, 27]
        helper.make_node("Slice", ["f", "s0", "s1", "ax"], ["f12"]),  # [1, 12]
        helper.make_node("Reshape", ["f12", "shape"], ["col"]),     # [12, 1]
        helper.make_node("Gemm", ["col", "gw"], ["g"], transA=1),   # [1, 4]
        helper.make_node("Constant", [], ["k"], value=cst),
        helper.make_node("Add", ["g", "k"], ["y1"]),
        helper.make_node("MatMul", ["m", "mw"], ["y2"]),
    ]
    model = make_onnx(
        nodes, [("x", [1, 2, 5, 5]), ("m", [2, 3, 4])], [("y1", [1, 4]), ("y2", [2, 3, 5])],
        [init("cw", rng.standard_normal((3, 2, 3, 3))), init("cb", np.zeros(3)), init("gw", rng.standard_normal((12, 4))),
         init("mw", rng.standard_normal((4, 5))), helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
         helper.make_tensor("s1", TensorProto.INT64, [1], [12]), helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
         shape])
    s = onnx_stats(model)
    assert s.params == 54 + 3 + 48 + 20 + 4
    assert s.macs == 486 + 48 + 120
    assert s.nodes == 8 and s.ops["Conv"] == 1 and s.ops["Gemm"] == 1


def test_stats_as_dict():
    s = Stats(10, 20, 3, {"Conv": 2, "Relu": 1})
    assert s.as_dict() == {"params": 10, "macs": 20, "nodes": 3}
    assert s.as_dict(with_ops=True)["ops"] == {"Conv": 2, "Relu": 1}


def test_custom_leaf_module_macs_are_counted_inside():
    """A leaf module of the user's own (kept whole by the tracer) is looked into for linears and matmuls."""
    import torch
    import torch.nn as nn

    from slimc.frontend.trace import trace_module
    from slimc.ir.stats import fx_stats

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 4)

        def forward(self, x):
            y = self.proj(x)  # 5x8 @ 8x4: 5*4*8 = 160 MACs
            return torch.matmul(y, y.transpose(0, 1))  # 5x4 @ 4x5: 5*5*4 = 100 MACs

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x)

    gm = trace_module(Net().eval(), leaf_modules=["block"])
    assert [n.op for n in gm.graph.nodes].count("call_module") == 1
    assert fx_stats(gm, (torch.randn(5, 8),)).macs == 260
