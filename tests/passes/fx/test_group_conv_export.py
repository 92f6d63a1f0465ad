"""group-conv on the exported graph: the result is the user's own class, models torch.fx cannot trace
are grouped, the numbers match an independent reference, and export refusals fall back to torch.fx."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from slimc.ir.program import Program
from slimc.passes.fx.group_conv import GroupConv

from test_group_conv import Planted, ResNetish, _randomise_bn, refuse_export


def _program(model, shape=(1, 3, 16, 16)):
    torch.manual_seed(0)
    return Program(ir=model.eval(), example_inputs=(torch.randn(*shape),), input_names=("input",))


def _block_diagonal_reference(model, layers):
    """`model` with every grouped conv's weight masked to its block diagonal (contiguous blocks): what
    the grouped model must compute when no permutation was applied."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, row in layers.items():
            conv = ref.get_submodule(name)
            g, (o, i) = row["groups"], conv.weight.shape[:2]
            mask = (torch.arange(o)[:, None] // (o // g)) == (torch.arange(i)[None, :] // (i // g))
            conv.weight.mul_(mask.view(o, i, *([1] * (conv.weight.dim() - 2))))
    return ref


class Branchy(nn.Module):
    """torch.fx cannot trace this (a branch and a loop on sizes); torch.export specialises both.
    Conv `b` runs twice in the loop with a residual around it; `scale` is keyword-only."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.c = nn.Conv2d(32, 32, 1)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x, *, scale: float = 1.0):
        y = torch.relu(self.bn(self.a(x)))
        if x.shape[-1] > 8:
            y = nn.functional.max_pool2d(y, 2)
        for _ in range(y.shape[1] // 16):
            y = y + self.b(y)
        return self.head(torch.relu(self.c(y))) * scale


def test_result_is_the_users_class_with_grouped_convs_and_exact_numbers():
    torch.manual_seed(0)
    model = _randomise_bn(ResNetish()).eval()
    prog = _program(model)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        before = model(x).clone()
    plain = GroupConv(groups=2, permute=False).apply(prog)
    grouped, d = plain.program.ir, plain.details
    assert type(grouped) is ResNetish and not isinstance(grouped, fx.GraphModule)
    assert d["frontend"] == "torch.export" and d["grouped"] == 6
    assert grouped.b1.conv1.groups == 2 and grouped.b1.conv1.weight.shape == (16, 8, 3, 3)
    assert (grouped.stem.groups, grouped.dw.groups) == (1, 32)
    n_before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in grouped.parameters()) == n_before - (d["params_before"] - d["params_after"])
    with torch.no_grad():  # numbers: exactly the dense model with its off-diagonal blocks zeroed
        torch.testing.assert_close(grouped(x), _block_diagonal_reference(model, d["layers"])(x),
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(model(x), before) and model.b1.conv1.groups == 1  # the user's model is untouched
    permuted = GroupConv(groups=2).apply(prog)
    p = permuted.details
    assert type(permuted.program.ir) is ResNetish
    assert p["permutation_check"].startswith("exact") and p["groups_permuted"] >= 4
    kept = sum(r["kept_fraction"] for r in p["layers"].values())
    assert kept > sum(r["kept_fraction_unpermuted"] for r in p["layers"].values())
    assert not {id(t) for t in permuted.program.ir.parameters()} & {id(t) for t in model.parameters()}


@pytest.mark.parametrize("g", [2, 4])
def test_permutation_recovers_planted_blocks_on_the_users_module(g):
    model = Planted(32, g)
    prog = _program(model)
    r = GroupConv(groups=g, layers={"head": 1}, min_channels=1).apply(prog)
    assert type(r.program.ir) is Planted and r.details["frontend"] == "torch.export"
    row = r.details["layers"]["b"]
    assert row["kept_fraction"] > 0.999 and row["kept_fraction_unpermuted"] < 0.6
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # the planted blocks found, grouped `b` computes what the dense one did
        torch.testing.assert_close(r.program.ir(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_model_torch_fx_cannot_trace_is_grouped_and_keeps_its_forward():
    torch.manual_seed(0)
    model = _randomise_bn(Branchy()).eval()
    with pytest.raises(Exception):
        fx.symbolic_trace(model)
    prog = _program(model)
    x = torch.randn(2, 3, 16, 16)
    plain = GroupConv(groups=2, permute=False, min_channels=8).apply(prog)
    grouped, d = plain.program.ir, plain.details
    assert type(grouped) is Branchy and d["frontend"] == "torch.export"
    assert set(d["layers"]) == {"b", "c"} and "too small" in d["skipped"]["a"]
    assert (grouped.b.groups, grouped.c.groups, grouped.a.groups) == (2, 2, 1)
    assert d["layers"]["b"]["params_after"] == 32 * 16 * 9 + 32
    with torch.no_grad():
        want = _block_diagonal_reference(model, d["layers"])
        torch.testing.assert_close(grouped(x), want(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grouped(x, scale=0.5), want(x, scale=0.5), atol=1e-5, rtol=1e-5)
        assert grouped(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)  # the other branch still runs
    permuted = GroupConv(groups=2, min_channels=8).apply(prog)
    assert type(permuted.program.ir) is Branchy
    assert permuted.details["permutation_check"].startswith("exact")
    assert permuted.details["groups_permuted"] >= 1


def test_export_refused_falls_back_to_torch_fx_and_says_so(monkeypatch):
    refuse_export(monkeypatch)
    torch.manual_seed(0)
    model = _randomise_bn(ResNetish()).eval()
    r = GroupConv(groups=2, permute=False).apply(_program(model))
    assert r.details["frontend"].startswith("torch.fx.symbolic_trace graph (torch.export refused the model")
    assert isinstance(r.program.ir, fx.GraphModule) and r.details["grouped"] == 6
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(r.program.ir(x), _block_diagonal_reference(model, r.details["layers"])(x),
                                   atol=1e-5, rtol=1e-5)


class SharedWeight(nn.Module):
    """`conv`'s weight is also used functionally by the parent: setting its `groups` would not
    change that call, so it is left dense."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 1)
        self.other = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.other(self.conv(x)) + nn.functional.conv2d(x, self.conv.weight)


def test_a_conv_whose_weight_is_used_outside_its_forward_stays_dense():
    prog = _program(SharedWeight(), (1, 16, 8, 8))
    r = GroupConv(groups=2, min_channels=8).apply(prog)
    assert "outside its own forward" in r.details["skipped"]["conv"]
    assert r.program.ir.conv.groups == 1 and r.program.ir.other.groups == 2
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(r.program.ir(x), _block_diagonal_reference(prog.ir, r.details["layers"])(x),
                                   atol=1e-5, rtol=1e-5)


def test_through_compile_and_the_cli(tmp_path):
    import numpy as np

    import slimc
    from slimc.cli.main import main

    torch.manual_seed(0)
    model = _randomise_bn(Branchy()).eval()
    x = torch.randn(1, 3, 16, 16)
    res = slimc.compile(model, x, pipeline="group-conv{groups=2 min-channels=8},to-onnx", backend="onnxruntime",
                        fidelity_samples=0)
    assert type(res.module) is Branchy and res.records[0].details["frontend"] == "torch.export"
    groups = sorted(a.i for n in res.onnx.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert groups == [1, 1, 2, 2, 2]  # a and head dense; b (run twice: two Conv nodes) and c grouped
    xn = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = res.module(torch.from_numpy(xn)).numpy()
    np.testing.assert_allclose(res.artifact.run([xn])[0], want, atol=1e-4, rtol=1e-4)
    (tmp_path / "models.py").write_text(
        "import torch.nn as nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),\n"
        "                         nn.ReLU(), nn.Conv2d(16, 4, 1))\n")
    rc = main(["compile", f"{tmp_path / 'models.py'}:net", "--input-shape", "1x3x8x8", "--pipeline",
               "group-conv{groups=2 min-channels=8},to-onnx", "-o", str(tmp_path / "out")])
    assert rc == 0
    import onnx

    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    groups = [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert groups == [1, 2, 1]  # only the 16 -> 16 conv is wide enough for min-channels=8


class Inverted(nn.Module):
    """MobileNetV2's block: 1x1 expand -> depthwise -> 1x1 project, with BatchNorms and a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand, self.bn1 = nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.dw, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32)
        self.project = nn.Conv2d(32, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.expand(x))))))
        return self.head(x + self.project(y))


@pytest.mark.parametrize("make", [ResNetish, Inverted])
def test_exported_permutation_alone_is_exact_through_depthwise_residuals_bn_and_flatten(make):
    from slimc.passes.fx.grouping import apply_permutation, permutable_groups
    from slimc.passes.fx.prune.aten_graph import analyze_module

    torch.manual_seed(0)
    model = _randomise_bn(make()).eval()
    prog = _program(model)
    work = copy.deepcopy(model)
    analysis = analyze_module(work, prog.example_inputs, exported=prog.exported())
    ok, skipped = permutable_groups(analysis)
    expected = {"stem", "expand"} if make is Inverted else {"stem", "b1.conv1", "down", "b2.conv1", "odd"}
    assert set(ok) == expected, skipped
    gen = torch.Generator().manual_seed(1)
    orders = {n: torch.randperm(g.size, generator=gen) for n, g in ok.items()}
    changed = apply_permutation(analysis, orders)
    if make is Inverted:  # the expand group reaches the depthwise conv and its BatchNorms
        assert {"expand", "bn1", "dw", "bn2", "project"} <= set(changed)
        assert not torch.equal(work.dw.weight, model.dw.weight)
    else:
        assert {"b1.bn2", "dw", "fc", "odd"} <= set(changed)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x), atol=1e-5, rtol=1e-5)
