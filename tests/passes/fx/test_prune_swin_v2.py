"""prune-channels on torchvision's Swin Transformer V2 (ShiftedWindowAttentionV2): cosine attention
(F.normalize's linalg_vector_norm per head), the k bias zeroed through `qkv_bias[length:2 * length]`
with `length = numel() // 3`, `logit_scale` and cpb_mlp's output one per head. Heads are cut whole;
`shifted_window_attention` sizes a head as `C // num_heads` from its input's width, so heads and the
residual width must shrink alike (ratio 0.5 with round-to 8 does).

Numbers: removed channels first zeroed in the original, so the pruned block must reproduce it exactly;
the whole model through slimc.compile must run, keep its output shape and match its ONNX artifact.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

tv_swin = pytest.importorskip("torchvision.models.swin_transformer")

from slimc.passes.fx.prune import choose_removals, unit_scores  # noqa: E402
from slimc.passes.fx.prune.aten_graph import analyze_module  # noqa: E402
from slimc.passes.fx.prune.module_cut import cut_module  # noqa: E402
from support import zero_removed_channels  # noqa: E402


class AttentionV2Residual(nn.Module):
    """stem -> x + ShiftedWindowAttentionV2(x) -> head: no LayerNorm, so zeroed channels change nothing."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.stem = nn.Linear(8, dim)
        self.attn = tv_swin.ShiftedWindowAttentionV2(dim, [4, 4], [2, 2], heads)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.attn(x)).mean((1, 2)))


def _tiny_swin_v2():
    return tv_swin.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[4, 8],
                                   window_size=[4, 4], num_classes=10, block=tv_swin.SwinTransformerBlockV2,
                                   downsample_layer=tv_swin.PatchMergingV2).eval()


def test_attention_v2_heads_cut_exactly():
    torch.manual_seed(0)
    model, x = AttentionV2Residual().eval(), torch.randn(2, 8, 8, 8)
    with torch.no_grad():  # per-head scales that differ
        model.attn.logit_scale.uniform_(0.5, 3.0)
    analysis = analyze_module(model, (x,))
    heads = [g for g in analysis.groups if g.name == "attn.cpb_mlp.2"]
    assert len(heads) == 1 and heads[0].prunable and heads[0].size == 4, [(g.name, g.reasons) for g in analysis.groups]
    assert heads[0].width == 3 * 8  # a head is q, k and v of qkv (its widest producer), not cpb_mlp's one output
    scores, _ = unit_scores(analysis, "random", seed=1)
    removed = choose_removals(analysis.groups, scores, 0.5, "local", 1, 1)
    zero_removed_channels(analysis, removed)  # qkv.bias reaches linear through a clone: zeroed by its label
    with torch.no_grad():
        want = model(x)
    dense = copy.deepcopy(model)
    cut_module(analysis, removed)
    attn = model.attn
    assert attn.num_heads == 2 and attn.logit_scale.shape == (2, 1, 1)
    assert attn.cpb_mlp[2].out_features == 2 and attn.qkv.out_features == 3 * 16 and model.stem.out_features == 16
    assert attn.proj.in_features == attn.proj.out_features == 16
    with torch.no_grad():
        got = model(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        other = torch.randn_like(x)
        torch.testing.assert_close(model(other), dense(other), atol=1e-5, rtol=1e-4)


def test_tiny_swin_v2_prunes_through_compile():
    import slimc

    torch.manual_seed(0)
    model, x = _tiny_swin_v2(), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        dense_out = model(x)
    dense_params = sum(p.numel() for p in model.parameters())
    # Default round-to 8 / min-channels 8: counted on cpb_mlp's one channel per head, 4 heads would stay.
    result = slimc.compile(model, x, pipeline="prune-channels{ratio=0.5},to-onnx", backend="onnxruntime")
    details = next(r for r in result.report["passes"] if "prune-channels" in str(r.get("name")))["details"]
    assert "warning" not in details and not any("kept whole" in n for n in details.get("notes", []))
    assert {"features.1.0.attn.num_heads 4 -> 2", "features.3.1.attn.num_heads 8 -> 4"} <= set(
        details["attributes_changed"])
    pruned = result.module
    for stage, heads in ((1, 2), (3, 4)):
        for blk in pruned.features[stage]:
            assert blk.attn.num_heads == heads and blk.attn.logit_scale.shape == (heads, 1, 1)
            assert blk.attn.cpb_mlp[2].out_features == heads
            assert blk.attn.qkv.out_features == 3 * blk.attn.qkv.in_features  # head width kept: C // num_heads
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * dense_params
    fresh = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = pruned(fresh)
    assert out.shape == (2, 10) and dense_out.shape == (1, 10) and torch.isfinite(out).all()
    got = torch.from_numpy(result.artifact.run([fresh[:1].numpy()])[0])  # the artifact's batch is the example's
    torch.testing.assert_close(got, out[:1], atol=1e-4, rtol=1e-3)
