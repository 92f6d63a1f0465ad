"""prune-channels on parameters the input reads only in part, and on empty tensors.

Swin3D at a clip shorter than its window gathers only some rows of its relative-position bias table
(`table[index[:n, :n]]`): the unread rows are tied to nothing, so cutting a head must take them along with
the read ones (before, the cut refused: "positions that do not form whole slices"). Its padding also makes
zero-width slices, whose labels are empty. Exactness as in test_prune_aten.py: the removed channels are
first zeroed in the original, and the pruned module must reproduce the zeroed original.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from slimc.ir.program import Program
from slimc.passes.fx.prune import choose_removals, unit_scores
from slimc.passes.fx.prune.aten_graph import analyze_module
from slimc.passes.fx.prune.labels import rows
from slimc.passes.fx.prune.module_cut import cut_module
from slimc.passes.fx.prune.shrink import _cut_param
from slimc.passes.fx.prune_channels import PruneChannels
from support import zero_removed_channels


class PartialTableAttention(nn.Module):
    """Attention with a relative-position bias table sized for `window` tokens; n < window tokens read
    only the rows of offsets -(n-1)..n-1. The head count is read from the table, so it follows a cut."""

    def __init__(self, dim=32, heads=4, window=8):
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.table = nn.Parameter(torch.randn(2 * window - 1, heads))
        pos = torch.arange(window)
        self.register_buffer("index", pos[:, None] - pos[None, :] + window - 1)

    def forward(self, x):
        b, n, _ = x.shape
        h = self.table.shape[1]
        q, k, v = (f(x).view(b, n, h, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        bias = self.table[self.index[:n, :n].reshape(-1)].view(n, n, h).permute(2, 0, 1)
        attn = (q @ k.transpose(-2, -1) + bias).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_a_partly_read_bias_table_loses_whole_head_columns_and_the_cut_is_exact():
    torch.manual_seed(0)
    model, x = PartialTableAttention().eval(), torch.randn(2, 4, 32)
    analysis = analyze_module(model, (x,))
    scores, _ = unit_scores(analysis, "random", seed=0)
    removed = choose_removals(analysis.groups, scores, 0.5, "local", 1, 1)
    zero_removed_channels(analysis, removed)
    with torch.no_grad():
        want = model(x)
    cut_module(analysis, removed)
    # two of four heads go: every q/k/v row of theirs, their table column (read rows and unread rows alike)
    assert model.table.shape == (15, 2)
    assert model.q.out_features == model.k.out_features == model.v.out_features == model.proj.in_features == 16
    assert model.proj.out_features == 32  # the output keeps its width
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # fresh inputs, and a shorter sequence that reads still fewer rows
        model(torch.randn(3, 4, 32)), model(torch.randn(1, 2, 32))


def test_through_the_pass_the_table_follows_the_heads():
    torch.manual_seed(0)
    model, x = PartialTableAttention().eval(), torch.randn(1, 4, 32)
    program = Program(model, (x,), ("input",), ("output",), original=model)
    result = PruneChannels(ratio=0.5, criterion="l2", round_to=1, min_channels=1).apply(program)
    pruned = result.program.ir
    assert pruned.table.shape == (15, 2) and pruned.q.out_features == 16
    assert result.details["layer_macs_after"] < 0.6 * result.details["layer_macs_before"]
    assert pruned(x).shape == (1, 4, 32)


def test_cut_param_drops_free_positions_with_their_slice_but_refuses_a_partial_cut_of_used_ones():
    t = torch.arange(12.0).view(4, 3)
    removed = torch.zeros(4, 3, dtype=torch.bool)
    removed[1:3, 0] = True  # column 0: rows 1, 2 removed; rows 0 and 3 are read by nothing
    free = torch.zeros(4, 3, dtype=torch.bool)
    free[[0, 3], :] = True
    torch.testing.assert_close(_cut_param(t, removed, "t", free), t[:, 1:])
    with pytest.raises(RuntimeError, match="whole slices"):
        _cut_param(t, removed, "t")  # without knowing rows 0 and 3 are free, column 0 is not whole
    free[0, 0] = False  # row 0 of column 0 is read by something that stays: no whole slice
    with pytest.raises(RuntimeError, match="whole slices"):
        _cut_param(t, removed, "t", free)


def test_an_empty_label_has_no_rows_that_vary():
    empty = torch.zeros(1, 0, 4, dtype=torch.long)
    assert rows(empty, 2).shape == (4, 1) and bool((rows(empty, 2) == -1).all())
    assert rows(empty, 1).shape == (0, 1)


def test_zero_width_slices_do_not_stop_the_analysis():
    class PadsNothing(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            h = self.a(x)
            tail = h[:, :, x.shape[2]:][..., :3]  # zero rows, then sliced again (as Swin3D's padding makes)
            return self.b(torch.cat([h[..., :3], tail], 2))

    model, x = PadsNothing().eval(), torch.randn(1, 3, 6, 6)
    program = Program(copy.deepcopy(model), (x,), ("input",), ("output",), original=model)
    result = PruneChannels(ratio=0.5, round_to=1, min_channels=1).apply(program)
    assert result.program.ir.a.out_channels == 8 == result.program.ir.b.in_channels
    assert result.program.ir(x).shape == (1, 4, 6, 3)
