"""prune-channels on the exported ATen graph, cutting the user's own module.

Exactness: the channels chosen for removal are first made exactly zero in the original (the
producer's weight rows and bias, the norm's scale and shift, element-labelled parameters);
the pruned module must then reproduce the zeroed original's outputs. Structure: the result is
the user's class, its layers' attributes match their new weights, it runs and re-exports.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

from slimc.ir.program import Program
from slimc.passes.fx.prune import choose_removals, unit_scores
from slimc.passes.fx.prune.aten_graph import analyze_module
from slimc.passes.fx.prune.module_cut import cut_module
from slimc.passes.fx.prune_channels import PruneChannels, PruneWarning
from support import zero_removed_channels

torchvision = pytest.importorskip("torchvision")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def check_exact(model: nn.Module, *inputs, ratio=0.5, atol=1e-5):
    """Prune a copy of `model` (random units), check it equals the zeroed original; returns (pruned, analysis)."""
    model = copy.deepcopy(model).eval()
    analysis = analyze_module(model, inputs)
    scores, _ = unit_scores(analysis, "random", seed=0)
    removed = choose_removals(analysis.groups, scores, ratio, "local", 1, 1)
    assert removed, "nothing was pruned"
    zero_removed_channels(analysis, removed)
    before = n_params(model)
    with torch.no_grad():
        want = model(*inputs)
    cut_module(analysis, removed)
    with torch.no_grad():
        got = model(*inputs)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    assert n_params(model) < before
    return model, analysis


def prune(model, *inputs, **options):
    program = Program(model.eval(), tuple(inputs), ("input",), ("output",), original=model)
    return PruneChannels(**{"ratio": 0.5, **options}).apply(program)


def mac_share(result) -> float:
    return result.details["layer_macs_after"] / result.details["layer_macs_before"]


# ---- layers that subclass built-ins, and custom modules -------------------------------------

class MyConv(nn.Conv2d):
    """A subclass with its own forward: symbolic_trace turns it into a call without a handler."""

    def forward(self, x):
        return super().forward(x) * 1.0


class MyBN(nn.BatchNorm2d):
    def forward(self, x):
        return torch.relu(super().forward(x))


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = MyConv(3, 16, 3, padding=1), MyBN(16)
        self.s = Scale(16)
        self.b = nn.Conv2d(16, 24, 3, padding=1, groups=1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.s(self.bn(self.a(x)))
        x = self.dw(torch.relu(self.b(x)))
        return self.head(x.mean((2, 3)))


def test_subclasses_and_custom_modules_prune_exactly_and_keep_their_class():
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for m in Custom().modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2)
    pruned, analysis = check_exact(Custom(), x)
    assert type(pruned.a) is MyConv and type(pruned.bn) is MyBN
    assert pruned.a.out_channels == 8 == pruned.bn.num_features == pruned.s.scale.numel() == pruned.b.in_channels
    assert pruned.bn.running_mean.shape == (8,)
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels == pruned.b.out_channels == 12
    assert pruned.head.in_features == 12
    torch.export.export(pruned, (x,))  # the result re-exports for the next pass


def test_timm_batchnormact_and_scaled_std_conv_prune():
    timm = pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d, ScaledStdConv2d

    model = nn.Sequential(ScaledStdConv2d(3, 16, 3, padding=1), BatchNormAct2d(16), ScaledStdConv2d(16, 32, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    x = torch.randn(1, 3, 12, 12)
    result = prune(model, x, round_to=1, min_channels=1)
    pruned = result.program.ir
    assert type(pruned[0]) is ScaledStdConv2d and pruned[0].out_channels == 8 == pruned[1].num_features
    assert pruned[0].gain.shape[0] == 8 and pruned[2].in_channels == 8 and pruned[2].out_channels == 16
    assert pruned(x).shape == (1, 4)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()
    assert any(isinstance(m, BatchNormAct2d) for m in net.modules())
    result = prune(net, torch.randn(1, 3, 64, 64))
    assert mac_share(result) <= 0.55 and result.program.ir(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert all(m.num_features == m.weight.numel() for m in result.program.ir.modules() if isinstance(m, BatchNormAct2d))


# ---- torchvision ---------------------------------------------------------------------------

def _tv(name, **kwargs):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def test_resnet18_exact_and_halved():
    pruned, analysis = check_exact(_tv("resnet18"), torch.randn(1, 3, 32, 32))
    assert type(pruned).__name__ == "ResNet" and pruned.layer1[0].conv1.out_channels == 32
    result = prune(_tv("resnet18"), torch.randn(1, 3, 32, 32))
    assert 0.2 < mac_share(result) <= 0.3 and result.details["frontend"] == "torch.export"
    assert "warning" not in result.details


@pytest.mark.parametrize("name,size", [("mobilenet_v3_small", 64), ("shufflenet_v2_x0_5", 64)])
def test_torchvision_mobile_nets_prune_exactly(name, size):
    check_exact(_tv(name), torch.randn(1, 3, size, size), atol=1e-4)
    assert mac_share(prune(_tv(name), torch.randn(1, 3, size, size))) <= 0.55


def test_swin_prunes_with_modules_that_tie_widths_at_run_time_kept_whole():
    x = torch.randn(1, 3, 64, 64)
    result = prune(_tv("swin_t"), x)
    assert mac_share(result) <= 0.55 and result.program.ir(x).shape == (1, 1000)
    assert any("kept whole after a failed cut" in n for n in result.details.get("notes", []))


def test_video_resnet_prunes():
    x = torch.randn(1, 3, 4, 32, 32)
    pruned, _ = check_exact(torchvision.models.video.r3d_18().eval(), x, atol=1e-4)
    assert type(pruned.layer1[0].conv1[0]).__name__ == "Conv3DSimple"
    assert pruned.layer1[0].conv1[0].out_channels == 32


# ---- no silent no-ops ------------------------------------------------------------------------

class Blocked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3), nn.Conv2d(32, 8, 1)

    def forward(self, x):
        y = self.b(torch.cumsum(self.a(x), 1))  # cumsum over channels: no handler
        return self.c(torch.cumsum(y, 1))


def test_little_cut_warns_and_names_the_blocker():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune(Blocked(), torch.randn(1, 3, 12, 12), explain=True)
    msgs = [str(w.message) for w in caught if issubclass(w.category, PruneWarning)]
    assert msgs and "cumsum" in msgs[0] and "Top blockers" in msgs[0]
    top = result.details["blockers"][0]
    assert "cumsum" in top["reason"] and top["macs_held"] > 0 and "warning" in result.details


# ---- extension -----------------------------------------------------------------------------

class ChannelCumsum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


def test_user_aten_handler_is_used():
    from slimc.passes.fx.prune import Handler, register_handler
    from slimc.passes.fx.prune.handlers import _USER

    class Keep(Handler):  # pretend cumsum is elementwise: channels then follow through it
        def propagate(self, ctx):
            return ctx.arg_labels[0]

    register_handler(torch.ops.aten.cumsum, Keep())
    try:
        result = prune(Blocked(), torch.randn(1, 3, 12, 12))
        assert result.program.ir.a.out_channels == result.program.ir.b.out_channels == 16
        assert "warning" not in result.details
    finally:
        _USER["functions"].pop(torch.ops.aten.cumsum)


def test_user_handler_registered_before_the_builtins_load_survives_them():
    import importlib

    from slimc.passes.fx.prune import Handler, handlers, layers, register_handler

    class Mine(Handler):
        pass

    mine, loaded = Mine(), handlers._LOADED
    handlers._LOADED = False  # as in a fresh process: the user registers first, the table loads later
    register_handler(nn.Conv2d, mine)
    try:
        importlib.reload(layers)  # the built-in table registering itself again
        assert handlers.handler_for(nn.Conv2d(1, 1, 1)) is mine
    finally:
        handlers._USER["modules"].pop(nn.Conv2d)
        handlers._LOADED = loaded
    assert type(handlers.handler_for(nn.Conv2d(1, 1, 1))).__name__ == "ConvHandler"


def test_through_compile_a_leaf_module_prunes_after_export():
    """Today's frontend traces with torch.fx: a layer it cannot trace stays a leaf, which the exported
    graph opens up again, so it is pruned like the rest."""
    import slimc

    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = slimc.compile(Custom().eval(), x, pipeline="prune-channels{ratio=0.5 round-to=1 min-channels=1},to-onnx",
                          backend="onnxruntime", leaf_modules=["bn"])
    details = r.report["passes"][0]["details"]
    assert details["frontend"] == "torch.export" and details["groups_pruned"] == 2
    assert r.report["after"]["params"] < 0.4 * r.report["before"]["params"]
    assert r.artifact.run([x.numpy()])[0].shape == (1, 5)


class CumsumBlock(nn.Module):
    """A user layer slimc cannot see through (cumsum over channels) with a per-channel parameter."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return torch.cumsum(x, 1) * 0 + x * self.gain.view(1, -1, 1, 1)


class WithBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.blk, self.b = nn.Conv2d(3, 16, 1), CumsumBlock(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(self.blk(self.a(x)))


def test_user_module_handler_treats_the_module_subgraph_as_one_call():
    from slimc.passes.fx.prune import Handler, register_handler
    from slimc.passes.fx.prune.handlers import _USER

    class BlockHandler(Handler):
        def propagate(self, ctx):
            ctx.tracker.slot(ctx.name, "ch", ctx.arg_labels[0], 1, f"{ctx.describe()} scales per channel")
            return ctx.arg_labels[0]

        def weights(self, module, slot):
            return [(module.gain, 0)]

        def shrink(self, module, keep):
            module.gain = nn.Parameter(module.gain.detach()[keep["ch"]])

    x = torch.randn(1, 3, 4, 4)
    assert prune(WithBlock(), x, round_to=1).program.ir.a.out_channels == 16  # cumsum blocks it
    register_handler(CumsumBlock, BlockHandler())
    try:
        model = WithBlock().eval()
        result = prune(model, x, round_to=1)
    finally:
        _USER["modules"].pop(CumsumBlock)
    pruned = result.program.ir
    assert pruned.a.out_channels == 8 and pruned.blk.gain.shape == (8,) and pruned.b.in_channels == 8
    kept = [i for i in range(16) if any(torch.equal(pruned.a.weight[j], model.a.weight[i]) for j in range(8))]
    with torch.no_grad():
        act = (model.a(x) * model.blk.gain.view(1, -1, 1, 1))[:, kept].flatten(2)
        want = torch.einsum("oc,bcp->bop", model.b.weight.flatten(1)[:, kept], act)
        got = (pruned(x) - model.b.bias.view(1, -1, 1, 1)).flatten(2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_grouped_conv_with_few_wide_groups_is_cut_inside_every_group_alike():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1, groups=2), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 1, groups=32), nn.ReLU(), nn.Conv2d(64, 4, 1))
    pruned, _ = check_exact(model, torch.randn(1, 3, 8, 8))
    assert pruned[3].groups == 2 and pruned[3].in_channels == 8 and pruned[3].out_channels == 16
    assert pruned[3].weight.shape == (16, 4, 3, 3)
    assert pruned[6].groups == 16 and pruned[6].out_channels == 32  # narrow groups: whole groups go


class _SlowWhenCut(nn.Module):
    """Raises TimeoutError (as a caller's SIGALRM would) when run at a cut width."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3)

    def forward(self, x):
        if self.a.out_channels < 16:
            raise TimeoutError("over the caller's time limit")
        return self.b(torch.relu(self.a(x)))


def test_a_time_limit_during_the_check_run_is_not_taken_for_a_failing_module():
    from slimc.passes.fx.prune_channels import PruneChannels

    model = _SlowWhenCut().eval()
    program = Program(model, (torch.randn(1, 3, 8, 8),), ("x",), ("y",), original=model)
    with pytest.raises(TimeoutError):  # not retried with the module kept whole, not wrapped as a broken model
        PruneChannels(ratio=0.5, round_to=1, min_channels=1).apply(program)
    assert model.a.out_channels == 16


class _CachesDerivedTensor(nn.Module):
    """Keeps a tensor computed from a parameter in a plain dict, as timm's LeViT caches its attention biases."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3)
        self.scale = nn.Parameter(torch.ones(4, 1, 1))
        self.cache = {}

    def forward(self, x):
        if "s" not in self.cache:
            self.cache["s"] = self.scale * 2  # not a graph leaf: deepcopy refuses it
        return self.b(torch.relu(self.a(x))) * self.cache["s"]


def test_a_module_caching_a_derived_tensor_prunes():
    from slimc.passes.fx.prune_channels import PruneChannels

    model = _CachesDerivedTensor().eval()
    x = torch.randn(1, 3, 8, 8)
    model(x)  # fills the cache with grad on
    program = Program(model, (x,), ("x",), ("y",), original=model)
    result = PruneChannels(ratio=0.5, round_to=1, min_channels=1).apply(program)
    assert result.program.ir.a.out_channels == 8 and model.a.out_channels == 16
    with torch.no_grad():
        assert result.program.ir(x).shape == model(x).shape == (1, 4, 4, 4)
