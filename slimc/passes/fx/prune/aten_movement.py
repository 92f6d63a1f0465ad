"""Data-movement handlers keyed by ATen op: reshape/view, split/chunk, cat, slicing, indexing,
reductions, padding and the label-only ops (permute, transpose, shuffle ...).

They run on the channel labels themselves (labels.py), so channels are followed through them
without a rule per op; reshapes whose sizes change with the cut are recorded in
`tracker.literals` (see aten_ops.py). Registered by aten_ops._register.
"""

from __future__ import annotations

import torch

from .aten_ops import _arg, _lab, _val
from .functional import Cat, _as_labels
from .handlers import Handler, Opaque
from .labels import compact, untracked

__all__ = ["AtenReshape", "AtenSplit", "AtenIndex", "AtenReduce", "AtenLabelOp", "AtenSlice", "AtenPad", "AtenCat",
           "AtenTupleOut", "AtenFactory"]

aten = torch.ops.aten


def _record_literals(ctx, out_label, sizes, axes):
    """After the cut, the sizes a module spelled (old -> new, also those that stayed) are noted per module
    for attribute updates (module_attrs.py)."""
    from .aten_graph import module_of

    node_module = module_of(ctx.node)
    literals = ctx.walk.literals

    def record(cut):
        whole = list(sizes)
        for i, (d, old) in enumerate(zip(axes, sizes)):
            if isinstance(old, int) and old > 1:
                new = int(cut.kept(out_label, d).sum())
                literals.append((node_module, old, new))
                whole[i] = new
        if whole != list(sizes) and all(isinstance(s, int) for s in sizes):  # a shape kept as one attribute
            literals.append((node_module, tuple(sizes), tuple(whole)))
    ctx.tracker.rewrites.append(record)


def _record_split_sizes(ctx, pieces, dim):
    """A split by a list of sizes (timm MixedConv2d's `splits`): the list and its total, old -> new."""
    from .aten_graph import module_of

    node_module, literals = module_of(ctx.node), ctx.walk.literals
    old = tuple(int(p.shape[dim]) for p in pieces)

    def record(cut):
        new = tuple(int(cut.kept(p, dim).sum()) for p in pieces)
        if new != old:
            literals.append((node_module, old, new))
            literals.append((node_module, sum(old), sum(new)))
    ctx.tracker.rewrites.append(record)


def _moving(label: torch.Tensor) -> list[int]:
    c = compact(label)
    return [d for d in range(c.dim()) if c.shape[d] > 1 and not torch.equal(c, c.narrow(d, 0, 1).expand_as(c))]


def _split_axes(in_shape, out_shape) -> list[tuple[int, list[int]]]:
    """(input axis, output axes) for every input axis a reshape splits into several."""
    groups, i, j = [], 0, 0
    try:
        while i < len(in_shape) and j < len(out_shape):
            a, b, ins, outs = in_shape[i], out_shape[j], [i], [j]
            while a != b:
                if a < b:
                    i += 1
                    a *= in_shape[i]
                    ins.append(i)
                else:
                    j += 1
                    b *= out_shape[j]
                    outs.append(j)
            if len(ins) == 1 and len(outs) > 1:
                groups.append((ins[0], outs))
            i, j = i + 1, j + 1
    except IndexError:
        return []
    return groups


def _tie_split_axes(ctx, lab, out):
    """A reshape that spreads one axis's channels over several axes (heads x head_dim, groups x
    width): a cut must stay a product, so every moving axis but one is tied. Splitting the feature
    (last) axis frees heads from (heads, head_dim) and (3, heads, head_dim); splitting any other axis
    (channel shuffle's (groups, width)) frees the longest."""
    moving = set(_moving(out))
    c = compact(out)
    for axis, outs in _split_axes(tuple(lab.shape), tuple(out.shape)):
        spread = [d for d in outs if d in moving]
        if len(spread) < 2:
            continue
        if axis == lab.dim() - 1:
            keep_dim = spread[1] if len(spread) >= 3 else spread[0]
        else:
            keep_dim = max(spread, key=lambda d: (c.shape[d], d))
        for d in spread:
            if d != keep_dim:
                ctx.tracker.union(c, c.narrow(d, 0, 1), f"{ctx.describe()} splits channels over two axes")


class AtenReshape(Handler):
    """view / reshape / _unsafe_view / expand: labels follow; shrinking sizes are recorded."""

    def propagate(self, ctx):
        lab = _lab(ctx, 0)
        sizes = list(_val(ctx, 1))
        if ctx.node.target in (aten.expand.default,):
            out = lab.expand(sizes)
        else:
            out = lab.reshape(sizes)
            _tie_split_axes(ctx, lab, out)
        _record_literals(ctx, out, sizes, range(len(sizes)))
        return out


class AtenSplit(Handler):
    """split / split_with_sizes / chunk / unbind: pieces follow; equal pieces are tied position by position."""

    def propagate(self, ctx):
        lab = _lab(ctx, 0)
        name = ctx.node.target.__name__.split(".")[0]
        if name == "unbind":
            dim = _val(ctx, 1, "dim", 0)
            return tuple(lab.select(dim, i) for i in range(lab.shape[dim]))
        dim = _val(ctx, 2, "dim", 0) % lab.dim()
        widths = [o.shape[dim] for o in ctx.out]
        pieces = tuple(torch.split(lab, widths, dim))
        if len(set(widths)) == 1 and len(widths) > 1:
            for piece in pieces[1:]:
                ctx.tracker.union(compact(pieces[0]), compact(piece), f"{ctx.describe()} splits into equal pieces")
        elif name in ("split", "chunk") and len(set(widths[:-1])) == 1 and widths[-1] < widths[0]:
            # chunk(n) / split(x, size) with a shorter last piece: at run time the pieces are sized from the
            # new total, so every piece loses the same positions (the last one those of the first's prefix).
            why = f"{ctx.describe()} splits into equal pieces and a shorter last one"
            for piece in pieces[1:-1]:
                ctx.tracker.union(compact(pieces[0]), compact(piece), why)
            ctx.tracker.union(compact(pieces[0].narrow(dim, 0, widths[-1])), compact(pieces[-1]), why)
        if name == "split":
            _record_literals(ctx, pieces[0], [_val(ctx, 1)], [dim])
        elif name == "split_with_sizes":
            _record_split_sizes(ctx, pieces, dim)
        return pieces


class AtenIndex(Handler):
    """index.Tensor / index_select with index tensors computed from constants (position tables)."""

    def propagate(self, ctx):
        lab = _lab(ctx, 0)
        name = ctx.node.target.__name__.split(".")[0]
        if name == "index_select":
            idx = ctx.walk.concrete(_arg(ctx, 2))
            return lab.index_select(_val(ctx, 1), idx) if idx is not None else self._opaque(ctx)
        indices = _arg(ctx, 1)
        real = [None if i is None else ctx.walk.concrete(i) for i in indices]
        if any(i is not None and r is None for i, r in zip(indices, real)):
            return self._opaque(ctx)
        return lab[tuple(slice(None) if r is None else r for r in real)] if len(real) > 1 else lab[real[0]] \
            if real[0] is not None else lab

    def _opaque(self, ctx):
        return Opaque("it indexes with values computed from the input").propagate(ctx)


class AtenReduce(Handler):
    """mean / sum / amax / var over axes. Over a channel axis with keepdim (RMSNorm's mean of
    squares; F.normalize's linalg_vector_norm, whose `dim` comes after `ord`) the result is a per-position
    statistic: channels stay prunable, as with layer_norm."""

    def __init__(self, dim_position: int = 1):
        self.dim_position = dim_position

    def propagate(self, ctx):
        lab = _lab(ctx, 0)
        dims = _val(ctx, self.dim_position, "dim", None)
        keepdim = bool(_val(ctx, self.dim_position + 1, "keepdim", False))
        if dims is None or not isinstance(ctx.out, torch.Tensor) or (isinstance(dims, (list, tuple)) and not dims):
            return Opaque("reduces over every axis").propagate(ctx)
        dims = sorted({d % lab.dim() for d in ((dims,) if isinstance(dims, int) else dims)}, reverse=True)
        c = compact(lab)
        over_channels = [d for d in dims if c.shape[d] > 1 and not torch.equal(c, c.narrow(d, 0, 1).expand_as(c))]
        if over_channels and not keepdim:
            # Summing tied copies (ResNeSt's radix splits) is fine; summing distinct channels is not.
            t, desc, full = ctx.tracker, ctx.describe(), lab

            def check(analysis):
                if any(analysis.varies(full, d) for d in over_channels):
                    t.pin(full, f"{desc} reduces over a channel axis")
            t.constraints.append(check)
            for d in dims:
                lab = lab.select(d, 0)
            return lab.expand(ctx.out.shape)
        for d in dims:
            lab = lab.narrow(d, 0, 1) if keepdim else lab.select(d, 0)
        if over_channels and not self._per_group(c, dims):
            return untracked(ctx.out.shape)
        return lab.expand(ctx.out.shape)


    @staticmethod
    def _per_group(c, dims) -> bool:
        """A statistic over a channel axis that other channel axes index (F.normalize of q over head_dim: one
        norm per head) keeps their atoms: the result is tied to the reduced positions' first one, so those
        positions leave together (whole heads) and the rest follows the statistic. A statistic over every
        channel axis (RMSNorm) stays a per-position one, untracked."""
        rest = [d for d in range(c.dim()) if d not in dims and c.shape[d] > 1
                and not torch.equal(c, c.narrow(d, 0, 1).expand_as(c))]
        return bool(rest)


class AtenLabelOp(Handler):
    """Data movement that runs on the labels as the op itself (permute, transpose, cat, slice ...)."""

    def propagate(self, ctx):
        args = _as_labels(ctx.args, ctx.arg_labels)
        kwargs = _as_labels(ctx.kwargs, ctx.kwarg_labels)
        return ctx.node.target(*args, **kwargs)


class AtenSlice(Handler):
    """slice / select / narrow: run on labels; taking part of a channel axis pins it."""

    def propagate(self, ctx):
        lab = _lab(ctx, 0)
        out = AtenLabelOp().propagate(ctx)
        dim = _val(ctx, 1, "dim", 0) % max(lab.dim(), 1)
        select = "select" in str(ctx.node.target)
        whole = not select and ctx.out.shape[dim] == lab.shape[dim]
        if not select:  # GhostNet's out[:, :self.out_chs]: the width it keeps
            _record_literals(ctx, out, [ctx.out.shape[dim]], [dim])
        if not whole and not select and self._tie_equal_pieces(ctx, lab, dim):
            return out
        if not whole:
            t, desc = ctx.tracker, ctx.describe()
            others = [d for d in range(lab.dim()) if d != dim]

            def check(analysis):
                # Picking q from a (3, heads, head_dim) stack is fine while heads, not the 3, are cut.
                if analysis.varies(lab, dim) and not (select and any(analysis.varies(lab, d) for d in others)):
                    t.pin(lab, f"{desc} picks channels by position")
            t.constraints.append(check)
        return out

    @staticmethod
    def _tie_equal_pieces(ctx, lab, dim) -> bool:
        """A slice that is exactly the i-th of k equal pieces of a channel axis (torchvision Swin V2's
        `qkv_bias[length:2 * length]` with `length = numel() // 3`, the k of a fused q/k/v bias): the pieces
        are tied position by position, as chunk(k) ties them, so each keeps the same positions and the
        slice, sized from the new total at run time, still picks its piece."""
        n, step = lab.shape[dim], _val(ctx, 4, "step", 1)
        start, end = _val(ctx, 2, "start", None), _val(ctx, 3, "end", None)
        c = compact(lab)
        if step != 1 or not all(isinstance(v, int) or v is None for v in (start, end)) or not c.numel() \
                or c.shape[dim] < 2 or not bool((c >= 0).any()):  # only a channel axis: spatial slices as before
            return False
        start = 0 if start is None else (start + n if start < 0 else min(start, n))
        end = n if end is None else (end + n if end < 0 else min(end, n))
        width = end - start
        if width <= 0 or n % width or start % width or n // width < 2:
            return False
        pieces = torch.split(lab, width, dim)
        why = f"{ctx.describe()} takes one of {n // width} equal pieces"
        for piece in pieces[1:]:
            ctx.tracker.union(compact(pieces[0]), compact(piece), why)
        return True


class AtenPad(Handler):
    """constant_pad_nd / pad: padding axes without channels keeps them; padding a channel axis pins it."""

    def propagate(self, ctx):
        lab, pad = _lab(ctx, 0), list(_val(ctx, 1))
        padded = [lab.dim() - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]]
        c = compact(lab)
        if any(c.shape[d] > 1 for d in padded):
            return Opaque("pads an axis that carries channels").propagate(ctx)
        for d in padded:
            lab = lab.narrow(d, 0, 1)
        return lab.expand(ctx.out.shape)


class AtenCat(Handler):
    def propagate(self, ctx):
        if not isinstance(ctx.out, torch.Tensor):
            return ctx.untracked_out()
        return Cat().propagate(ctx)


class AtenTupleOut(Handler):
    """Ops returning (result, extras) such as native_dropout and max_pool2d_with_indices."""

    def __init__(self, inner: Handler):
        self.inner = inner

    def propagate(self, ctx):
        import dataclasses

        main = self.inner.propagate(dataclasses.replace(ctx, out=ctx.out[0]))
        return (main,) + tuple(main if isinstance(o, torch.Tensor) and o.shape == ctx.out[0].shape else
                               (untracked(o.shape) if isinstance(o, torch.Tensor) else None) for o in ctx.out[1:])


class AtenFactory(Handler):
    """new_zeros / new_ones / new_full / new_empty: a fresh tensor that only borrows dtype and device."""

    def propagate(self, ctx):
        return ctx.untracked_out()


class _Flatten(Handler):
    """flatten(x, start, end): labels follow; channel splits across axes are impossible here."""

    def propagate(self, ctx):
        return AtenLabelOp().propagate(ctx)
