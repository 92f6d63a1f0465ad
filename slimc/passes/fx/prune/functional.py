"""Handlers for functions and tensor methods: elementwise math, data movement, reductions.

Data movement (reshape, permute, cat, split, slicing) runs on the labels themselves. When such
an op carries a constant that counts channels (`x.view(n, 768, -1)`, `x[:, :16]`,
`x.chunk(2, 1)`), the handler registers a *rewrite* that recomputes the constant after
pruning, so the pruned graph stays consistent.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from .graph import NodeContext
from .labels import SizeLabel, channel_label, compact, rows, untracked
from .handlers import Channelwise, Handler, Opaque, Pointwise, register_builtin

__all__ = ["LabelOp", "Reshape", "GetItem", "Split", "Cat", "Reduce", "FunctionalLayerNorm"]


def _as_labels(values, labels):
    """Replace each tensor in `values` by its label (untracked when it has none)."""
    if isinstance(values, torch.Tensor):
        return labels if isinstance(labels, torch.Tensor) else untracked(values.shape)
    if isinstance(values, (list, tuple)):
        labels = labels if isinstance(labels, (list, tuple)) else [None] * len(values)
        return type(values)(_as_labels(v, l) for v, l in zip(values, labels))
    if isinstance(values, dict):
        labels = labels if isinstance(labels, dict) else {}
        return {k: _as_labels(v, labels.get(k)) for k, v in values.items()}
    return values


def _run_on_labels(ctx: NodeContext):
    args = _as_labels(ctx.args, ctx.arg_labels)
    kwargs = _as_labels(ctx.kwargs, ctx.kwarg_labels)
    if ctx.node.op == "call_method":
        # Labels are often broadcast views, which `view` refuses; `reshape` gives the same result.
        method = {"view": "reshape", "view_as": "reshape_as"}.get(ctx.node.target, ctx.node.target)
        return getattr(args[0], method)(*args[1:], **kwargs)
    return ctx.node.target(*args, **kwargs)


def _dim_arg(ctx: NodeContext, pos: int, name: str = "dim", default=0):
    if len(ctx.args) > pos:
        return ctx.args[pos]
    return ctx.kwargs.get(name, default)


class LabelOp(Handler):
    """Pure data movement (permute, transpose, flatten, squeeze, stack, pixel_shuffle...)."""

    def propagate(self, ctx):
        return _run_on_labels(ctx)


class Reshape(Handler):
    """view/reshape/expand: labels follow; integer sizes on shrinking axes are rewritten after pruning.

    When channels end up spread over two axes (channel shuffle: C -> (groups, C/groups)), a cut
    must stay rectangular: positions along every axis but one are tied together. The free axis
    is the one whose size is computed at run time (not a literal), else the largest."""

    def propagate(self, ctx):
        out = _run_on_labels(ctx)
        sizes = _shape_args(ctx.node)
        c = compact(out)
        moving = [d for d in range(c.dim()) if c.shape[d] > 1 and not torch.equal(c, c.narrow(d, 0, 1).expand_as(c))]
        if len(moving) > 1:
            literal = [d for d in moving if sizes is not None and d < len(sizes) and isinstance(sizes[d], int)]
            free = [d for d in moving if d not in literal] or moving
            keep_dim = max(free, key=lambda d: (c.shape[d], d))
            for d in moving:
                if d != keep_dim:
                    ctx.tracker.union(c, c.narrow(d, 0, 1), f"{ctx.describe()} splits channels over two axes")
        if sizes is not None:
            node = ctx.node
            ctx.tracker.rewrites.append(lambda cut: _rewrite_sizes(node, out, cut))
            _tie_sizes(ctx, out)
        return out


def _tie_sizes(ctx, out) -> None:
    """A size read from one tensor that shapes another ties the widths of the two axes. Where
    one side is untracked (e.g. an attention output the analysis could not follow), the other
    side must stay whole, or the reshape would fail after pruning (MaxViT's reshape(B, G, P, D))."""
    labels = _shape_args_of(ctx.node, ctx.arg_labels)
    for d, s in enumerate(labels or ()):
        if not isinstance(s, SizeLabel) or d >= out.dim():
            continue
        r = rows(out, d).amax(1)
        src_tracked, out_tracked = bool((s.atoms >= 0).any()), bool((r >= 0).any())
        why = f"{ctx.describe()} sizes axis {d} with a width read from another tensor"
        if r.numel() != s.atoms.numel() or src_tracked != out_tracked:
            ctx.tracker.pin(s.atoms, why)
            ctx.tracker.pin(r, why)


def _shape_args(node):
    return _shape_args_of(node, node.args)


def _shape_args_of(node, args):
    args = tuple(args)[1:]
    if node.op == "call_function" and len(args) >= 1:
        args = args[:1]
    if len(args) == 1 and isinstance(args[0], (list, tuple)) and not hasattr(args[0], "atoms"):
        args = args[0]
    return list(args) if args else None


def _rewrite_sizes(node, out_label, cut) -> None:
    sizes = _shape_args(node)
    new = list(sizes)
    for d, s in enumerate(sizes):
        if isinstance(s, int) and s > 0 and d < out_label.dim():
            new[d] = int(cut.kept(out_label, d).sum())
    if new == sizes:
        return
    nested = len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
    node.args = (node.args[0], type(node.args[1])(new)) if nested else (node.args[0], *new)


class GetItem(Handler):
    """operator.getitem: tuples pick a label; tensors are indexed like the data, slices rewritten."""

    def propagate(self, ctx):
        base, index = ctx.args[0], ctx.args[1]
        if not isinstance(base, torch.Tensor):
            lab = ctx.arg_labels[0]
            return lab[index] if isinstance(lab, (list, tuple)) else ctx.untracked_out()
        entries = index if isinstance(index, tuple) else (index,)
        if any(not (e is None or e is Ellipsis or isinstance(e, (int, slice))) for e in entries):
            return Opaque("advanced indexing is not followed").propagate(ctx)
        label = ctx.input_label(0)
        out = label[index]
        per_dim = _index_dims(entries, label.dim())
        node, desc, tracker = ctx.node, ctx.describe(), ctx.tracker

        def check(analysis):
            for d, e in per_dim:
                if not analysis.varies(label, d):
                    continue
                if isinstance(e, int):
                    tracker.pin(label.select(d, e), f"{desc} picks one channel by position")
                elif e.step not in (None, 1) or not all(isinstance(v, (int, type(None))) for v in (e.start, e.stop)):
                    tracker.pin(label, f"{desc} slices channels with a step or computed bounds")

        tracker.constraints.append(check)
        tracker.rewrites.append(lambda cut: _rewrite_index(node, label, per_dim, cut))
        return out


def _index_dims(entries, ndim):
    consumed = sum(1 for e in entries if e is not None and e is not Ellipsis)
    out, d = [], 0
    for i, e in enumerate(entries):
        if e is Ellipsis:
            d += ndim - consumed
        elif e is None:
            continue
        else:
            if isinstance(e, int) or (isinstance(e, slice) and e != slice(None)):
                out.append((d, e, i))
            d += 1
    return [(d, e) for d, e, _ in out]


def _rewrite_index(node, label, per_dim, cut) -> None:
    index = node.args[1]
    entries = list(index) if isinstance(index, tuple) else [index]
    positions = [i for i, e in enumerate(entries) if isinstance(e, int) or (isinstance(e, slice) and e != slice(None))]
    changed = False
    for (d, e), pos in zip(per_dim, positions):
        kept = cut.kept(label, d)
        n = kept.numel()
        if bool(kept.all()):
            continue

        def moved(i):
            if i is None:
                return None
            i = i + n if i < 0 else min(i, n)
            return int(kept[:i].sum())

        entries[pos] = moved(e) if isinstance(e, int) else slice(moved(e.start), moved(e.stop), e.step)
        changed = True
    if changed:
        node.args = (node.args[0], tuple(entries) if isinstance(index, tuple) else entries[0])


class Split(Handler):
    """split/chunk: pieces follow; after pruning the node becomes torch.split with the kept sizes.

    Pieces of equal width are tied position by position (channel j of every piece goes
    together): a chunk(2) then still halves the tensor, and no piece can be emptied while
    the others keep channels (ShuffleNet's two branches stay balanced)."""

    def propagate(self, ctx):
        out = _run_on_labels(ctx)
        dim = _dim_arg(ctx, 2, "dim", 0)
        label, node = ctx.input_label(0), ctx.node
        widths = [o.shape[dim] for o in ctx.out]
        if len(set(widths)) == 1 and len(widths) > 1:
            for piece in out[1:]:
                ctx.tracker.union(compact(out[0]), compact(piece), f"{ctx.describe()} splits into equal pieces")
        ctx.tracker.rewrites.append(lambda cut: _rewrite_split(node, label, dim, widths, cut))
        return out


def _rewrite_split(node, label, dim, widths, cut) -> None:
    kept = cut.kept(label, dim)
    if bool(kept.all()):
        return
    bounds = torch.tensor([0] + widths).cumsum(0)
    sizes = [int(kept[bounds[i]:bounds[i + 1]].sum()) for i in range(len(widths))]
    node.op, node.target = "call_function", torch.split
    node.args, node.kwargs = (node.args[0], sizes, dim), {}


class Cat(Handler):
    """cat: labels are concatenated, so each input keeps its offset. Axes broadcast in every
    input stay broadcast (a concat of conv outputs does not allocate a full label)."""

    def propagate(self, ctx):
        tensors = ctx.args[0]
        labels = _as_labels(list(tensors), list(ctx.arg_labels[0]) if ctx.arg_labels[0] else None)
        dim = _dim_arg(ctx, 1, "dim", 0) % ctx.out.dim()
        shared = [d for d in range(ctx.out.dim()) if d != dim and all(lab.stride(d) == 0 for lab in labels)]
        index = tuple(slice(0, 1) if d in shared else slice(None) for d in range(ctx.out.dim()))
        return torch.cat([lab[index] for lab in labels], dim).expand(ctx.out.shape)


class Reduce(Handler):
    """mean/sum/amax over axes that carry no channels (global pooling written as x.mean((2, 3)))."""

    def propagate(self, ctx):
        dims = _dim_arg(ctx, 1, "dim", None)
        keepdim = ctx.args[2] if len(ctx.args) > 2 else ctx.kwargs.get("keepdim", False)
        label = ctx.input_label(0)
        if dims is None or not isinstance(ctx.out, torch.Tensor):
            return Opaque("reduces over every axis").propagate(ctx)
        dims = sorted({d % label.dim() for d in ((dims,) if isinstance(dims, int) else dims)}, reverse=True)
        c = compact(label)
        for d in dims:
            if c.shape[d] > 1 and not torch.equal(c, c.narrow(d, 0, 1).expand_as(c)):
                ctx.pin_inputs(f"{ctx.describe()} reduces over a channel axis")
                return ctx.untracked_out()
        for d in dims:
            label = label.narrow(d, 0, 1) if keepdim else label.select(d, 0)
        return label.expand(ctx.out.shape)


class FunctionalLayerNorm(Handler):
    """F.layer_norm over the last axis (torchvision's LayerNorm2d); its weight and bias come from
    get_attr nodes and are cut as parameters; normalized_shape is rewritten."""

    def propagate(self, ctx):
        shape = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["normalized_shape"]
        if len(shape) != 1:
            return Opaque("layer_norm over several axes is not pruned").propagate(ctx)
        label, t = ctx.input_label(0), ctx.tracker
        r = rows(label, -1)
        rep = r.amax(1)
        why = f"{ctx.describe()} normalises over features"
        t.union(rep[:, None].expand_as(r), r, why)
        for i, key in ((2, "weight"), (3, "bias")):
            lab = ctx.arg_labels[i] if len(ctx.arg_labels) > i else ctx.kwarg_labels.get(key)
            if isinstance(lab, torch.Tensor):
                t.union(rep, lab, why)
        node = ctx.node

        def rewrite(cut):
            new = (int(cut.kept(label, -1).sum()),)
            if tuple(node.args[1]) != new:
                node.args = (node.args[0], new, *node.args[2:])

        t.rewrites.append(rewrite)
        return channel_label(rep, label.shape, -1)


def _register() -> None:
    pointwise = Pointwise()
    functions = [operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
                 operator.iadd, operator.imul, torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.pow,
                 torch.exp, torch.sqrt, torch.rsqrt, torch.abs, torch.sigmoid, torch.tanh, torch.relu, torch.clamp,
                 torch.maximum, torch.minimum, torch.where, torch.erf, F.relu, F.relu6, F.gelu, F.silu, F.hardswish,
                 F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.dropout, F.dropout2d, F.hardtanh,
                 F.mish, F.softplus, F.softmax, F.log_softmax, torch.softmax]
    try:
        from torchvision.ops.stochastic_depth import stochastic_depth
        functions.append(stochastic_depth)  # identity in eval mode, wrapped as one FX call
    except ImportError:  # pragma: no cover - torchvision is optional here
        pass
    for fn in functions:
        register_builtin(fn, pointwise)
    for name in ("add", "sub", "mul", "div", "neg", "pow", "exp", "sqrt", "rsqrt", "abs", "sigmoid", "tanh",
                 "relu", "clamp", "clamp_min", "clamp_max", "float", "half", "to", "type_as", "contiguous", "clone",
                 "detach", "softmax", "add_", "mul_", "sub_", "div_", "relu_", "sigmoid_", "hardtanh_", "erf",
                 "masked_fill", "__add__", "__mul__"):
        register_builtin(name, pointwise)
    label_op = LabelOp()
    for fn in (torch.flatten, torch.permute, torch.transpose, torch.swapaxes, torch.movedim, torch.unsqueeze,
               torch.squeeze, torch.stack, torch.roll, torch.flip, torch.t, F.pixel_shuffle, F.pixel_unshuffle):
        register_builtin(fn, label_op)
    for name in ("permute", "transpose", "unsqueeze", "squeeze", "flatten", "t", "movedim", "expand_as",
                 "view_as", "reshape_as", "roll", "flip", "swapaxes"):
        register_builtin(name, label_op)
    reshape = Reshape()
    for key in (torch.reshape, "view", "reshape", "expand"):
        register_builtin(key, reshape)
    register_builtin(operator.getitem, GetItem())
    split = Split()
    for key in (torch.split, torch.chunk, "split", "chunk"):
        register_builtin(key, split)
    register_builtin(torch.cat, Cat())
    register_builtin(torch.concat, Cat())
    reduce = Reduce()
    for key in (torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"):
        register_builtin(key, reduce)
    register_builtin(F.layer_norm, FunctionalLayerNorm())
    spatial = Channelwise(1)
    for fn in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool1d, F.avg_pool2d,
               F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.interpolate, F.upsample):
        register_builtin(fn, spatial)
    register_builtin(F.pad, _SpatialPad())


class _SpatialPad(Handler):
    def propagate(self, ctx):
        pad = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["pad"]
        if len(pad) // 2 > ctx.args[0].dim() - 2:
            return Opaque("pads the channel axis").propagate(ctx)
        return Channelwise(1).propagate(ctx)


_register()
