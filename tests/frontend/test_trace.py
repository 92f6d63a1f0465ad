"""Tracing: untraceable submodules named with the user's line and a leaf hint; inputs that do not fit."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

import slimc
from slimc import SlimcError
from slimc.frontend.trace import check_inputs_fit, trace_module
from support import assert_outputs_close, fresh_inputs


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace this
            return self.fc(x)
        return -x


class WithGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.ReLU(), Gate())
        self.post = nn.Linear(4, 2)

    def forward(self, x):
        return self.post(self.block(self.pre(x)))


GATE_LINE = inspect.getsourcelines(Gate.forward)[1] + 1


def test_untraceable_submodule_is_named_with_line_and_leaf_hint():
    with pytest.raises(SlimcError) as e:
        trace_module(WithGate().eval())
    msg = str(e.value)
    assert "submodule 'block.1' (Gate)" in msg
    assert f"test_trace.py:{GATE_LINE}" in msg and "if x.sum() > 0:" in msg
    assert "leaf_modules=['block.1']" in msg and "--leaf-module block.1" in msg


def test_leaf_module_makes_it_compile():
    torch.manual_seed(0)
    model = WithGate().eval()
    x = torch.randn(3, 4)
    for leaf in ("block.1", "Gate", Gate):
        gm = trace_module(model, leaf_modules=[leaf])
        calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
        assert "block.1" in calls, leaf
    with pytest.raises(SlimcError, match="block.1"):
        slimc.compile(model, x, pipeline="fuse-bn", backend=None)
    result = slimc.compile(model, x, pipeline="fuse-bn,to-onnx", leaf_modules=["block.1"], fidelity_samples=2)
    assert result.report["fidelity"]["max_abs_err"] < 1e-5
    # Gate sees ReLU outputs, so every random input takes the traced branch
    xs = fresh_inputs(result.program)
    with torch.no_grad():
        ref = model(torch.from_numpy(xs[0])).numpy()
    assert_outputs_close([ref], result.artifact.run(xs), rel=1e-5)


def test_untraceable_top_level_module():
    class Top(nn.Module):
        def forward(self, x):
            if x.mean() > 0:
                return x
            return x * 2

    with pytest.raises(SlimcError) as e:
        trace_module(Top())
    msg = str(e.value)
    assert "the top-level module (Top)" in msg and "if x.mean() > 0:" in msg
    assert "leaf_modules" in msg


def test_inputs_that_do_not_fit():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    assert [o.shape for o in check_inputs_fit(model, (torch.randn(1, 3, 8, 8),))] == [(1, 2)]
    with pytest.raises(SlimcError) as e:
        check_inputs_fit(model, (torch.randn(1, 3, 16, 16),))
    msg = str(e.value)
    assert "does not run on inputs of shape 1x3x16x16:float32" in msg and "--input-shape" in msg
    with pytest.raises(SlimcError, match="does not run on inputs of shape 1x5x8x8"):
        slimc.load_program(model, torch.randn(1, 5, 8, 8))


def test_non_tensor_outputs_are_rejected():
    class Strs(nn.Module):
        def forward(self, x):
            return "label"

    with pytest.raises(SlimcError, match="outputs must be tensors"):
        check_inputs_fit(Strs(), (torch.randn(2),))
