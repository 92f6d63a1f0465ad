"""prune-channels as a pass: options, rules, criteria, reports, extension, channel_groups API."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from slimc.errors import SlimcError
from slimc.ir.program import Program
from slimc.passes.fx.prune import Handler, channel_groups, register_handler
from slimc.passes.fx.prune_channels import PruneChannels
from slimc.passes.registry import get_pass


class Net(nn.Module):
    def __init__(self, width=24):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def program(model=None, shape=(1, 3, 8, 8)):
    torch.manual_seed(0)
    model = (model or Net()).eval()
    return Program(ir=fx.symbolic_trace(model), example_inputs=(torch.randn(*shape),), input_names=("input",))


def widths(result):
    gm = result.program.ir
    return gm.conv1.out_channels, gm.conv2.out_channels, gm.conv3.out_channels


def test_registered_and_parsed_from_pipeline_options():
    cls = get_pass("prune-channels")
    p = cls.from_options({"ratio": "0.25", "round-to": "4", "ratios": "conv1:0.5,conv2:0.75", "ignore": "conv3"})
    assert p == PruneChannels(ratio=0.25, round_to=4, ratios={"conv1": 0.5, "conv2": 0.75}, ignore=("conv3",))
    assert "ratios=conv1:0.5,conv2:0.75" in p.print() and hash(p) == hash(cls.from_options({"ratio": "0.25", "round-to": "4", "ratios": "conv1:0.5,conv2:0.75", "ignore": "conv3"}))
    with pytest.raises(SlimcError):
        cls.from_options({"ratio": "1.5"})


def test_default_prunes_half_and_keeps_outputs_and_does_not_touch_the_input_program():
    prog = program()
    x = torch.randn(2, 3, 8, 8)
    before = prog.ir(x).clone()
    result = PruneChannels(ratio=0.5, round_to=1, min_channels=1).apply(prog)
    assert widths(result) == (12, 24, 32) and result.program.ir.fc.out_features == 10
    assert result.program.ir(x).shape == (2, 10)
    assert prog.ir.conv1.out_channels == 24 and torch.equal(prog.ir(x), before)
    ours = {id(p) for p in result.program.ir.parameters()}
    assert not ours & {id(p) for p in prog.ir.parameters()}  # no tensor shared with the caller
    d = result.details
    assert d["groups_found"] == 4 and d["groups_pruned"] == 3 and d["groups_blocked"] == 1
    assert d["channels_before"] == 24 + 48 + 64 + 10 and d["channels_after"] == 12 + 24 + 32 + 10
    assert d["params_after"] < d["params_before"]


def test_round_to_and_min_channels():
    assert widths(PruneChannels(ratio=0.5, round_to=8, min_channels=1).apply(program())) == (16, 24, 32)
    assert widths(PruneChannels(ratio=0.9, round_to=1, min_channels=8).apply(program())) == (8, 8, 8)
    assert widths(PruneChannels(ratio=0.9, round_to=8, min_channels=1).apply(program())) == (8, 8, 8)


def test_ignore_and_per_group_ratios():
    r = PruneChannels(ratio=0.5, round_to=1, ignore=("conv2",), ratios={"conv3": 0.25}).apply(program())
    assert widths(r) == (12, 48, 48)
    with pytest.raises(SlimcError, match="conv9"):
        PruneChannels(ratios={"conv9": 0.5}).apply(program())
    # an ignore entry that names nothing would silently keep nothing whole
    with pytest.raises(SlimcError, match=r"ignore names no submodule: conv22 \(did you mean 'conv2'"):
        PruneChannels(ratio=0.5, ignore=("conv22",)).apply(program())


def test_global_scope_removes_the_ratio_overall_without_emptying_a_group():
    r = PruneChannels(ratio=0.5, round_to=1, min_channels=1, scope="global").apply(program())
    w = widths(r)
    assert sum(w) == (24 + 48 + 64) // 2 and all(k >= 1 for k in w)
    assert all(k >= 0.1 * n for k, n in zip(w, (24, 48, 64)))  # the per-group cap


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "taylor", "random"])
def test_criteria(criterion):
    r = PruneChannels(ratio=0.5, round_to=1, criterion=criterion).apply(program())
    assert widths(r) == (12, 24, 32) and r.program.ir(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    if criterion == "taylor":
        assert "random calibration inputs" in r.details["notes"][0]
    if criterion == "bn":
        assert "no BatchNorm" in r.details["notes"][0]  # conv3's group has none: l2 instead


def test_l2_removes_the_smallest_channels():
    prog = program()
    with torch.no_grad():
        prog.ir.conv1.weight[:12].mul_(1e-3)  # channels 0..11 are nearly zero
        prog.ir.conv1.bias[:12].mul_(1e-3)
        prog.ir.bn1.weight[:12].mul_(1e-3)
        prog.ir.conv2.weight[:, :12].mul_(1e-3)  # the group also scores conv2's input columns
    r = PruneChannels(ratio=0.5, round_to=1, criterion="l2").apply(prog)
    torch.testing.assert_close(r.program.ir.conv1.weight, prog.ir.conv1.weight[12:])


def test_channel_groups_lists_stable_names_and_sizes():
    prog = program()
    groups = channel_groups(prog.ir, prog.example_inputs)
    assert [(g.name, g.size, g.prunable) for g in groups] == [
        ("conv1", 24, True), ("conv2", 48, True), ("conv3", 64, True), ("fc", 10, False)]
    assert "bn1.weight:0" in groups[0].members and "conv2.weight:1" in groups[0].members


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y = torch.cumsum(y, dim=1)  # no handler: channels mixed in an unknown way
        return self.c(self.b(y))


def test_unknown_op_blocks_its_group_and_explain_says_why():
    r = PruneChannels(ratio=0.5, round_to=1, explain=True).apply(program(Opaque(), (1, 3, 4, 4)))
    gm = r.program.ir
    assert gm.a.out_channels == 16 and gm.b.out_channels == 8
    text = "\n".join(r.details["blocked"])
    assert "a (16 ch) kept whole" in text and "node 'cumsum'" in text and "no prune handler" in text
    assert {g["name"]: g["kept"] for g in r.details["groups"]} == {"a": 16, "b": 8, "c": 4}


class Scale(nn.Module):
    """A user layer the tracer keeps as a leaf: a learned per-channel scale."""

    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.s = Scale(16)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(self.s(self.a(x)))


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m, name):
        return isinstance(m, Scale) or super().is_leaf_module(m, name)


class ScaleHandler(Handler):
    def propagate(self, ctx):
        ctx.tracker.slot(ctx.name, "ch", ctx.input_label(0), 1, f"{ctx.describe()} scales per channel")
        return ctx.input_label(0)

    def weights(self, module, slot):
        return [(module.scale, 0)]

    def shrink(self, module, keep):
        module.scale = nn.Parameter(module.scale.detach()[keep["ch"]])


def test_register_handler_for_a_user_layer():
    """The FX walk (slimc.passes.fx.prune.analyze on a traced graph) keeps a leaf it has no handler for
    whole; a user handler teaches it the layer. (The pass itself exports the model, where Scale's
    multiply is an ATen op it follows: see test_prune_aten.py.)"""
    from slimc.passes.fx.prune import analyze

    model = WithScale().eval()
    gm = fx.GraphModule(model, _LeafTracer().trace(model))
    blocked = analyze(gm, (torch.randn(1, 3, 4, 4),))
    assert not next(g for g in blocked.groups if g.name == "a").prunable
    register_handler(Scale, ScaleHandler())
    try:
        from test_prune_handlers import check_exact

        _, _, pruned, _ = check_exact(model, torch.randn(1, 3, 4, 4), tracer=_LeafTracer())
        assert pruned.s.scale.shape == (8,) and pruned.a.out_channels == 8
    finally:
        from slimc.passes.fx.prune.handlers import _USER

        _USER["modules"].pop(Scale, None)
    prog = Program(ir=gm, example_inputs=(torch.randn(1, 3, 4, 4),), input_names=("input",))
    exported = PruneChannels(ratio=0.5, round_to=1).apply(prog).program.ir
    assert exported.a.out_channels == 8 and exported.s.scale.shape == (8,)


class DataDependent(nn.Module):
    """`.item()` cannot run on meta tensors: the analysis falls back to a real forward pass."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * x.abs().amax().item())


def test_data_dependent_values_fall_back_to_a_real_walk():
    r = PruneChannels(ratio=0.5, round_to=1).apply(program(DataDependent(), (1, 3, 4, 4)))
    assert r.program.ir.a.out_channels == 8 and r.program.ir(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)


def test_plain_module_prunes_and_a_non_module_is_a_clear_error():
    prog = Program(ir=Net().eval(), example_inputs=(torch.randn(1, 3, 8, 8),), input_names=("input",))
    assert PruneChannels(round_to=1).apply(prog).program.ir.conv1.out_channels == 12
    with pytest.raises(SlimcError, match="PyTorch module"):
        PruneChannels().apply(Program(ir="model.onnx", example_inputs=(torch.randn(1, 3, 8, 8),),
                                      input_names=("input",)))


