"""prune-channels keeps the size attributes a plain module's forward reads in step with its cut
parameters (slimc/passes/fx/prune/module_attrs.py): timm-style attention (`num_heads`, `attn_dim`),
split-by-list (MixedConv2d's `splits`), split-by-attribute (CrossStage's `expand_chs // 2`).

Numbers: the channels chosen for removal are first zeroed in the original, so the pruned model must
reproduce the zeroed original exactly; structure: heads, widths and attributes after the cut.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimc.ir.program import Program
from slimc.passes.fx.prune import choose_removals, unit_scores
from slimc.passes.fx.prune.aten_graph import analyze_module
from slimc.passes.fx.prune.module_attrs import update_module_attributes
from slimc.passes.fx.prune.module_cut import cut_module
from slimc.passes.fx.prune_channels import PruneChannels
from support import zero_removed_channels


# ---- modules shaped like timm's -------------------------------------------------------------

class TimmStyleAttention(nn.Module):
    """timm.layers.Attention's forward: sizes come from self.num_heads, self.head_dim, self.attn_dim."""

    def __init__(self, dim=32, num_heads=4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, self.attn_dim * 3)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))


class TinyViT(nn.Module):
    def __init__(self, dim=32, num_heads=4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = TimmStyleAttention(dim, num_heads)
        self.fc1, self.fc2 = nn.Linear(dim, 64), nn.Linear(64, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


class LevitStyleAttention(nn.Module):
    """LeViT's attention: per head [q | k | v] split by `key_dim`, `val_dim`; here num_heads == key_dim."""

    def __init__(self, dim=16, num_heads=4, key_dim=4, val_dim=8):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, val_dim
        self.val_attn_dim = num_heads * val_dim
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + val_dim))
        self.proj = nn.Linear(self.val_attn_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = (q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1)).softmax(-1)
        return self.proj((attn @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(B, N, self.val_attn_dim))


class TinyLevit(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = LevitStyleAttention()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head((x + self.attn(x)).mean(1))


class MixedConv(nn.Module):
    """timm's MixedConv2d: the input is split by the list attribute `splits`, one conv per piece."""

    def __init__(self, splits=(10, 6), out=(8, 8)):
        super().__init__()
        self.splits = list(splits)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 2 * n + 3, padding=n + 1) for n, (i, o) in enumerate(zip(splits, out)))

    def forward(self, x):
        return torch.cat([c(p) for c, p in zip(self.convs, torch.split(x, self.splits, 1))], 1)


class MixNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mixed = MixedConv()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.mixed(F.relu(self.stem(x))).mean((2, 3)))


class CrossStage(nn.Module):
    """timm's CrossStage: the expanded tensor is split at `self.expand_chs // 2`."""

    def __init__(self, in_chs=8, expand_chs=32):
        super().__init__()
        self.expand_chs = expand_chs
        self.conv_exp = nn.Conv2d(in_chs, expand_chs, 1)
        self.block = nn.Conv2d(expand_chs // 2, expand_chs // 2, 3, padding=1)
        self.conv_transition = nn.Conv2d(expand_chs, in_chs, 1)

    def forward(self, x):
        xs, xb = F.relu(self.conv_exp(x)).split(self.expand_chs // 2, dim=1)
        return self.conv_transition(torch.cat([xs, F.relu(self.block(xb))], 1))


class CspLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = CrossStage()
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.stage(F.relu(self.stem(x))).mean((2, 3)))


# ---- helpers ---------------------------------------------------------------------------------

def cut_exactly(model: nn.Module, x: torch.Tensor, seed=0):
    """Cut random units of every group at ratio 0.5 from a copy; it must equal the zeroed original."""
    model = copy.deepcopy(model).eval()
    analysis = analyze_module(model, (x,))
    scores, _ = unit_scores(analysis, "random", seed=seed)
    removed = choose_removals(analysis.groups, scores, 0.5, "local", 1, 1)
    assert removed
    zero_removed_channels(analysis, removed)
    before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        want = model(x)
    cut_module(analysis, removed)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in model.parameters()) < before
    return model, analysis


def prune(model, x, **options):
    program = Program(model.eval(), (x,), ("input",), ("output",), original=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PruneChannels(**{"ratio": 0.5, "round_to": 1, "min_channels": 1, **options}).apply(program)


def ort_output(model, x):
    import onnxruntime as ort

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


def kept_whole(result) -> list[str]:
    return [n for n in result.details.get("notes", []) if "kept whole" in n]


# ---- timm-style attention --------------------------------------------------------------------

def test_attention_heads_and_attn_dim_follow_the_cut_exactly():
    torch.manual_seed(0)
    model, analysis = cut_exactly(TinyViT(), torch.randn(2, 6, 32))
    attn = model.attn
    assert attn.head_dim == 8 and attn.num_heads < 4  # whole heads go; the head width stays
    assert attn.attn_dim == attn.num_heads * attn.head_dim == attn.proj.in_features
    assert attn.qkv.out_features == 3 * attn.attn_dim
    assert any(c.startswith("attn.num_heads 4 ->") for c in analysis.attribute_changes)


def test_attention_prunes_two_of_four_heads_and_runs_in_onnx_runtime():
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(1, 6, 32)
    result = prune(model, x)
    pruned = result.program.ir
    assert kept_whole(result) == []
    assert (pruned.attn.num_heads, pruned.attn.head_dim, pruned.attn.attn_dim) == (2, 8, 16)
    assert tuple(pruned.attn.qkv.weight.shape) == (48, 32) and tuple(pruned.attn.proj.weight.shape) == (32, 16)
    assert model.attn.num_heads == 4 and model.attn.attn_dim == 32  # the user's model is untouched
    with torch.no_grad():
        got = pruned(x)
    assert got.shape == model(x).shape
    torch.testing.assert_close(ort_output(pruned, x), got, atol=1e-4, rtol=1e-3)


def test_per_head_widths_stay_when_heads_go_exactly():
    """key_dim equals the head count (4): only num_heads and the total value width follow the cut."""
    torch.manual_seed(0)
    model, _ = cut_exactly(TinyLevit(), torch.randn(2, 5, 16))
    attn = model.attn
    assert attn.num_heads < 4 and (attn.key_dim, attn.val_dim) == (4, 8)
    assert attn.val_attn_dim == attn.num_heads * attn.val_dim == attn.proj.in_features
    assert attn.qkv.out_features == attn.num_heads * 16


# ---- splits by a list attribute and by a width attribute ----------------------------------------

def test_split_list_attribute_follows_each_piece_exactly():
    torch.manual_seed(0)
    model, _ = cut_exactly(MixNetLike(), torch.randn(1, 3, 12, 12))
    mixed = model.mixed
    assert mixed.splits == [c.in_channels for c in mixed.convs]
    assert sum(mixed.splits) == model.stem.out_channels < 16


def test_mixed_conv_prunes_through_the_pass():
    torch.manual_seed(0)
    model, x = MixNetLike().eval(), torch.randn(1, 3, 12, 12)
    result = prune(model, x)
    pruned = result.program.ir
    assert kept_whole(result) == []
    assert pruned.mixed.splits == [c.in_channels for c in pruned.mixed.convs] and sum(pruned.mixed.splits) == 8
    assert model.mixed.splits == [10, 6]
    with torch.no_grad():
        got = pruned(x)
    torch.testing.assert_close(ort_output(pruned, x), got, atol=1e-4, rtol=1e-3)


def test_split_at_half_of_a_width_attribute_follows_exactly():
    torch.manual_seed(0)
    model, _ = cut_exactly(CspLike(), torch.randn(1, 3, 8, 8))
    stage = model.stage
    assert stage.expand_chs == stage.conv_exp.out_channels < 32
    assert stage.block.in_channels == stage.expand_chs // 2


def test_cross_stage_prunes_through_the_pass():
    model, x = CspLike().eval(), torch.randn(1, 3, 8, 8)
    result = prune(model, x)
    assert kept_whole(result) == [] and result.program.ir.stage.expand_chs == 16
    assert result.details["layer_macs_after"] < 0.4 * result.details["layer_macs_before"]


class LayerScale2d(nn.Module):
    """timm MetaFormer's layer scale: the parameter is viewed to the tuple attribute `shape`."""

    def __init__(self, dim):
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return x * self.scale.view(self.shape)


class PoolFormerLike(nn.Module):
    """GroupNorm with one group (timm's GroupNorm1) over a residual stream, scaled by LayerScale2d."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.GroupNorm(1, 16)
        self.mlp = nn.Sequential(nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1))
        self.scale = LayerScale2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.scale(self.mlp(self.norm(x)))
        return self.head(x.mean((2, 3)))


def test_one_group_norm_and_a_shape_attribute_follow_the_residual_cut():
    torch.manual_seed(0)
    model, x = PoolFormerLike().eval(), torch.randn(1, 3, 8, 8)
    result = prune(model, x)
    pruned = result.program.ir
    assert kept_whole(result) == []
    assert pruned.stem.out_channels == 8 and pruned.norm.num_groups == 1 and pruned.norm.num_channels == 8
    assert pruned.scale.shape == (8, 1, 1) and pruned.mlp[0].out_channels == 16
    with torch.no_grad():
        got = pruned(x)
    torch.testing.assert_close(ort_output(pruned, x), got, atol=1e-4, rtol=1e-3)


def test_layer_scale_shape_follows_exactly():
    """GroupNorm(1) statistics change with the cut (as layer_norm's do), so exactness uses a plain residual."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), LayerScale2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    model, _ = cut_exactly(model, torch.randn(1, 3, 6, 6))
    assert model[1].shape == (model[0].out_channels, 1, 1) and model[0].out_channels < 16


class ChunkScales(nn.Module):
    """EdgeNeXt's SplitTransposeBlock: x.chunk(3) of 22 channels gives 8, 8, 6; at run time the pieces
    are sized from the new total, so all three must lose the same positions."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 22, 1)
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1, groups=8) for _ in range(2))
        self.head = nn.Conv2d(22, 4, 1)

    def forward(self, x):
        spx = self.stem(x).chunk(3, dim=1)
        sp = self.convs[0](spx[0])
        out = [sp, self.convs[1](sp + spx[1]), spx[2]]
        return self.head(torch.cat(out, 1))


def test_chunk_with_a_shorter_last_piece_prunes_exactly():
    torch.manual_seed(0)
    model, _ = cut_exactly(ChunkScales(), torch.randn(1, 3, 6, 6))
    width = model.stem.out_channels
    assert width < 22 and model.convs[0].in_channels == -(-width // 3)  # chunk's ceil(C / 3)


# ---- the attribute rule itself ---------------------------------------------------------------

class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.dim, self.hidden_chs, self.kernel_size, self.num_heads = 8, 8, 8, 2
        self.attention_bias_cache = {"cpu": torch.zeros(1)}


def test_attributes_follow_agreeing_evidence_only():
    root = Holder()
    old = {"a.weight": (8, 8), "a.bias": (8,)}
    root.a.weight = nn.Parameter(torch.zeros(4, 8))
    root.a.bias = nn.Parameter(torch.zeros(4))
    # a's rows went 8 -> 4 but its columns and all of b stayed 8: which width `dim` means is unclear.
    changes = update_module_attributes(root, [], old)
    assert (root.dim, root.hidden_chs) == (8, 8)
    assert root.attention_bias_cache == {} and "<root>.attention_bias_cache cleared" in changes
    # A reshape in this module's own forward spelled 8 and now spells 4: strong evidence wins.
    changes = update_module_attributes(root, [("", 8, 4), ("", 2, 1)], old)
    assert (root.dim, root.hidden_chs, root.num_heads) == (4, 4, 1)
    assert root.kernel_size == 8  # geometry is never touched
    assert "<root>.dim 8 -> 4" in changes


def test_per_head_width_names_never_change():
    root = Holder()
    root.num_heads = root.key_dim = root.head_dim = 16
    update_module_attributes(root, [("", 16, 8)], {})
    assert (root.num_heads, root.key_dim, root.head_dim) == (8, 16, 16)


def test_in_and_out_names_match_only_their_side_of_the_weights():
    """GhostNet's GhostModule: out_chs is the width of a concat that equals the input width; only the
    input axis of its conv shrank, so out_chs stays while in_chs follows."""
    root = Holder()
    root.in_chs = root.out_chs = 16
    root.a = nn.Linear(16, 8)
    old = {"a.weight": (8, 16)}
    root.a.weight = nn.Parameter(torch.zeros(8, 12))
    update_module_attributes(root, [], old)
    assert (root.in_chs, root.out_chs) == (12, 16)


def test_conflicting_literals_leave_the_attribute_alone():
    root = Holder()
    update_module_attributes(root, [("", 8, 4), ("", 8, 6)], {})
    assert root.dim == 8


# ---- real timm models (small inputs) ---------------------------------------------------------

def _timm(name, **kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def test_timm_vit_prunes_heads_through_compile_and_onnx_runtime():
    import slimc

    model, x = _timm("vit_tiny_patch16_224", img_size=32, depth=2), torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = slimc.compile(model, x, pipeline="prune-channels{ratio=0.5},to-onnx", backend="onnxruntime",
                          fidelity_samples=0)
    details = r.report["passes"][0]["details"]
    assert not [n for n in details.get("notes", []) if "kept whole" in n]
    assert details["layer_macs_after"] < 0.45 * details["layer_macs_before"]
    attn = r.module.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (2, 64, 128) and attn.proj.in_features == 128
    assert any(line.startswith("blocks.0.attn.num_heads") for line in details["attributes_changed"])
    assert r.artifact.run([x.numpy()])[0].shape == (1, 1000)


def test_timm_cspresnet50_prunes_whole():
    model, x = _timm("cspresnet50"), torch.randn(1, 3, 32, 32)
    result = prune(model, x, round_to=8, min_channels=8)
    assert kept_whole(result) == []
    assert result.details["layer_macs_after"] < 0.4 * result.details["layer_macs_before"]
    stage = result.program.ir.stages[0]
    assert stage.expand_chs == stage.conv_exp.conv.out_channels < model.stages[0].expand_chs
    with torch.no_grad():
        assert result.program.ir(x).shape == model(x).shape == (1, 1000)


def test_timm_mixed_conv2d_depthwise_prunes_exactly():
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 1), nn.ReLU(),
                          layers.MixedConv2d(24, 24, kernel_size=[3, 5, 7], depthwise=True),
                          nn.ReLU(), nn.Conv2d(24, 8, 1))
    model, _ = cut_exactly(model, torch.randn(1, 3, 10, 10))
    mixed = model[2]
    assert mixed.splits == [c.in_channels for c in mixed.values()] and sum(mixed.splits) < 24
    assert all(c.groups == c.in_channels == c.out_channels for c in mixed.values())
