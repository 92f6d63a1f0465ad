"""Handlers of the layers that own channels: conv, linear, norms, PReLU, embedding, shuffle.

Each names its parameter axes (slots), gives the weights behind them for importance, and
cuts itself to the kept indices.
"""

from __future__ import annotations

import torch.nn as nn

from .handlers import ApplyToLabels, Channelwise, Handler, Opaque, Pointwise, register_builtin
from .handlers import param_slice as _param
from .labels import channel_label, rows

__all__ = ["ConvHandler", "ConvTransposeHandler", "LinearHandler", "NormHandler", "LayerNormHandler",
           "GroupNormHandler", "PReLUHandler", "EmbeddingHandler", "ChannelShuffleHandler"]


class ConvHandler(Handler):
    """Conv1d/2d/3d. Grouped convs couple input block g with output block g (depthwise: 1:1),
    so whole groups are removed and the group count shrinks; the per-group widths stay."""

    def propagate(self, ctx):
        m, t = ctx.module, ctx.tracker
        rep = t.slot(ctx.name, "in", ctx.input_label(0), 1, f"{ctx.describe()} reads its input channels")
        out = t.fresh(m.out_channels)
        if m.groups > 1:
            g = m.groups
            blocks_in, blocks_out = rep.view(g, -1), out.view(g, -1)
            why = f"grouped conv {ctx.describe()} ties input and output channels of each group"
            t.union(blocks_out, blocks_out[:, :1], why)
            t.union(blocks_in, blocks_out[:, :1], why)
        t.produce(ctx.name, "out", out)
        return channel_label(out, ctx.out.shape, 1)

    def weights(self, module, slot):
        if slot == "out":
            return [(module.weight, 0)] + ([(module.bias, 0)] if module.bias is not None else [])
        return [(module.weight, 1)] if module.groups == 1 else []

    def shrink(self, module, keep):
        ki, ko = keep["in"], keep["out"]
        w = _param(module.weight, ko, 0)
        if module.groups == 1:
            w = _param(w, ki, 1)
        else:
            per_in = module.in_channels // module.groups
            module.groups = ki.numel() // per_in
        module.weight = w
        module.bias = _param(module.bias, ko, 0)
        module.in_channels, module.out_channels = ki.numel(), ko.numel()


class ConvTransposeHandler(Handler):
    """ConvTranspose (groups=1): weight is (in, out, k...)."""

    def propagate(self, ctx):
        m, t = ctx.module, ctx.tracker
        if m.groups != 1:
            return Opaque("grouped transposed convs are not pruned").propagate(ctx)
        t.slot(ctx.name, "in", ctx.input_label(0), 1, f"{ctx.describe()} reads its input channels")
        out = t.fresh(m.out_channels)
        t.produce(ctx.name, "out", out)
        return channel_label(out, ctx.out.shape, 1)

    def weights(self, module, slot):
        if slot == "out":
            return [(module.weight, 1)] + ([(module.bias, 0)] if module.bias is not None else [])
        return [(module.weight, 0)]

    def shrink(self, module, keep):
        ki, ko = keep["in"], keep["out"]
        module.weight = _param(_param(module.weight, ki, 0), ko, 1)
        module.bias = _param(module.bias, ko, 0)
        module.in_channels, module.out_channels = ki.numel(), ko.numel()


class LinearHandler(Handler):
    """Linear: input features on the last axis (after a flatten a channel is a block of them)."""

    def propagate(self, ctx):
        m, t = ctx.module, ctx.tracker
        t.slot(ctx.name, "in", ctx.input_label(0), -1, f"{ctx.describe()} reads its input features")
        out = t.fresh(m.out_features)
        t.produce(ctx.name, "out", out)
        return channel_label(out, ctx.out.shape, -1)

    def weights(self, module, slot):
        if slot == "out":
            return [(module.weight, 0)] + ([(module.bias, 0)] if module.bias is not None else [])
        return [(module.weight, 1)]

    def shrink(self, module, keep):
        ki, ko = keep["in"], keep["out"]
        module.weight = _param(_param(module.weight, ko, 0), ki, 1)
        module.bias = _param(module.bias, ko, 0)
        module.in_features, module.out_features = ki.numel(), ko.numel()


class NormHandler(Handler):
    """BatchNorm / InstanceNorm: per-channel parameters and statistics on axis 1."""

    def propagate(self, ctx):
        lab = ctx.input_label(0)
        rep = ctx.tracker.slot(ctx.name, "ch", lab, 1, f"{ctx.describe()} normalises per channel")
        return channel_label(rep, lab.shape, 1)  # same classes as `lab`, but broadcast: cheaper downstream

    def weights(self, module, slot):
        return [(p, 0) for p in (module.weight, module.bias) if p is not None]

    def scale(self, module, slot):
        return module.weight.detach().abs() if module.weight is not None else None

    def shrink(self, module, keep):
        k = keep["ch"]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(module, attr, None)
            if value is not None:
                setattr(module, attr, _param(value, k, 0))
        module.num_features = k.numel()


class LayerNormHandler(Handler):
    """LayerNorm over the last axis. Removing features changes the mean and variance, so a
    pruned LayerNorm is close to, not equal to, the original even when the cut features were 0."""

    def propagate(self, ctx):
        m = ctx.module
        if len(m.normalized_shape) != 1:
            return Opaque("LayerNorm over several axes is not pruned").propagate(ctx)
        lab = ctx.input_label(0)
        rep = ctx.tracker.slot(ctx.name, "ch", lab, -1, f"{ctx.describe()} normalises over features")
        return channel_label(rep, lab.shape, -1)

    def weights(self, module, slot):
        return [(p, 0) for p in (module.weight, module.bias) if p is not None]

    def shrink(self, module, keep):
        k = keep["ch"]
        module.weight = _param(module.weight, k, 0)
        module.bias = _param(module.bias, k, 0)
        module.normalized_shape = (k.numel(),)


class GroupNormHandler(Handler):
    """GroupNorm: whole normalisation groups go together, so each kept group's statistics are unchanged."""

    def propagate(self, ctx):
        m, t = ctx.module, ctx.tracker
        lab = ctx.input_label(0)
        rep = t.slot(ctx.name, "ch", lab, 1, f"{ctx.describe()} normalises per group")
        blocks = rep.view(m.num_groups, -1)
        t.union(blocks, blocks[:, :1], f"{ctx.describe()} normalises whole groups")
        return lab

    def weights(self, module, slot):
        return [(p, 0) for p in (module.weight, module.bias) if p is not None]

    def shrink(self, module, keep):
        k = keep["ch"]
        per = module.num_channels // module.num_groups
        module.weight = _param(module.weight, k, 0)
        module.bias = _param(module.bias, k, 0)
        module.num_channels, module.num_groups = k.numel(), k.numel() // per


class PReLUHandler(Handler):
    def propagate(self, ctx):
        lab = ctx.input_label(0)
        if ctx.module.num_parameters > 1:
            ctx.tracker.slot(ctx.name, "ch", lab, 1, f"{ctx.describe()} has a slope per channel")
        return lab

    def weights(self, module, slot):
        return [(module.weight, 0)]

    def shrink(self, module, keep):
        if "ch" in keep:
            module.weight = _param(module.weight, keep["ch"], 0)
            module.num_parameters = keep["ch"].numel()


class EmbeddingHandler(Handler):
    """Embedding: creates `embedding_dim` channels on the last axis."""

    def propagate(self, ctx):
        out = ctx.tracker.fresh(ctx.module.embedding_dim)
        ctx.tracker.produce(ctx.name, "out", out)
        return channel_label(out, ctx.out.shape, -1)

    def weights(self, module, slot):
        return [(module.weight, 1)]

    def shrink(self, module, keep):
        module.weight = _param(module.weight, keep["out"], 1)
        module.embedding_dim = keep["out"].numel()


class ChannelShuffleHandler(Handler):
    """nn.ChannelShuffle: position j of every group goes together, so the shuffle stays valid."""

    def propagate(self, ctx):
        g = ctx.module.groups
        lab = ctx.input_label(0)
        r = rows(lab, 1)
        rep = r.amax(1)
        t = ctx.tracker
        t.union(rep[:, None].expand_as(r), r, f"{ctx.describe()} mixes positions of one channel")
        grid = rep.view(g, -1)
        t.union(grid, grid[:1], f"{ctx.describe()} shuffles channels between {g} groups")
        return channel_label(grid.t().reshape(-1), ctx.out.shape, 1)


def _register_modules() -> None:
    conv = ConvHandler()
    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        register_builtin(cls, conv)
    for cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        register_builtin(cls, ConvTransposeHandler())
    register_builtin(nn.Linear, LinearHandler())
    norm = NormHandler()
    for cls in (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm):
        register_builtin(cls, norm)
    register_builtin(nn.LayerNorm, LayerNormHandler())
    register_builtin(nn.GroupNorm, GroupNormHandler())
    register_builtin(nn.PReLU, PReLUHandler())
    register_builtin(nn.Embedding, EmbeddingHandler())
    register_builtin(nn.ChannelShuffle, ChannelShuffleHandler())
    pointwise = Pointwise()
    for cls in (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity,
                nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Softmax,
                nn.LogSoftmax, nn.Softsign, nn.Tanhshrink, nn.Threshold):
        register_builtin(cls, pointwise)
    spatial = Channelwise(1)
    for cls in (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                nn.Upsample, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
                nn.modules.padding._ConstantPadNd, nn.LocalResponseNorm):
        register_builtin(cls, spatial)
    for cls in (nn.Flatten, nn.Unflatten):
        register_builtin(cls, ApplyToLabels())


_register_modules()
