"""`fuse-bn-conv` (bn -> conv/linear) and fuse-bn's linear+bn on [N, C]: structure and numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimc.passes.pipeline import Pipeline
from support import assert_outputs_close, bn_modules, fresh_inputs, n_params, program_of, randomize_bn


def _run(text, module, *inputs):
    program = program_of(randomize_bn(module), *inputs)
    result = Pipeline.parse(text).passes[0].apply(program)
    return program, result


def _same_outputs(program, result, rel=1e-5):
    x = fresh_inputs(program)
    assert_outputs_close(program.run(x), result.program.run(x), rel=rel)


class PreAct(nn.Module):
    """bn -> conv without padding (folds), bn -> grouped 1x1 conv (folds), bn -> reflect-padded conv (folds)."""

    def __init__(self):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1, groups=2, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.conv3(self.bn3(self.conv2(self.bn2(self.conv1(self.bn1(x))))))


def test_bn_before_conv_folds_into_the_conv():
    program, result = _run("fuse-bn-conv", PreAct(), torch.randn(2, 4, 9, 9))
    assert result.changed and result.details["fused"] == 3
    assert bn_modules(result.program.ir) == []
    assert result.program.ir.conv2.bias is not None  # the BN shift became a bias
    assert n_params(result.program.ir) == n_params(program.ir) - 2 * (4 + 8 + 8) + 8  # BN gone, one new bias
    _same_outputs(program, result)


def test_input_program_is_not_mutated():
    program, result = _run("fuse-bn-conv", PreAct(), torch.randn(2, 4, 9, 9))
    assert len(bn_modules(program.ir)) == 3
    assert result.program.ir.conv1 is not program.ir.conv1


class ZeroPadded(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_zero_padded_conv_is_rejected_with_the_reason():
    program, result = _run("fuse-bn-conv", ZeroPadded(), torch.randn(1, 3, 6, 6))
    assert not result.changed
    (reason,) = result.details["rejected"]
    assert "zero-pads" in reason and result.details["rejected"][reason] == ["bn -> conv"]


class BNLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn, self.fc = nn.BatchNorm1d(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.bn(x))


def test_bn_before_linear_folds_on_2d_inputs():
    program, result = _run("fuse-bn-conv", BNLinear(), torch.randn(4, 6))
    assert result.details["fused"] == 1 and bn_modules(result.program.ir) == []
    _same_outputs(program, result)


class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(6, 5), nn.BatchNorm1d(5)

    def forward(self, x):
        return torch.relu(self.bn(self.fc(x)))


class LinearBN3d(LinearBN):
    def forward(self, x):  # BatchNorm1d on [N, C, L] normalises dim 1, which is not the linear's features
        return self.bn(self.fc(x).transpose(1, 2))


@pytest.mark.parametrize("module, shape, fuses", [(LinearBN, (4, 6), True), (LinearBN3d, (2, 5, 6), False)])
def test_fuse_bn_linear_then_bn_only_on_2d(module, shape, fuses):
    """fuse-bn (the other order) already folds Linear -> BatchNorm1d on [N, C]; checked here."""
    program, result = _run("fuse-bn", module(), torch.randn(*shape))
    assert result.changed is fuses
    if fuses:
        assert bn_modules(result.program.ir) == []
        _same_outputs(program, result)
