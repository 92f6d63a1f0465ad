"""prune-channels, one handler at a time: structure (shapes, params) and exactness.

Exactness: the channels chosen for removal are first made exactly zero in the original
(producer weights and bias, norm scale and shift, parameters that add to them); the
pruned model must then reproduce the zeroed original's outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from slimc.passes.fx.prune import analyze, apply_cut, choose_removals, unit_scores
from slimc.passes.fx.prune.handlers import handler_for
from slimc.passes.fx.prune.shrink import Cut

_ZEROED_SLOTS = ("out", "ch", "heads", "hidden")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def zero_removed(analysis, removed) -> None:
    """Make every channel in `removed` exactly 0 wherever it is produced."""
    cut = Cut(analysis, removed)
    gm = analysis.gm
    with torch.no_grad():
        for (module, slot), atoms in analysis.tracker.slots.items():
            idx = cut.removed_at(atoms).nonzero().flatten()
            if slot not in _ZEROED_SLOTS or not idx.numel():
                continue
            mod = gm.get_submodule(module)
            for tensor, dim in handler_for(mod).weights(mod, slot):
                tensor.index_fill_(dim, idx, 0.0)
        for target, label in analysis.tracker.params.items():
            gone = cut.removed_at(label)
            owner, _, attr = target.rpartition(".")
            getattr(gm.get_submodule(owner) if owner else gm, attr).masked_fill_(gone, 0.0)


def check_exact(model: nn.Module, *inputs, ratio=0.5, round_to=1, min_channels=1, seed=0, atol=1e-5, tracer=None):
    """Prune `model` (random unit choice), check the outputs equal the zeroed original's.

    Returns (analysis, removed, pruned GraphModule, params before)."""
    torch.manual_seed(seed)
    model = model.eval()
    gm = fx.GraphModule(model, tracer.trace(model)) if tracer else fx.symbolic_trace(model)
    analysis = analyze(gm, inputs)
    scores, _ = unit_scores(analysis, "random", seed=seed)
    removed = choose_removals(analysis.groups, scores, ratio, "local", round_to, min_channels)
    assert removed, "nothing was pruned"
    zero_removed(analysis, removed)
    before = n_params(gm)
    with torch.no_grad():
        want = gm(*inputs)
    apply_cut(analysis, removed)
    with torch.no_grad():
        got = gm(*inputs)
    for a, b in zip(_flat(want), _flat(got)):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-4)
    assert n_params(gm) < before
    return analysis, removed, gm, before


def _flat(v):
    return list(v) if isinstance(v, (tuple, list)) else [v]


def group(analysis, name):
    return next(g for g in analysis.groups if g.name == name)


# ---- conv chains -------------------------------------------------------------------------

class ConvChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_conv_bn_linear_shrinks_exactly():
    a, removed, gm, before = check_exact(ConvChain(), torch.randn(2, 3, 8, 8))
    assert {g.name: g.size for g in a.groups} == {"conv1": 16, "conv2": 24, "fc": 5}
    assert gm.conv1.out_channels == 8 and gm.bn1.num_features == 8 and gm.conv2.in_channels == 8
    assert gm.conv2.out_channels == 12 and gm.fc.in_features == 12 and gm.fc.out_features == 5
    expected = before - (8 * 27 + 8) - 16 - (24 * 16 * 9 - 12 * 8 * 9) - 24 - 12 * 5
    assert n_params(gm) == expected


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.a = nn.Conv2d(16, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.gate = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b(torch.relu(self.a(x)))
        x = x * torch.sigmoid(self.gate(x))  # gate channels follow x (mul couples both inputs)
        return self.head(x)


def test_residual_add_and_mul_couple_both_inputs():
    a, _, gm, _ = check_exact(Residual(), torch.randn(1, 3, 6, 6))
    stream = group(a, "stem")
    assert {"stem:out", "b:out", "gate:out", "a:in", "gate:in", "head:in"} <= set(stream.members)
    assert gm.stem.out_channels == gm.b.out_channels == gm.gate.out_channels == gm.head.in_channels == 8


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.se = SqueezeExcitation(16, 8)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.out(self.se(self.conv(x)))


def test_squeeze_excitation_gate_follows_its_input():
    a, _, gm, _ = check_exact(SqueezeExcite(), torch.randn(1, 3, 6, 6))
    assert "se.fc2:out" in group(a, "conv").members
    assert gm.se.fc2.out_channels == gm.conv.out_channels == 8 and gm.se.fc1.out_channels == 4


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concat_keeps_offsets():
    a, _, gm, _ = check_exact(Concat(), torch.randn(1, 3, 5, 5))
    assert gm.c.in_channels == gm.a.out_channels + gm.b.out_channels == 12


class SplitAndSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.b = nn.Conv2d(3, 16, 1)
        self.l = nn.Conv2d(8, 4, 1)
        self.r = nn.Conv2d(24, 4, 1)
        self.c1 = nn.Conv2d(8, 4, 1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        left, right = y[:, :8], y[:, 8:]  # literal slice bounds: rewritten after pruning
        p, q = torch.chunk(self.b(x), 2, dim=1)
        return self.l(left) + self.r(right) + self.c1(p) + self.c2(q)


def test_split_chunk_and_slices_are_rewritten():
    a, _, gm, _ = check_exact(SplitAndSlice(), torch.randn(1, 3, 4, 4))
    assert gm.l.in_channels + gm.r.in_channels == gm.a.out_channels < 32
    assert gm.c1.in_channels == gm.c2.in_channels  # chunk(2) pieces shrink together


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.g = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.out = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.out(self.g(torch.relu(self.dw(self.a(x)))))


def test_depthwise_and_grouped_convs_couple_per_group():
    a, _, gm, _ = check_exact(Grouped(), torch.randn(1, 3, 6, 6))
    assert gm.dw.groups == gm.dw.in_channels == gm.a.out_channels
    assert gm.g.groups == 2 and gm.g.in_channels == 8 and gm.g.out_channels == 16  # whole groups removed
    assert gm.g.weight.shape[1] == 4  # per-group width unchanged


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 16, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.conv(x), 1))))


def test_flatten_to_linear_moves_blocks_of_features():
    a, _, gm, _ = check_exact(FlattenLinear(), torch.randn(2, 3, 4, 4))
    assert gm.fc1.in_features == gm.conv.out_channels * 16 == 64 and gm.fc1.out_features == 16


class ChannelsLast(nn.Module):
    """permute / transpose / reshape with a literal size that must be rewritten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 1)
        self.fc = nn.Linear(16, 16)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        n = x.shape[0]
        y = self.conv(x).permute(0, 2, 3, 1)  # N H W C
        y = self.fc(y).reshape(n, 16, 16)  # N, H*W, C with C written as a literal
        y = y.transpose(1, 2).reshape(n, 16, 4, 4)
        return self.out(y)


def test_permute_transpose_reshape_follow_the_channel_axis():
    a, _, gm, _ = check_exact(ChannelsLast(), torch.randn(1, 3, 4, 4))
    assert gm.fc.in_features == gm.conv.out_channels == 8 and gm.out.in_channels == gm.fc.out_features == 8


class Shuffle(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.a = nn.Conv2d(3, 16, 1)
        self.shuffle = nn.ChannelShuffle(4)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if self.functional:
            n, c, h, w = y.size()
            y = y.view(n, 4, c // 4, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        else:
            y = self.shuffle(y)
        return self.b(y)


@pytest.mark.parametrize("functional", [True, False], ids=["view-transpose", "nn.ChannelShuffle"])
def test_channel_shuffle(functional):
    a, _, gm, _ = check_exact(Shuffle(functional), torch.randn(1, 3, 4, 4))
    assert gm.a.out_channels == gm.b.in_channels == 8 and group(a, "a").size == 4  # j-th of each of 4 groups


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.b = nn.Conv2d(16, 16, 1)
        self.inorm = nn.InstanceNorm2d(16, affine=True)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.out(self.inorm(self.b(self.gn(self.a(x)))))


def test_group_norm_prunes_whole_groups_and_instance_norm_per_channel():
    a, _, gm, _ = check_exact(Norms(), torch.randn(1, 3, 4, 4))
    assert gm.gn.num_groups == 2 and gm.gn.num_channels == gm.a.out_channels == 8
    assert gm.inorm.num_features == gm.b.out_channels == 8


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 64)
        self.fc2 = nn.Linear(64, 12)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def test_transformer_mlp_hidden_units():
    a, _, gm, _ = check_exact(MLP(), torch.randn(2, 7, 12))
    assert gm.fc1.out_features == gm.fc2.in_features == 32 and gm.fc2.out_features == 12


class Attention(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 8, batch_first=batch_first)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        y, _ = self.mha(x, x, x, need_weights=False)
        return self.fc(y)


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_heads_are_pruned_whole(batch_first):
    from slimc.passes.fx.prune import SlimMultiheadAttention

    a, _, gm, _ = check_exact(Attention(batch_first), torch.randn(2, 5, 32))
    heads = group(a, "mha.heads")
    assert heads.size == 8 and heads.width == 4
    assert isinstance(gm.mha, SlimMultiheadAttention) and gm.mha.num_heads == 4 and gm.mha.head_dim == 4
    assert gm.mha.embed_dim == 32  # the input (untracked) pins the embedding


def test_slim_attention_equals_torch_attention():
    from slimc.passes.fx.prune.attention import AttentionHandler

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4).eval()
    slim = AttentionHandler().shrink(mha, {"embed": torch.arange(16), "heads": torch.arange(4)}).eval()
    q, k = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    mask = torch.rand(5, 7) > 0.8
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, -2:] = True
    want = mha(q, k, k, attn_mask=mask, key_padding_mask=pad)
    got = slim(q, k, k, attn_mask=mask, key_padding_mask=pad)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-4)


class SqueezeTail(nn.Module):
    """A classifier that ends in a conv (SqueezeNet): the last conv's outputs are model outputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3)
        self.cls = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.cls(torch.relu(self.a(x)))), 1), 1)


def test_classifier_conv_outputs_are_never_pruned():
    a, _, gm, _ = check_exact(SqueezeTail(), torch.randn(1, 3, 6, 6))
    assert not group(a, "cls").prunable and gm.cls.out_channels == 10 and gm.cls.in_channels == 8
    assert "model output" in group(a, "cls").reasons[0]


class LayerScale(nn.Module):
    """Parameters read through get_attr (ConvNeXt's layer scale, ViT's class token) are cut too."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(1, 16, 1, 1))
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.out(self.a(x) * self.scale + self.shift)


def test_get_attr_parameters_are_cut():
    a, _, gm, _ = check_exact(LayerScale(), torch.randn(1, 3, 4, 4))
    assert gm.scale.shape == (8, 1, 1) and gm.shift.shape == (1, 8, 1, 1) and isinstance(gm.scale, nn.Parameter)
