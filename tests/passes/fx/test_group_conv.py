"""group-conv: consistent channel permutations (exact), block-diagonal cuts (structure, counts), reports, ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from slimc.errors import SlimcError
from slimc.ir.program import Program
from slimc.passes.fx.group_conv import GroupConv
from slimc.passes.fx.grouping import apply_permutation, balanced_assign, cocluster, permutable_groups
from slimc.passes.fx.prune.graph import analyze
from slimc.passes.registry import get_pass


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetish(nn.Module):
    """Residual adds, BatchNorm, a depthwise conv, a conv with 18 outputs, a flatten->linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.b1 = Block(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.b2 = Block(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.odd = nn.Conv2d(32, 18, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(18 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.b2(torch.relu(self.down(self.b1(x))))
        x = self.odd(torch.relu(self.dw(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _randomise_bn(model):
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def program(model=None, shape=(1, 3, 16, 16)):
    torch.manual_seed(0)
    model = _randomise_bn(model or ResNetish()).eval()
    return Program(ir=fx.symbolic_trace(model), example_inputs=(torch.randn(*shape),), input_names=("input",))


def _random_orders(analysis, seed=1):
    ok, skipped = permutable_groups(analysis)
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randperm(g.size, generator=gen) for n, g in ok.items()}, skipped


def test_registered_and_options_round_trip():
    cls = get_pass("group-conv")
    p = cls.from_options({"groups": "2", "permute": "false", "min-channels": "8", "ignore": "b1",
                          "layers": "b2.conv1:4,down:1"})
    assert p == GroupConv(groups=2, permute=False, min_channels=8, ignore=("b1",), layers={"b2.conv1": 4, "down": 1})
    assert "layers=b2.conv1:4,down:1" in p.print() and hash(p) == hash(GroupConv(**{
        "groups": 2, "permute": False, "min_channels": 8, "ignore": ("b1",), "layers": {"b2.conv1": 4, "down": 1}}))
    assert not cls.lossless and cls.level == "fx"
    with pytest.raises(SlimcError):
        cls.from_options({"groups": "0"})


def test_permutation_alone_is_exact_through_residuals_bn_and_flatten_linear():
    prog = program()
    gm = copy.deepcopy(prog.ir)
    analysis = analyze(gm, prog.example_inputs)
    orders, skipped = _random_orders(analysis)
    # The stem group is coupled with both residual adds of b1 and the input of down, b1.bn1 ...
    assert set(orders) == {"stem", "b1.conv1", "down", "b2.conv1", "odd"}
    assert "model output" in skipped["fc"]
    assert all(not torch.equal(o, torch.arange(o.numel())) for o in orders.values())
    changed = apply_permutation(analysis, orders)
    assert {"b1.bn2", "dw", "fc", "odd"} <= set(changed)  # residual partner, depthwise, flatten->linear block
    assert not torch.equal(gm.fc.weight, prog.ir.fc.weight) and not torch.equal(gm.b1.bn2.running_mean,
                                                                                 prog.ir.b1.bn2.running_mean)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(gm(x), prog.ir(x), atol=1e-5, rtol=1e-5)


def test_groups_one_changes_nothing_and_reports_why():
    r = GroupConv(groups=1).apply(program())
    assert not r.changed and r.details["grouped"] == 0
    assert r.details["skipped"]["b1.conv1"] == "groups=1 asked"


def test_cut_structure_counts_and_input_program_untouched():
    prog = program()
    x = torch.randn(3, 3, 16, 16)
    before = prog.ir(x).clone()
    r = GroupConv(groups=2, min_channels=16).apply(prog)
    gm, d = r.program.ir, r.details
    grouped = {"b1.conv1", "b1.conv2", "down", "b2.conv1", "b2.conv2", "odd"}
    assert set(d["layers"]) == grouped and d["grouped"] == 6
    for name in grouped:
        assert gm.get_submodule(name).groups == 2
    assert (gm.stem.groups, gm.dw.groups) == (1, 32)
    assert gm.b1.conv1.weight.shape == (16, 8, 3, 3) and gm.odd.weight.shape == (18, 16, 1, 1)
    # exact counts: 16*16*9 -> 16*8*9 (no bias); down 32*16*9+32 -> 32*8*9+32; odd 18*32+18 -> 18*16+18
    assert d["layers"]["b1.conv1"]["params_before"] == 2304 and d["layers"]["b1.conv1"]["params_after"] == 1152
    assert (d["layers"]["down"]["params_before"], d["layers"]["down"]["params_after"]) == (4640, 2336)
    assert (d["layers"]["odd"]["params_before"], d["layers"]["odd"]["params_after"]) == (594, 306)
    assert d["layers"]["b2.conv1"]["macs_after"] * 2 == d["layers"]["b2.conv1"]["macs_before"] == 32 * 64 * 32 * 9
    n_before = sum(p.numel() for p in prog.ir.parameters())
    assert sum(p.numel() for p in gm.parameters()) == n_before - (d["params_before"] - d["params_after"])
    assert gm(x).shape == before.shape
    assert torch.equal(prog.ir(x), before) and prog.ir.b1.conv1.groups == 1
    assert not {id(p) for p in gm.parameters()} & {id(p) for p in prog.ir.parameters()}
    assert d["permutation_check"].startswith("exact") and d["groups_permuted"] >= 4
    for row in d["layers"].values():
        assert 0.0 < row["kept_fraction"] <= 1.0
    gm.train()
    gm(x).sum().backward()  # still a trainable module
    assert gm.b1.conv1.weight.grad.shape == (16, 8, 3, 3)


def test_skipped_layers_are_reported_with_reasons():
    r = GroupConv(groups=4, min_channels=16, ignore=("b2",), layers={"down": 1}).apply(program())
    s = r.details["skipped"]
    assert s["dw"] == "depthwise"
    assert "not divisible" in s["odd"] and "too small" in s["stem"]
    assert s["b2.conv1"] == "in the ignore list" and s["down"] == "groups=1 asked"
    assert s["fc"] == "linear layers are not grouped"
    assert set(r.details["layers"]) == {"b1.conv1", "b1.conv2"}
    with pytest.raises(SlimcError, match="nope"):
        GroupConv(layers={"nope": 2}).apply(program())


class Planted(nn.Module):
    """conv `b` is block-diagonal under a random permutation of its outputs and of its inputs."""

    def __init__(self, c=32, g=4, seed=3):
        super().__init__()
        self.a = nn.Conv2d(3, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Conv2d(c, 4, 1)
        gen = torch.Generator().manual_seed(seed)
        po, pi = torch.randperm(c, generator=gen), torch.randperm(c, generator=gen)
        w, n = torch.zeros_like(self.b.weight), c // g
        for k in range(g):
            o, i = po[k * n:(k + 1) * n], pi[k * n:(k + 1) * n]
            w[o[:, None], i[None, :]] = torch.randn(n, n, 3, 3, generator=gen)
        self.b.weight.data = w

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("g", [2, 4])
def test_permutation_recovers_planted_blocks(g):
    prog = program(Planted(32, g))
    x = torch.randn(2, 3, 16, 16)
    row = GroupConv(groups=g).apply(prog).details["layers"]["b"]
    assert row["kept_fraction"] > 0.999 and row["kept_fraction_unpermuted"] < 0.6
    plain = GroupConv(groups=g, permute=False).apply(prog)
    prow = plain.details["layers"]["b"]
    assert prow["kept_fraction"] == prow["kept_fraction_unpermuted"] == row["kept_fraction_unpermuted"]
    assert plain.details["permutation_check"] == "not permuted"
    # With the planted blocks found, the grouped `b` computes exactly what the dense one did.
    perm = GroupConv(groups=g, layers={"head": 1}, min_channels=1).apply(prog).program.ir
    torch.testing.assert_close(perm(x), prog.ir(x), atol=1e-4, rtol=1e-4)


def test_balanced_assignment_and_cocluster_are_balanced():
    torch.manual_seed(0)
    block = balanced_assign(torch.rand(12, 3))
    assert torch.bincount(block, minlength=3).tolist() == [4, 4, 4]
    ob, ib = cocluster(torch.rand(16, 8), 4)
    assert torch.bincount(ob).tolist() == [4] * 4 and torch.bincount(ib).tolist() == [2] * 4


class Sliced(nn.Module):
    """Channel slicing, chunk and a channel shuffle: permuting those groups is not free."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.b = nn.Conv2d(16, 16, 1)
        self.c = nn.Conv2d(3, 32, 1)
        self.d = nn.Conv2d(32, 32, 1)
        self.shuffle = nn.ChannelShuffle(4)
        self.e = nn.Conv2d(3, 32, 1)
        self.f = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = self.b(self.a(x)[:, :16])
        p, q = torch.chunk(self.c(x), 2, 1)
        z = self.d(torch.cat([q, p], 1))
        w = self.f(self.shuffle(self.e(x)))
        return y.sum() + z.sum() + w.sum()


def test_slicing_split_and_shuffle_are_not_permuted_and_stay_exact():
    prog = program(Sliced())
    analysis = analyze(copy.deepcopy(prog.ir), prog.example_inputs)
    ok, skipped = permutable_groups(analysis)
    assert not {"a", "c", "e"} & set(ok)
    assert {"a", "c", "e"} <= set(skipped)
    r = GroupConv(groups=2, min_channels=8).apply(prog)
    assert r.program.ir.d.groups == 2
    assert r.details["permutation_skipped"].keys() >= {"a", "c", "e"}


def test_onnx_export_and_onnxruntime_run():
    import numpy as np
    import slimc

    torch.manual_seed(0)
    model = _randomise_bn(ResNetish()).eval()
    x = torch.randn(1, 3, 16, 16)
    res = slimc.compile(model, x, pipeline="group-conv{groups=2},to-onnx", backend="onnxruntime",
                        fidelity_samples=0)
    convs = [n for n in res.onnx.graph.node if n.op_type == "Conv"]
    groups = sorted(a.i for n in convs for a in n.attribute if a.name == "group")
    assert groups.count(2) == 6
    xn = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = res.artifact.run([xn])[0]
    want = res.module(torch.from_numpy(xn)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert res.report["after"]["macs"] < res.report["before"]["macs"]


def refuse_export(monkeypatch):
    """Make torch.export refuse every model, so group-conv takes its symbolic_trace fallback."""
    import slimc.frontend.export as frontend_export
    import slimc.ir.exported as exported

    def refuse(module, *args, **kwargs):
        raise SlimcError(f"torch.export could not capture {type(module).__name__}: refused by the test.")

    monkeypatch.setattr(exported, "export_module", refuse)
    monkeypatch.setattr(frontend_export, "export_module", refuse)


@pytest.mark.parametrize("frontend", ["torch.export", "symbolic_trace"])
def test_a_permutation_that_is_not_exact_is_dropped(monkeypatch, frontend):
    import slimc.passes.fx.grouping.permute as permute_mod
    from slimc.passes.fx.prune.handlers import handler_for

    def only_one_layer(analysis, orders):  # forgets every consumer: the model changes
        per_slot = permute_mod.permutation_indices(analysis, orders)
        if permute_mod.is_exported_analysis(analysis):  # slots are (parameter, axis): reorder one weight's rows
            fqn, axis = next(k for k in per_slot if k[1] == 0 and k[0].endswith(".weight"))
            owner, _, attr = fqn.rpartition(".")
            mod = analysis.module.get_submodule(owner)
            setattr(mod, attr, nn.Parameter(getattr(mod, attr).detach().index_select(0, per_slot[(fqn, axis)])))
            return [owner]
        module = next(m for m, s in per_slot if s == "out")
        mod = analysis.gm.get_submodule(module)
        keep = {s: per_slot.get((m, s), torch.arange(a.numel())) for (m, s), a in analysis.tracker.slots.items()
                if m == module}
        handler_for(mod).shrink(mod, keep)
        return [module]

    monkeypatch.setattr(permute_mod, "apply_permutation", only_one_layer)
    if frontend == "symbolic_trace":
        refuse_export(monkeypatch)
    prog = program()
    r = GroupConv(groups=2).apply(prog)
    assert "permutation dropped" in r.details["permutation_check"] and r.details["groups_permuted"] == 0
    plain = GroupConv(groups=2, permute=False).apply(prog)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(r.program.ir(x), plain.program.ir(x))
    assert r.details["frontend"].startswith("torch.export" if frontend == "torch.export" else "torch.fx")


@pytest.mark.parametrize("frontend", ["torch.export", "symbolic_trace"])
def test_grouping_still_works_when_the_channel_analysis_fails(monkeypatch, frontend):
    import slimc.passes.fx.prune.aten_graph as aten_graph
    import slimc.passes.fx.prune.graph as graph

    def boom(*args, **kwargs):
        raise RuntimeError("cannot follow this model")

    monkeypatch.setattr(graph, "analyze", boom)
    monkeypatch.setattr(aten_graph, "analyze_module", boom)
    if frontend == "symbolic_trace":
        refuse_export(monkeypatch)
    r = GroupConv(groups=2).apply(program())
    assert r.details["grouped"] == 6 and "channel analysis failed" in r.details["permutation_check"]
    row = r.details["layers"]["b1.conv1"]
    assert row["kept_fraction"] == row["kept_fraction_unpermuted"]


def test_per_layer_group_counts():
    r = GroupConv(groups=2, layers={"b2.conv1": 4, "b2.conv2": 8}).apply(program())
    gm = r.program.ir
    assert (gm.b2.conv1.groups, gm.b2.conv2.groups, gm.b1.conv1.groups, gm.down.groups) == (4, 8, 2, 2)
    assert r.details["layers"]["b2.conv2"]["params_after"] == 32 * 4 * 9
    assert r.details["permutation_check"].startswith("exact")
    assert gm(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_layer_counts_take_name_prefixes_like_ignore_and_ratios():
    r = GroupConv(groups=2, layers={"b2": 4, "b2.conv2": 8}).apply(program())
    gm = r.program.ir
    assert (gm.b2.conv1.groups, gm.b2.conv2.groups, gm.b1.conv1.groups) == (4, 8, 2)  # longest prefix wins
    with pytest.raises(SlimcError, match="b3"):
        GroupConv(layers={"b3": 2}).apply(program())


def test_plain_module_is_traced_and_macs_come_from_the_shared_counter():
    from slimc.ir.stats import fx_stats

    model = _randomise_bn(ResNetish()).eval()
    x = torch.randn(1, 3, 16, 16)
    r = GroupConv(groups=2).apply(Program(ir=model, example_inputs=(x,), input_names=("input",)))
    row = r.details["layers"]["b1.conv1"]
    assert row["macs_before"] == fx_stats(fx.symbolic_trace(model.b1.conv1), (torch.zeros(1, 16, 16, 16),)).macs
    assert row["macs_after"] * 2 == row["macs_before"] and r.program.ir(x).shape == (1, 10)
