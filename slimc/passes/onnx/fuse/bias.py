"""Bias additions absorbed by the op before them.

* conv-add:   Add(Conv(x, W[, b]), c) with c per output channel (or scalar) -> Conv(x, W, b + c)
* matmul-add: Add(MatMul(a, B), c) on 2-D a and B -> Gemm(a, B, c)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from ._rule import FLOAT_TYPES, FuseRule, channel_vector, known_shape, new_initializer, opset, rank_of, weight

__all__ = ["RULES"]


class ConvAdd(FuseRule):
    """Add(Conv(x, W[, b]), c) -> Conv(x, W, b + c) when c varies only along the channel axis."""

    rule_name: ClassVar[str] = "conv-add"

    def pattern(self, op, x, c):
        return op.Add(op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"]), c)

    def verify(self, context, x, c, conv_out) -> MatchResult:
        result = MatchResult()
        conv = conv_out.producer()
        w, cval = weight(conv.inputs[1]), weight(c)
        if w is None:
            return result.fail("the Conv weight is not a constant initializer")
        if cval is None:
            return result.fail("the added value is not a constant")
        if len(conv.inputs) > 2 and conv.inputs[2] is not None and weight(conv.inputs[2]) is None:
            return result.fail("the Conv bias is not a constant initializer")
        if cval.dtype != w.dtype:
            return result.fail(f"the added constant is {cval.dtype}, the weight {w.dtype}")
        if channel_vector(cval, w.ndim, w.shape[0]) is None:
            return result.fail(f"the added constant of shape {cval.shape} is not per output channel")
        return result

    def rewrite(self, op, x, c, conv_out):
        conv = conv_out.producer()
        w = weight(conv.inputs[1])
        add = channel_vector(weight(c), w.ndim, w.shape[0]).astype(np.float64)
        has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
        b = weight(conv.inputs[2]).astype(np.float64) if has_bias else 0.0
        bias = new_initializer(op, (b + add).astype(w.dtype), conv.inputs[2].name if has_bias else c.name or "bias")
        return op.Conv(x, conv.inputs[1], bias, **conv.attributes)


def gemm_bias_fits(c: np.ndarray, m, n) -> bool:
    """Gemm's C broadcasts one way to [M, N]: it may not make the result bigger."""
    if c.ndim > 2:
        return False
    shape = (1,) * (2 - c.ndim) + tuple(c.shape)
    return shape[0] in (1, m) and shape[1] in (1, n)


class MatMulAdd(FuseRule):
    """Add(MatMul(a, B), c) -> Gemm(a, B, c) when a and B are 2-D and c broadcasts to [M, N]."""

    rule_name: ClassVar[str] = "matmul-add"

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b, _outputs=["mm_out"]), c)

    def verify(self, context, a, b, c, mm_out) -> MatchResult:
        result = MatchResult()
        if opset(context) < 7:
            return result.fail("Gemm broadcasts C only from opset 7")
        if rank_of(a) != 2 or rank_of(b) != 2:
            return result.fail(f"MatMul inputs have ranks {rank_of(a)} and {rank_of(b)}; Gemm needs 2 and 2")
        if a.dtype not in FLOAT_TYPES or a.dtype != b.dtype or c.dtype != a.dtype:
            return result.fail(f"Gemm does not take {a.dtype} / {b.dtype} / {c.dtype} here")
        m, n = a.shape[0], b.shape[1]
        cshape = known_shape(c)
        if cshape is None:
            return result.fail("the added value's shape is unknown")
        if not gemm_bias_fits(np.empty(cshape, dtype=np.int8), m, n):
            return result.fail(f"the added value of shape {cshape} does not broadcast one way to [M, N]")
        return result

    def rewrite(self, op, a, b, c, mm_out):
        return op.Gemm(a, b, c)


RULES = {
    "conv-add": (ConvAdd.rule(),),
    "matmul-add": (MatMulAdd.rule(),),
}
