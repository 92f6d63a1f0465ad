"""ATen contractions: matmul / bmm / mm between activations, einsum, scaled_dot_product_attention.

What a contraction sums over is tied between its operands position by position, so attention
prunes by whole heads (q with k, the attention weights with v); with grouped-query attention a
key/value head follows its group of query heads.
"""

from __future__ import annotations

import math
import string

import torch

from .aten_ops import AtenLayer, _arg, _lab, _macs, _val
from .functional import _as_labels
from .handlers import Handler
from .labels import compact, untracked

__all__ = ["AtenContraction", "AtenSDPA", "einsum_labels"]


def _project(label: torch.Tensor, letters: str, want: str, tracker, why: str) -> torch.Tensor:
    """`label` (axes named by `letters`) seen along the letters of `want`: axes not in `want` are summed
    over, so their positions are tied and index 0 stands for all; missing letters are size 1."""
    for i, ch in enumerate(letters):
        if ch not in want:
            c = compact(label)
            if c.shape[i] > 1:
                tracker.union(c, c.narrow(i, 0, 1), why)
    index = tuple(slice(None) if ch in want else slice(0, 1) for ch in letters)
    lab = label[index]
    kept = [ch for ch in letters if ch in want]
    lab = lab.reshape([s for ch, s in zip(letters, lab.shape) if ch in want]) if kept else lab.reshape(())
    perm = sorted(range(len(kept)), key=lambda i: want.index(kept[i]))
    lab = lab.permute(perm) if kept else lab
    shape = [lab.shape[sorted(kept, key=want.index).index(ch)] if ch in kept else 1 for ch in want]
    return lab.reshape(shape)


def einsum_labels(equation: str, labels, out_shape, tracker, why: str) -> torch.Tensor:
    """Labels through an einsum: shared letters are tied position by position; the output is the
    union of every operand's projection onto the output letters."""
    ins, out = equation.replace(" ", "").split("->")
    ins = ins.split(",")
    for a in range(len(ins)):
        for b in range(a + 1, len(ins)):
            common = "".join(ch for ch in ins[a] if ch in ins[b])
            if common:
                pa = _project(labels[a], ins[a], common, tracker, why)
                pb = _project(labels[b], ins[b], common, tracker, why)
                tracker.union(pa, pb, why)
    projected = [torch.broadcast_to(_project(lab, spec, out, tracker, why), out_shape) for lab, spec in zip(labels, ins)]
    tracked = [p for p in projected if bool((compact(p) >= 0).any())]
    if not tracked:
        return untracked(out_shape)
    tracked.sort(key=lambda p: compact(p).numel())
    for other in tracked[1:]:
        tracker.union(tracked[0], other, why)
    return tracked[-1]


def _matmul_equation(a_dim: int, b_dim: int) -> str:
    letters = iter(string.ascii_lowercase[3:])
    batch = max(a_dim, b_dim) - 2
    bl = "".join(next(letters) for _ in range(max(batch, 0)))
    a = (bl[len(bl) - (a_dim - 2):] if a_dim > 2 else "") + ("mk" if a_dim >= 2 else "k")
    b = (bl[len(bl) - (b_dim - 2):] if b_dim > 2 else "") + ("kn" if b_dim >= 2 else "k")
    o = bl + ("m" if a_dim >= 2 else "") + ("n" if b_dim >= 2 else "")
    return f"{a},{b}->{o}"


class AtenContraction(Handler):
    """matmul / bmm / mm between activations, and einsum."""

    def __init__(self, kind: str):
        self.kind = kind

    def propagate(self, ctx):
        if self.kind == "einsum":
            eq, ops = _val(ctx, 0), list(_val(ctx, 1))
            labels = _as_labels(ops, list(ctx.arg_labels[1]) if ctx.arg_labels[1] else None)
            if "..." in eq or any(len(s) != o.dim() for s, o in zip(eq.split("->")[0].split(","), ops)):
                eq = _expand_ellipsis(eq, ops)
        else:
            a, b = _val(ctx, 0), _val(ctx, 1)
            if self.kind in ("matmul", "mm") and ctx.walk.param(_arg(ctx, 1)) is not None and b.dim() == 2:
                return AtenLayer("mm").propagate(ctx)
            eq = _matmul_equation(a.dim(), b.dim())
            labels = [_lab(ctx, 0), _lab(ctx, 1)]
        why = f"{ctx.describe()} contracts them together"
        ins = eq.split("->")[0].split(",")
        k = math.prod(o.shape[i] for s, o in zip(ins, ctx.args[1] if self.kind == "einsum" else ctx.args[:2])
                      for i, ch in enumerate(s) if ch not in eq.split("->")[1] and s is ins[0])
        _macs(ctx, ctx.out.numel() * max(k, 1))
        return einsum_labels(eq, labels, ctx.out.shape, ctx.tracker, why)


def _expand_ellipsis(eq: str, ops) -> str:
    ins, out = eq.replace(" ", "").split("->")
    used = set(eq) - set(",->.")
    free = [c for c in string.ascii_letters if c not in used]
    nell = max(o.dim() - len(s.replace("...", "")) for s, o in zip(ins.split(","), ops))
    ell = "".join(free[:nell])
    new_ins = [s.replace("...", ell[nell - (o.dim() - len(s.replace("...", ""))):]) for s, o in zip(ins.split(","), ops)]
    return ",".join(new_ins) + "->" + out.replace("...", ell)


class AtenSDPA(Handler):
    """scaled_dot_product_attention(q, k, v, mask, dropout, is_causal, scale, enable_gqa)."""

    def propagate(self, ctx):
        q, k, v = (_val(ctx, i) for i in range(3))
        lq, lk, lv = (_lab(ctx, i) for i in range(3))
        t = ctx.tracker
        why = f"{ctx.describe()} attends with these heads"
        hq, hk = q.shape[-3] if q.dim() >= 3 else 1, k.shape[-3] if k.dim() >= 3 else 1
        qa, ka, va = lq.select(-2, 0), lk.select(-2, 0), lv.select(-2, 0)
        if hk != hq and q.dim() >= 3:
            ka = compact(ka).expand(ka.shape).repeat_interleave(hq // hk, dim=-2)
            va = compact(va).expand(va.shape).repeat_interleave(hq // hk, dim=-2)
        t.union(qa, ka, why)
        t.union(qa[..., :1], va[..., :1], why)
        mask = _val(ctx, 3, "attn_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() >= 3 and mask.shape[-3] > 1 and q.dim() >= 3:
            label, desc = lq, ctx.describe()

            def check(analysis):
                if analysis.varies(label, -3):
                    t.pin(label, f"{desc} adds a mask per head")
            t.constraints.append(check)
        s = k.shape[-2]
        _macs(ctx, 2 * q.numel() * s)
        return va.unsqueeze(-2).expand(ctx.out.shape)


