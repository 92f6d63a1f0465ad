"""fuse-bn: BatchNorm folded into the conv/linear before it; structure and numbers checked for every producer kind."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimc.passes.fx.fuse_bn import FuseBN
from support import aten_ops, assert_outputs_close, bn_modules, fresh_inputs, n_params, program_of, randomize_bn


class ProducerBN(nn.Module):
    def __init__(self, producer: nn.Module, bn: nn.Module):
        super().__init__()
        self.producer = producer
        self.bn = bn

    def forward(self, x):
        return torch.relu(self.bn(self.producer(x)))


CASES = {
    # id: (producer factory(bias), BatchNorm factory, input shape)
    "conv1d": (lambda b: nn.Conv1d(4, 6, 3, bias=b), lambda: nn.BatchNorm1d(6), (2, 4, 9)),
    "conv2d": (lambda b: nn.Conv2d(3, 6, 3, bias=b), lambda: nn.BatchNorm2d(6), (2, 3, 7, 7)),
    "conv2d-grouped": (lambda b: nn.Conv2d(4, 6, 3, groups=2, bias=b), lambda: nn.BatchNorm2d(6), (2, 4, 7, 7)),
    "conv2d-depthwise": (lambda b: nn.Conv2d(6, 6, 3, groups=6, padding=1, bias=b), lambda: nn.BatchNorm2d(6), (2, 6, 5, 5)),
    "conv3d": (lambda b: nn.Conv3d(2, 4, 3, bias=b), lambda: nn.BatchNorm3d(4), (1, 2, 5, 5, 5)),
    "convtranspose1d": (lambda b: nn.ConvTranspose1d(4, 6, 3, stride=2, bias=b), lambda: nn.BatchNorm1d(6), (2, 4, 5)),
    "convtranspose2d": (lambda b: nn.ConvTranspose2d(3, 6, 3, stride=2, bias=b), lambda: nn.BatchNorm2d(6), (2, 3, 5, 5)),
    "convtranspose2d-grouped": (lambda b: nn.ConvTranspose2d(4, 6, 3, groups=2, bias=b), lambda: nn.BatchNorm2d(6),
                                (2, 4, 5, 5)),
    "convtranspose2d-depthwise": (lambda b: nn.ConvTranspose2d(6, 6, 3, groups=6, bias=b), lambda: nn.BatchNorm2d(6),
                                  (2, 6, 5, 5)),
    "linear-bn1d": (lambda b: nn.Linear(5, 7, bias=b), lambda: nn.BatchNorm1d(7), (3, 5)),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", list(CASES))
def test_fuses_every_producer_kind(case, bias):
    make, make_bn, shape = CASES[case]
    torch.manual_seed(0)
    bn = make_bn()
    model = randomize_bn(ProducerBN(make(bias), bn))
    program = program_of(model, torch.randn(shape))
    producer = model.producer
    before = n_params(program.ir)

    result = FuseBN().apply(program)

    # structure: BN module and node gone, producer keeps its weight shape and gains a bias if it had none
    gm = result.program.ir
    assert result.changed and result.details["fused"] == 1
    assert bn_modules(gm) == []
    # the IR is still the user's own class; its exported graph has no batch_norm left
    assert type(gm) is ProducerBN and isinstance(gm.bn, nn.Identity)
    assert aten_ops(result.program).get("batch_norm", 0) == 0
    assert aten_ops(program)["batch_norm"] == 1
    fused = gm.get_submodule("producer")
    assert type(fused) is type(producer)
    assert fused.weight.shape == producer.weight.shape
    assert fused.bias is not None and fused.bias.shape == (bn.num_features,)
    added_bias = 0 if bias else bn.num_features
    assert n_params(gm) == before - 2 * bn.num_features + added_bias
    # the fused model stays trainable (the FX level is what users fine-tune)
    assert all(p.requires_grad for p in gm.parameters())
    # numbers: fresh random inputs, against the unrewritten program
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)
    # the input program is untouched
    assert bn_modules(program.ir) == ["bn"]


def test_tiny_cnn_all_bns_fused(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    result = FuseBN().apply(program)
    gm = result.program.ir
    assert bn_modules(gm) == []
    assert result.details["fused"] == 2
    assert sorted(result.details["pairs"]) == ["bn1 -> conv1", "bn2 -> conv2"]
    # bn1 + bn2 lose 2x8 each; conv1 (bias=False) gains an 8-element bias
    assert n_params(gm) == n_params(program.ir) - 32 + 8
    for seed in (11, 12):
        xs = program.random_inputs(seed=seed, batch=3)
        assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)


def test_bn_without_affine_is_fused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4, affine=False)
            self.fc = nn.Linear(4, 5)
            self.bn2 = nn.BatchNorm1d(5, affine=False)

        def forward(self, x):
            x = self.bn(self.conv(x)).mean((2, 3))
            return self.bn2(self.fc(x))

    torch.manual_seed(0)
    model = randomize_bn(M())
    program = program_of(model, torch.randn(2, 3, 6, 6))
    result = FuseBN().apply(program)
    assert result.details["fused"] == 2
    assert bn_modules(result.program.ir) == []
    assert n_params(result.program.ir) == n_params(model)  # affine=False BNs hold no parameters
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)


def test_conv_with_two_users_is_not_fused():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding BN into conv would change the second use

    model = randomize_bn(TwoUsers())
    program = program_of(model, torch.randn(1, 3, 6, 6))
    result = FuseBN().apply(program)
    assert not result.changed
    assert result.details["fused"] == 0
    assert bn_modules(result.program.ir) == ["bn"]
    assert n_params(result.program.ir) == n_params(model)
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=0)


def test_conv_module_called_twice_keeps_its_other_call_correct():
    """One conv module at two call sites, a BN after only one: folding into the shared module would
    rescale the other call too."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x * 2)

    model = randomize_bn(Shared())
    program = program_of(model, torch.randn(1, 3, 6, 6))
    result = FuseBN().apply(program)
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)
    assert bn_modules(result.program.ir) == ["bn"]  # nothing may be folded here


def test_linear_on_3d_input_is_not_fused():
    """BatchNorm1d on [N, L, C] normalises dim 1 (L), not the linear layer's features: no fusion."""

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(5)

        def forward(self, x):
            return self.bn(self.fc(x))

    model = randomize_bn(Seq())
    program = program_of(model, torch.randn(2, 5, 4))
    result = FuseBN().apply(program)
    assert not result.changed
    assert bn_modules(result.program.ir) == ["bn"]
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=0)


def test_batch_statistics_bn_is_not_fused():
    class NoStats(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4, track_running_stats=False)

        def forward(self, x):
            return self.bn(self.conv(x))

    program = program_of(NoStats().eval(), torch.randn(2, 3, 6, 6))
    result = FuseBN().apply(program)
    assert not result.changed
    assert bn_modules(result.program.ir) == ["bn"]


def test_fuse_bn_is_fx_level_lossless_and_optionless():
    assert FuseBN.name == "fuse-bn" and FuseBN.level == "fx" and FuseBN.lossless
    assert FuseBN().print() == "fuse-bn"
    assert FuseBN().options() == {}
