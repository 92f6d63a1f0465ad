"""Handlers keyed by ATen op: the closed core-ATen set a `torch.export` graph is made of.

Layer ops (convolution, linear/addmm, norms, embedding) read their weights from parameter
placeholders: their slots are parameter axes, ("layer1.0.conv1.weight", 0). Contractions
between activations (matmul, bmm, einsum, scaled_dot_product_attention) tie the contracted
positions of both operands, so attention heads follow q, k and v (with grouped-query
attention, a key/value head follows its group of query heads). Data movement runs on the
labels (aten_movement.py); elementwise ops are `Pointwise`. Reshapes whose sizes change with the
cut are recorded in `tracker.literals`, which module_cut.py uses to update module attributes
such as `num_heads` and `split_size`.
"""

from __future__ import annotations

import math

import torch

from .handlers import Channelwise, Handler, Opaque, Pointwise, register_builtin
from .labels import channel_label, rows, untracked

__all__ = ["AtenLayer", "AtenNorm", "AtenLayerNorm", "AtenEmbedding"]

aten = torch.ops.aten


def _arg(ctx, i, name=None, default=None):
    if i < len(ctx.node.args):
        return ctx.node.args[i]
    return ctx.node.kwargs.get(name, default) if name else default


def _val(ctx, i, name=None, default=None):
    if i < len(ctx.args):
        return ctx.args[i]
    return ctx.kwargs.get(name, default) if name else default


def _lab(ctx, i):
    lab = ctx.arg_labels[i] if i < len(ctx.arg_labels) else None
    val = ctx.args[i] if i < len(ctx.args) else None
    if isinstance(lab, torch.Tensor):
        return lab
    return untracked(val.shape) if isinstance(val, torch.Tensor) else None


def _owner(fqn: str) -> str:
    return fqn.rpartition(".")[0]


def _group_name(ctx, fqn: str) -> str:
    """Groups are named after the module that ran the layer op (a tied weight has one FQN for two)."""
    from .aten_graph import module_of

    return module_of(ctx.node) or _owner(fqn)


def _macs(ctx, n: int) -> None:
    ctx.walk.macs[ctx.node.name] = ctx.walk.macs.get(ctx.node.name, 0) + int(n)


# ---- layer ops --------------------------------------------------------------------------

class AtenLayer(Handler):
    """conv / conv_transpose / convolution / linear / addmm / mm-with-a-weight.

    `spec(ctx)` gives (input position, input axis, weight position, weight out axis, weight in
    axis, bias position, groups, output axis)."""

    def __init__(self, kind: str):
        self.kind = kind

    def spec(self, ctx):
        name = self.kind
        if name == "linear":
            return 0, -1, 1, 0, 1, 2, 1, -1
        if name == "addmm":
            return 1, -1, 2, 1, 0, 0, 1, -1
        if name == "mm":
            return 0, -1, 1, 1, 0, None, 1, -1
        if name == "convolution":
            transposed = bool(_val(ctx, 6, "transposed", False))
            groups = _val(ctx, 8, "groups", 1)
            return 0, 1, 1, (1 if transposed else 0), (0 if transposed else 1), 2, groups, 1
        if name.startswith("conv_transpose"):
            return 0, 1, 1, 1, 0, 2, _val(ctx, 6, "groups", 1), 1
        return 0, 1, 1, 0, 1, 2, _val(ctx, 6, "groups", 1), 1

    def propagate(self, ctx):
        t, walk = ctx.tracker, ctx.walk
        xi, xdim, wi, w_out, w_in, bi, groups, odim = self.spec(ctx)
        w_node, w_val = _arg(ctx, wi), _val(ctx, wi)
        fqn = walk.param(w_node)
        computed = fqn is None
        if computed:
            fqn = walk.root_param(w_node)
        if fqn is None or not isinstance(w_val, torch.Tensor) or w_val.dim() < 2:
            if self.kind == "mm":  # two activations: a plain contraction
                from .aten_contract import AtenContraction

                return AtenContraction("mm").propagate(ctx)
            return Opaque("its weight is not a parameter slimc can follow").propagate(ctx)
        out_val = ctx.out
        x_lab = _lab(ctx, xi)
        n_out = w_val.shape[w_out] * (groups if w_out == 1 and self.kind != "addmm" and self.kind != "mm"
                                      and groups > 1 else 1)
        why = f"{ctx.describe()} reads its input channels"
        # A grouped conv with few wide groups (ResNeSt's radix, small group counts) is cut inside its groups,
        # every group alike; one with many narrow groups (depthwise, ResNeXt) loses whole groups.
        within = 1 < groups < n_out // groups
        in_key = (fqn, w_in) if groups == 1 or within else (fqn + "#in", 0)
        rep = t.slot(in_key[0] + ("#all" if within else ""), in_key[1], x_lab, xdim, why)
        out = t.fresh(n_out)
        if groups > 1:
            blocks_in, blocks_out = rep.view(groups, -1), out.view(groups, -1)
            if within:
                gwhy = f"grouped conv {ctx.describe()} keeps every group the same width"
                t.union(blocks_out, blocks_out[:1].expand_as(blocks_out), gwhy)
                t.union(blocks_in, blocks_in[:1].expand_as(blocks_in), gwhy)
                t.slot(fqn, w_in, blocks_in[0], 0, why)
            else:
                gwhy = f"grouped conv {ctx.describe()} ties input and output channels of each group"
                t.union(blocks_out, blocks_out[:, :1], gwhy)
                t.union(blocks_in, blocks_out[:, :1], gwhy)
        if computed:
            w_lab = ctx.arg_labels[wi] if wi < len(ctx.arg_labels) else None
            if isinstance(w_lab, torch.Tensor):
                t.union(channel_label(out, w_lab.shape, w_out), w_lab, f"{ctx.describe()} computes its weight")
            t.slot(fqn, w_out, channel_label(out, w_val.shape, w_out), w_out, why)
            if (fqn, w_out) not in [(m, s) for _, m, s in t.producers]:
                t.producers.append((_group_name(ctx, fqn), fqn, w_out))
        else:
            t.produce(fqn, w_out, out, name=_group_name(ctx, fqn))
        b_node = _arg(ctx, bi) if bi is not None else None
        b_fqn = walk.param(b_node)
        if b_fqn is not None:
            t.slot(b_fqn, 0, out, 0, f"{ctx.describe()} adds a bias per output channel")
        elif isinstance(b_node, torch.fx.Node):
            b_lab = _lab(ctx, bi)
            t.union(channel_label(out, out_val.shape, odim), torch.broadcast_to(b_lab, out_val.shape),
                    f"{ctx.describe()} adds a bias per output channel")
        kernel = math.prod(w_val.shape[2:]) if w_val.dim() > 2 else 1
        per_out = (w_val.shape[w_in] if groups == 1 else w_val.shape[1]) * kernel
        _macs(ctx, out_val.numel() * per_out)
        walk.layer_slots[ctx.node.name] = [(fqn, w_out), in_key]
        return channel_label(out, out_val.shape, odim)


class AtenNorm(Handler):
    """batch_norm / instance_norm / _native_batch_norm_legit*: per-channel parameters and statistics on axis 1."""

    def propagate(self, ctx):
        t, walk = ctx.tracker, ctx.walk
        lab = _lab(ctx, 0)
        why = f"{ctx.describe()} normalises per channel"
        r = rows(lab, 1)
        rep = r.amax(1)
        t.union(rep[:, None].expand_as(r), r, why)
        for i in (1, 2, 3, 4):
            node = _arg(ctx, i)
            fqn = walk.param(node)
            if fqn is not None:
                t.slot(fqn, 0, rep, 0, why)
                if i == 1:
                    walk.scales.add((fqn, 0))
            elif isinstance(node, torch.fx.Node) and isinstance(_lab(ctx, i), torch.Tensor):
                t.union(rep, _lab(ctx, i), why)
        main = channel_label(rep, lab.shape, 1)
        if isinstance(ctx.out, (tuple, list)):
            return (main,) + tuple(untracked(o.shape) if isinstance(o, torch.Tensor) else None for o in ctx.out[1:])
        return main


class AtenLayerNorm(Handler):
    """layer_norm over the last axis (normalized_shape of length 1); group_norm over whole groups
    (with a single group its channels are free, as layer_norm's are)."""

    def __init__(self, group: bool = False):
        self.group = group

    def propagate(self, ctx):
        t, walk = ctx.tracker, ctx.walk
        lab = _lab(ctx, 0)
        if self.group:
            dim, groups = 1, _val(ctx, 1)
        else:
            shape = _val(ctx, 1)
            if len(shape) != 1:
                return Opaque("layer_norm over several axes is not pruned").propagate(ctx)
            dim, groups = -1, None
        why = f"{ctx.describe()} normalises over features"
        r = rows(lab, dim)
        rep = r.amax(1)
        t.union(rep[:, None].expand_as(r), r, why)
        if groups and groups > 1:  # one group (timm's GroupNorm1) normalises over all channels, like layer_norm
            blocks = rep.view(groups, -1)
            t.union(blocks, blocks[:, :1], f"{ctx.describe()} normalises whole groups")
        for i in (2, 3):
            node = _arg(ctx, i)
            fqn = walk.param(node)
            if fqn is not None:
                t.slot(fqn, 0, rep, 0, why)
            elif isinstance(node, torch.fx.Node) and isinstance(_lab(ctx, i), torch.Tensor):
                t.union(rep, _lab(ctx, i), why)
        main = channel_label(rep, lab.shape, dim)
        if isinstance(ctx.out, (tuple, list)):
            return (main,) + tuple(untracked(o.shape) if isinstance(o, torch.Tensor) else None for o in ctx.out[1:])
        return main


class AtenEmbedding(Handler):
    """embedding(weight, indices): `embedding_dim` channels on the last axis."""

    def propagate(self, ctx):
        t = ctx.tracker
        fqn = ctx.walk.param(_arg(ctx, 0))
        if fqn is None:
            return Opaque("its table is not a parameter").propagate(ctx)
        out = t.fresh(_val(ctx, 0).shape[1])
        t.produce(fqn, 1, out, name=_group_name(ctx, fqn))
        return channel_label(out, ctx.out.shape, -1)


def _packets(*names):
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def _register() -> None:
    for name in ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "linear", "addmm"):
        if hasattr(aten, name):
            register_builtin(getattr(aten, name), AtenLayer(name))
    for p in _packets("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
                      "instance_norm", "_native_batch_norm_legit"):
        register_builtin(p, AtenNorm())
    register_builtin(aten.layer_norm, AtenLayerNorm())
    register_builtin(aten.native_layer_norm, AtenLayerNorm())
    register_builtin(aten.group_norm, AtenLayerNorm(group=True))
    register_builtin(aten.native_group_norm, Opaque("native_group_norm is not followed"))
    register_builtin(aten.embedding, AtenEmbedding())
    from .aten_contract import AtenContraction, AtenSDPA
    from .aten_movement import (AtenCat, AtenFactory, AtenIndex, AtenLabelOp, AtenPad, AtenReduce, AtenReshape,
                                AtenSlice, AtenSplit, AtenTupleOut, _Flatten)

    for name in ("matmul", "bmm", "mm"):
        register_builtin(getattr(aten, name), AtenContraction(name))
    register_builtin(aten.einsum, AtenContraction("einsum"))
    register_builtin(aten.scaled_dot_product_attention, AtenSDPA())
    pointwise = Pointwise()
    for p in _packets(
            "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "pow", "exp", "sqrt", "rsqrt", "abs",
            "sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_",
            "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "clamp", "clamp_",
            "clamp_min", "clamp_max", "where", "dropout", "dropout_", "feature_dropout", "alpha_dropout", "erf",
            "softmax", "_softmax", "log_softmax", "_log_softmax", "to", "_to_copy", "clone", "contiguous", "alias",
            "detach", "masked_fill", "masked_fill_", "leaky_relu", "leaky_relu_", "elu", "elu_", "mish", "mish_",
            "softplus", "sign", "floor", "ceil", "round", "eq", "ne", "ge", "gt", "le", "lt", "logical_and",
            "logical_or", "logical_not", "__and__", "__or__", "type_as", "copy_", "maximum", "minimum", "lerp",
            "addcmul", "square", "reciprocal", "log", "cos", "sin", "selu", "celu", "glu_", "lift_fresh_copy",
            "bitwise_not", "fill", "zeros_like", "ones_like", "full_like", "empty_like", "rand_like",
            "randn_like", "log_sigmoid", "logit", "exp2", "expm1", "log1p", "trunc", "frac", "fmod", "remainder",
            "floor_divide", "threshold", "prelu", "_prelu_kernel", "isnan", "isinf", "nan_to_num", "hardshrink",
            "softshrink", "tanhshrink", "sinh", "cosh", "atan", "mul_", "pow_", "log2", "clip", "conj",
            "_assert_tensor_metadata", "zero_", "zero", "fill_"):
        register_builtin(p, pointwise)
    register_builtin(aten.native_dropout, AtenTupleOut(pointwise))
    for p in _packets("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "scalar_tensor", "arange",
                      "zeros", "ones", "full", "empty", "rand", "randn", "randint"):
        register_builtin(p, AtenFactory())
    spatial = Channelwise(1)
    for p in _packets("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                      "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                      "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
                      "upsample_bicubic2d", "upsample_linear1d", "upsample_trilinear3d", "_upsample_bilinear2d_aa",
                      "_upsample_nearest_exact2d", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
                      "replication_pad1d", "replication_pad2d", "replication_pad3d", "local_response_norm",
                      "_adaptive_avg_pool2d"):
        register_builtin(p, spatial)
    for p in _packets("max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool2d",
                      "adaptive_max_pool3d", "max_pool1d_with_indices"):
        register_builtin(p, AtenTupleOut(spatial))
    for p in _packets("constant_pad_nd", "pad"):
        register_builtin(p, AtenPad())
    label_op = AtenLabelOp()
    for p in _packets("permute", "transpose", "t", "unsqueeze", "squeeze", "flatten", "unflatten", "movedim",
                      "roll", "flip", "stack", "pixel_shuffle", "pixel_unshuffle", "repeat", "tile", "swapaxes",
                      "repeat_interleave", "numpy_T", "mT", "channel_shuffle", "native_channel_shuffle", "hstack",
                      "vstack", "broadcast_to", "reshape_as", "view_as", "expand_as"):
        register_builtin(p, label_op)
    reshape = AtenReshape()
    for p in _packets("view", "reshape", "_unsafe_view", "expand", "_reshape_alias"):
        register_builtin(p, reshape)
    register_builtin(aten.flatten, _Flatten())
    split = AtenSplit()
    for p in _packets("split", "split_with_sizes", "chunk", "unbind", "unsafe_split", "tensor_split"):
        register_builtin(p, split)
    register_builtin(aten.cat, AtenCat())
    register_builtin(aten.concat, AtenCat())
    for p in _packets("slice", "select", "narrow"):
        register_builtin(p, AtenSlice())
    for p in _packets("index", "index_select"):
        register_builtin(p, AtenIndex())
    reduce = AtenReduce()
    for p in _packets("mean", "sum", "amax", "amin", "var", "std", "logsumexp"):
        register_builtin(p, reduce)
    for p in _packets("linalg_vector_norm", "norm"):
        register_builtin(p, AtenReduce(dim_position=2))


_register()
