"""BatchNormalization folded into the Conv / ConvTranspose / Gemm that feeds it.

y = gamma * (W x + b - mean) / sqrt(var + eps) + beta  ==  (W * s) x + (b - mean) * s + beta,
with s = gamma / sqrt(var + eps) per output channel.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from ._rule import FuseRule, attr_float, attr_int, new_initializer, opset, weight

__all__ = ["RULES"]


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray] | None:
    params = [weight(v) for v in bn.inputs[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + attr_float(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


def _check_bn(bn, w: np.ndarray | None, channels) -> MatchResult:
    result = MatchResult()
    if attr_int(bn, "training_mode", 0) or len(bn.outputs) != 1:
        return result.fail("BatchNormalization runs in training mode (batch statistics)")
    if not attr_int(bn, "spatial", 1):
        return result.fail("BatchNormalization with spatial=0 (per-element statistics, opset < 9)")
    if w is None:
        return result.fail("the weight is not a constant initializer (or is a graph input)")
    if _bn_scale_shift(bn) is None:
        return result.fail("BatchNormalization's scale/bias/mean/var are not constants")
    channels = channels(w) if callable(channels) else channels
    if bn.inputs[1].shape is not None and tuple(bn.inputs[1].shape) != (channels,):
        return result.fail(f"BatchNormalization has {tuple(bn.inputs[1].shape)} channels, the weight {channels}")
    return result


class ConvBatchNorm(FuseRule):
    """BatchNormalization(Conv(x, W, b)) -> Conv(x, W * s, (b - mean) * s + beta)."""

    rule_name: ClassVar[str] = "conv-bn"
    op_type: ClassVar[str] = "Conv"

    def pattern(self, op, x):
        inner = getattr(op, self.op_type)(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.BatchNormalization(inner, _allow_other_inputs=True, _outputs=["bn_out"])

    def _out_channels(self, node, w) -> int:
        return w.shape[0]

    def verify(self, context, x, inner, bn_out) -> MatchResult:
        node, bn = inner.producer(), bn_out.producer()
        w = weight(node.inputs[1])
        if opset(context) < 7:
            return MatchResult().fail("BatchNormalization before opset 7 has other semantics (is_test, spatial)")
        if w is not None and w.ndim < 3:
            return MatchResult().fail(f"{self.op_type} weight has rank {w.ndim}")
        result = _check_bn(bn, w, lambda w: self._out_channels(node, w))
        if result and len(node.inputs) > 2 and node.inputs[2] is not None and weight(node.inputs[2]) is None:
            return result.fail("the bias is not a constant initializer")
        return result

    def _scaled_weight(self, w, scale, node):
        shape = [1] * w.ndim
        shape[0] = -1
        return w * scale.reshape(shape)

    def rewrite(self, op, x, inner, bn_out):
        node, bn = inner.producer(), bn_out.producer()
        w = weight(node.inputs[1])
        scale, shift = _bn_scale_shift(bn)
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        b = weight(node.inputs[2]).astype(np.float64) if has_bias else 0.0
        new_w = self._scaled_weight(w.astype(np.float64), scale, node).astype(w.dtype)
        new_b = (b * scale + shift).astype(w.dtype)
        return getattr(op, self.op_type)(
            x, new_initializer(op, new_w, node.inputs[1].name), new_initializer(op, new_b, bn.inputs[2].name),
            **node.attributes)


class ConvTransposeBatchNorm(ConvBatchNorm):
    """BatchNormalization(ConvTranspose(x, W, b)): W is [Cin, Cout/group, k...]."""

    op_type: ClassVar[str] = "ConvTranspose"

    def verify(self, context, x, inner, bn_out) -> MatchResult:
        w = weight(inner.producer().inputs[1])
        group = attr_int(inner.producer(), "group", 1)
        if w is not None and w.shape[0] % group:
            return MatchResult().fail(f"ConvTranspose input channels {w.shape[0]} not divisible by group {group}")
        return super().verify(context, x, inner, bn_out)

    def _out_channels(self, node, w) -> int:
        return w.shape[1] * attr_int(node, "group", 1)

    def _scaled_weight(self, w, scale, node):
        group = attr_int(node, "group", 1)
        cin, cout_g = w.shape[0], w.shape[1]
        grouped = w.reshape(group, cin // group, cout_g, *w.shape[2:])
        s = scale.reshape(group, 1, cout_g, *([1] * (w.ndim - 2)))
        return (grouped * s).reshape(w.shape)


class GemmBatchNorm(FuseRule):
    """BatchNormalization(Gemm(a, B, C)) on [M, N]: scale B's N columns, fold C (beta folded, set to 1)."""

    rule_name: ClassVar[str] = "gemm-bn"

    def pattern(self, op, a):
        inner = op.Gemm(a, _allow_other_inputs=True, _outputs=["inner"])
        return op.BatchNormalization(inner, _allow_other_inputs=True, _outputs=["bn_out"])

    def verify(self, context, a, inner, bn_out) -> MatchResult:
        node, bn = inner.producer(), bn_out.producer()
        w = weight(node.inputs[1])
        if opset(context) < 7:
            return MatchResult().fail("Gemm broadcasts C only from opset 7")
        if w is not None and w.ndim != 2:
            return MatchResult().fail(f"Gemm's B has rank {w.ndim}")
        result = _check_bn(bn, w, lambda w: w.shape[0] if attr_int(node, "transB", 0) else w.shape[1])
        if result and len(node.inputs) > 2 and node.inputs[2] is not None and weight(node.inputs[2]) is None:
            return result.fail("Gemm's C is not a constant initializer")
        return result

    def rewrite(self, op, a, inner, bn_out):
        node, bn = inner.producer(), bn_out.producer()
        w = weight(node.inputs[1])
        scale, shift = _bn_scale_shift(bn)
        trans_b = attr_int(node, "transB", 0)
        new_w = (w.astype(np.float64) * (scale[:, None] if trans_b else scale[None, :])).astype(w.dtype)
        has_c = len(node.inputs) > 2 and node.inputs[2] is not None
        c = weight(node.inputs[2]).astype(np.float64) * attr_float(node, "beta", 1.0) if has_c else 0.0
        new_c = np.asarray(c * scale + shift, dtype=w.dtype)
        attrs = {k: v for k, v in node.attributes.items() if k != "beta"}
        return op.Gemm(a, new_initializer(op, new_w, node.inputs[1].name),
                       new_initializer(op, new_c, bn.inputs[2].name), **attrs)


RULES = {
    "conv-bn": (ConvBatchNorm.rule(), ConvTransposeBatchNorm.rule()),
    "gemm-bn": (GemmBatchNorm.rule(),),
}
