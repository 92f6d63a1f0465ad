"""The lossless ONNX pipeline composes: a second run of it changes nothing (resnet-ish, transformer)."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import slimc
from slimc.passes.manager import PassManager
from slimc.passes.onnx._graph import fingerprint
from slimc.passes.pipeline import Pipeline
from support import assert_outputs_close, fresh_inputs, op_types, randomize_bn

PIPELINE = "fold-constants,simplify,fuse,eliminate-dead,dedupe-weights"


class _MiniResNet(nn.Module):
    """resnet18 in small: a padded stem (ZeroPad2d + conv-bn-relu, max pool), two BasicBlocks (one
    downsampling), then a 1x1 projection with a layer scale and a separate bias (conv-mul, conv-add),
    pool, fc. The exporter folds the BatchNorms itself; the Pad, scale and bias are left to `fuse`."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.stem = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 8, 3, 2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layers = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down))
        self.proj = nn.Conv2d(16, 16, 1, bias=False)
        self.scale = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.bias = nn.Parameter(torch.randn(1, 16, 1, 1))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.proj(self.layers(self.stem(x))) * self.scale + self.bias
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Block(nn.Module):
    """A pre-norm transformer block written out by hand, as many exported models are: LayerNorm as
    mean/var arithmetic and GELU as 0.5 x (1 + erf(x / sqrt 2)); opset 20 has ops for both."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.g1, self.b1 = nn.Parameter(torch.rand(d) + 0.5), nn.Parameter(torch.randn(d) * 0.1)
        self.g2, self.b2 = nn.Parameter(torch.rand(d) + 0.5), nn.Parameter(torch.randn(d) * 0.1)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    @staticmethod
    def _norm(x, g, b):
        d = x - x.mean(-1, keepdim=True)
        return d / torch.sqrt(d.pow(2).mean(-1, keepdim=True) + 1e-5) * g + b

    def forward(self, x):
        h = self._norm(x, self.g1, self.b1)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.fc1(self._norm(x, self.g2, self.b2))
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2.0)))
        return x + self.fc2(h)


def _export(module, x, opset=17) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # no no_grad: it would pick the fused fast path torch cannot export
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


def _models():
    torch.manual_seed(0)
    resnet = _export(randomize_bn(_MiniResNet()), torch.randn(1, 3, 32, 32))
    transformer = _export(nn.Sequential(_Block(), _Block()), torch.randn(2, 8, 32), opset=20)
    return {"resnet": resnet, "transformer": transformer}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_pipeline_twice_changes_nothing_the_second_time(models, name):
    program = slimc.load_program(models[name])
    pipeline = Pipeline.parse(PIPELINE)
    once, first = PassManager(pipeline).run(program)
    twice, second = PassManager(pipeline).run(once)
    assert [r.name for r in second if r.changed] == []
    assert fingerprint(twice.ir) == fingerprint(once.ir)
    x = fresh_inputs(program)
    assert_outputs_close(program.run(x), once.run(x), rel=1e-4)
    matched = next(r for r in first if r.name == "fuse").details["matches"]
    if name == "resnet":  # one Conv per conv layer, nothing else left around them (onnxsim already
        # fuses the folded Pad, scale and bias here; `fuse` does it when it runs first, see below)
        assert "BatchNormalization" not in op_types(once.ir) and "Pad" not in op_types(once.ir)
        assert op_types(once.ir).count("Conv") == 7 and "Mul" not in op_types(once.ir)
    else:
        assert matched == {"layer-norm": 4, "gelu": 2}
        assert op_types(once.ir).count("LayerNormalization") == 4 and op_types(once.ir).count("Gelu") == 2


def test_fuse_first_does_the_affine_folds_itself(models):
    program = slimc.load_program(models["resnet"])
    once, records = PassManager(Pipeline.parse("fuse,fold-constants,eliminate-dead")).run(program)
    assert records[0].details["matches"] == {"conv-mul": 1, "conv-add": 1}
    x = fresh_inputs(program)
    assert_outputs_close(program.run(x), once.run(x), rel=1e-4)


def test_fuse_alone_is_idempotent_on_a_graph_it_rewrote():
    """fuse's own fixpoint: rules that enable each other run in one pass (Pad -> Conv -> BN -> Mul)."""
    from onnx import helper

    from support import init, make_onnx

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Pad", ["x", "p"], ["xp"]), helper.make_node("Conv", ["xp", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"]),
             helper.make_node("Mul", ["bn", "s"], ["y"])]
    inits = [helper.make_tensor("p", 7, [8], [0, 0, 1, 1, 0, 0, 1, 1]), init("w", rng.standard_normal((4, 3, 3, 3))),
             init("g", rng.random(4) + 0.5), init("b", rng.standard_normal(4)), init("m", rng.standard_normal(4)),
             init("v", rng.random(4) + 0.5), init("s", rng.standard_normal((4, 1, 1)))]
    model = make_onnx(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 6])], inits)
    fuse = Pipeline.parse("fuse").passes[0]
    once = fuse.apply(slimc.load_program(model))
    assert op_types(once.program.ir) == ["Conv"]
    assert once.details["matches"] == {"pad-conv": 1, "conv-bn": 1, "conv-mul": 1}
    again = fuse.apply(once.program)
    assert not again.changed and again.program is once.program
