"""Multiplications and additions by constants folded into the Conv / Gemm weights next to them.

* conv-mul: Mul(Conv(x, W, b), s), s per output channel or scalar -> Conv(x, W * s, b * s)
* mul-conv: Conv(Mul(x, s), W, b), s per input channel or scalar -> Conv(x, W * s, b)
            (exact with zero padding too: padded zeros stay zero)
* add-conv: Conv(Add(x, c), W, b), c per input channel or scalar -> Conv(x, W, b + sum(W * c));
            only without padding: padded zeros would not be shifted, so the check rejects padded convs
* gemm-mul: Mul(Gemm(a, B, C), s), s per output column or scalar -> Gemm(a, B * s, C * s)
* gemm-add: Add(Gemm(a, B, C), c), c broadcasting one way to [M, N] -> Gemm(a, B, beta * C + c)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from ._rule import FuseRule, attr_float, attr_int, attr_ints, attr_str, channel_vector, new_initializer, opset, weight
from .bias import gemm_bias_fits

__all__ = ["RULES"]


def _conv_bias(conv):
    has = len(conv.inputs) > 2 and conv.inputs[2] is not None
    return weight(conv.inputs[2]) if has else None, has


def _check_conv(conv, result, w) -> MatchResult:
    if w is None:
        return result.fail("the Conv weight is not a constant initializer")
    bias, has = _conv_bias(conv)
    if has and bias is None:
        return result.fail("the Conv bias is not a constant initializer")
    return result


class ConvMul(FuseRule):
    rule_name: ClassVar[str] = "conv-mul"

    def pattern(self, op, x, s):
        return op.Mul(op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"]), s)

    def verify(self, context, x, s, conv_out) -> MatchResult:
        conv = conv_out.producer()
        w, sv = weight(conv.inputs[1]), weight(s)
        result = _check_conv(conv, MatchResult(), w)
        if not result:
            return result
        if sv is None or sv.dtype != w.dtype:
            return result.fail("the multiplier is not a constant of the weight's type")
        if channel_vector(sv, w.ndim, w.shape[0]) is None:
            return result.fail(f"the multiplier of shape {sv.shape} is not per output channel")
        return result

    def rewrite(self, op, x, s, conv_out):
        conv = conv_out.producer()
        w = weight(conv.inputs[1])
        scale = channel_vector(weight(s), w.ndim, w.shape[0]).astype(np.float64)
        new_w = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        bias, has = _conv_bias(conv)
        inputs = [x, new_initializer(op, new_w, conv.inputs[1].name)]
        if has:
            inputs.append(new_initializer(op, (bias * scale).astype(w.dtype), conv.inputs[2].name))
        return op.Conv(*inputs, **conv.attributes)


def _per_input_channel(conv, w, c) -> np.ndarray | None:
    """c as a [Cin] vector (Cin = W.shape[1] * group) when it is per input channel or scalar."""
    return channel_vector(c, w.ndim, w.shape[1] * attr_int(conv, "group", 1))


def _expand_to_weight(vec: np.ndarray, w: np.ndarray, group: int) -> np.ndarray:
    """[Cin] -> broadcastable against W [Cout, Cin/group, k...]: out channel o sees group o // (Cout/group)."""
    cout, cin_g = w.shape[0], w.shape[1]
    per_group = vec.reshape(group, cin_g)
    rows = per_group[np.arange(cout) // (cout // group)]  # [Cout, Cin/group]
    return rows.reshape(cout, cin_g, *([1] * (w.ndim - 2)))


class _BeforeConv(FuseRule):
    op_name: ClassVar[str] = ""

    def pattern(self, op, x, c):
        return op.Conv(getattr(op, self.op_name)(x, c), _allow_other_inputs=True, _outputs=["conv_out"])

    def verify(self, context, x, c, conv_out) -> MatchResult:
        conv = conv_out.producer()
        w, cv = weight(conv.inputs[1]), weight(c)
        result = _check_conv(conv, MatchResult(), w)
        if not result:
            return result
        if cv is None or cv.dtype != w.dtype:
            return result.fail(f"the {self.op_name} operand is not a constant of the weight's type")
        group = attr_int(conv, "group", 1)
        if w.shape[0] % group:
            return result.fail("Conv output channels not divisible by group")
        if _per_input_channel(conv, w, cv) is None:
            return result.fail(f"the {self.op_name} operand of shape {cv.shape} is not per input channel")
        if x.shape is not None and len(x.shape) != w.ndim:
            return result.fail("the other operand broadcasts the Conv input to another rank")
        return self._extra(conv, result)

    def _extra(self, conv, result):
        return result


class MulConv(_BeforeConv):
    rule_name: ClassVar[str] = "mul-conv"
    op_name: ClassVar[str] = "Mul"

    def rewrite(self, op, x, c, conv_out):
        conv = conv_out.producer()
        w = weight(conv.inputs[1])
        vec = _per_input_channel(conv, w, weight(c)).astype(np.float64)
        new_w = (w * _expand_to_weight(vec, w, attr_int(conv, "group", 1))).astype(w.dtype)
        return op.Conv(x, new_initializer(op, new_w, conv.inputs[1].name), *conv.inputs[2:], **conv.attributes)


class AddConv(_BeforeConv):
    rule_name: ClassVar[str] = "add-conv"
    op_name: ClassVar[str] = "Add"

    def _extra(self, conv, result):
        pads = attr_ints(conv, "pads", [])
        if any(pads) or attr_str(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return result.fail("the Conv pads its input: padded zeros would not be shifted by the Add")
        return result

    def rewrite(self, op, x, c, conv_out):
        conv = conv_out.producer()
        w = weight(conv.inputs[1])
        vec = _per_input_channel(conv, w, weight(c)).astype(np.float64)
        shift = (w.astype(np.float64) * _expand_to_weight(vec, w, attr_int(conv, "group", 1)))
        shift = shift.reshape(w.shape[0], -1).sum(axis=1)
        bias, has = _conv_bias(conv)
        new_b = ((bias.astype(np.float64) if has else 0.0) + shift).astype(w.dtype)
        name = conv.inputs[2].name if has else (conv.inputs[1].name + "_bias")
        return op.Conv(x, conv.inputs[1], new_initializer(op, new_b, name), **conv.attributes)


class _AfterGemm(FuseRule):
    op_name: ClassVar[str] = ""

    def pattern(self, op, a, c):
        return getattr(op, self.op_name)(op.Gemm(a, _allow_other_inputs=True, _outputs=["gemm_out"]), c)

    def verify(self, context, a, c, gemm_out) -> MatchResult:
        result = MatchResult()
        if opset(context) < 7:
            return result.fail("Gemm broadcasts C only from opset 7")
        gemm = gemm_out.producer()
        w, cv = weight(gemm.inputs[1]), weight(c)
        if w is None or w.ndim != 2:
            return result.fail("Gemm's B is not a constant 2-D initializer")
        has_c = len(gemm.inputs) > 2 and gemm.inputs[2] is not None
        if has_c and weight(gemm.inputs[2]) is None:
            return result.fail("Gemm's C is not a constant initializer")
        if cv is None or cv.dtype != w.dtype:
            return result.fail(f"the {self.op_name} operand is not a constant of B's type")
        n = w.shape[0] if attr_int(gemm, "transB", 0) else w.shape[1]
        return self._fits(cv, n, gemm_out, has_c, result)


class GemmMul(_AfterGemm):
    rule_name: ClassVar[str] = "gemm-mul"
    op_name: ClassVar[str] = "Mul"

    def _fits(self, cv, n, gemm_out, has_c, result):
        if channel_vector(cv, 2, n) is None:
            return result.fail(f"the multiplier of shape {cv.shape} is not per output column")
        return result

    def rewrite(self, op, a, c, gemm_out):
        gemm = gemm_out.producer()
        w = weight(gemm.inputs[1])
        trans_b = attr_int(gemm, "transB", 0)
        n = w.shape[0] if trans_b else w.shape[1]
        s = channel_vector(weight(c), 2, n).astype(np.float64)
        new_w = (w * (s[:, None] if trans_b else s[None, :])).astype(w.dtype)
        inputs = [a, new_initializer(op, new_w, gemm.inputs[1].name)]
        if len(gemm.inputs) > 2 and gemm.inputs[2] is not None:
            new_c = weight(gemm.inputs[2]) * attr_float(gemm, "beta", 1.0) * s
            inputs.append(new_initializer(op, new_c.astype(w.dtype), gemm.inputs[2].name))
        attrs = {k: v for k, v in gemm.attributes.items() if k != "beta"}
        return op.Gemm(*inputs, **attrs)


class GemmAdd(_AfterGemm):
    rule_name: ClassVar[str] = "gemm-add"
    op_name: ClassVar[str] = "Add"

    def _fits(self, cv, n, gemm_out, has_c, result):
        shape = gemm_out.shape
        m = shape[0] if shape is not None and len(shape) == 2 else None
        if not gemm_bias_fits(cv, m, n):
            return result.fail(f"the added constant of shape {cv.shape} does not broadcast one way to [M, N]")
        return result

    def rewrite(self, op, a, c, gemm_out):
        gemm = gemm_out.producer()
        w = weight(gemm.inputs[1])
        has_c = len(gemm.inputs) > 2 and gemm.inputs[2] is not None
        old = weight(gemm.inputs[2]).astype(np.float64) * attr_float(gemm, "beta", 1.0) if has_c else 0.0
        new_c = (old + weight(c)).astype(w.dtype)
        attrs = {k: v for k, v in gemm.attributes.items() if k != "beta"}
        name = gemm.inputs[2].name if has_c else (c.name or "gemm_c")
        return op.Gemm(a, gemm.inputs[1], new_initializer(op, new_c, name), **attrs)


RULES = {
    "conv-mul": (ConvMul.rule(),),
    "mul-conv": (MulConv.rule(),),
    "add-conv": (AddConv.rule(),),
    "gemm-mul": (GemmMul.rule(),),
    "gemm-add": (GemmAdd.rule(),),
}
