"""Decomposed normalisations and activations back into the single ONNX ops.

* layer-norm: ReduceMean / Sub / Pow 2 / ReduceMean / Add eps / Sqrt / Div / Mul gamma / Add beta
              -> LayerNormalization (opset 17+)
* gelu:       0.5 * x * (1 + Erf(x / sqrt 2)) -> Gelu; the tanh approximation -> Gelu(approximate=tanh)
              (opset 20+)
The op is not available below its opset; the rule then rejects the match and says so.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from ._rule import FLOAT_TYPES, FuseRule, attr_int, attr_ints, const, new_initializer, opset, rank_of

__all__ = ["RULES"]


def _axes(node, rank: int) -> list[int] | None:
    axes = attr_ints(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        c = const(node.inputs[1])
        axes = None if c is None else [int(a) for a in c.reshape(-1)]
    return None if axes is None else sorted(a % rank for a in axes)


def _affine_param(value, normalized: tuple) -> np.ndarray | None:
    """gamma/beta as a tensor of the normalized shape, or None when it would broadcast further."""
    c = const(value)
    if c is None:
        return None
    while c.ndim > len(normalized) and c.shape[0] == 1:
        c = c.reshape(c.shape[1:])
    if c.ndim > len(normalized):
        return None
    try:
        return np.broadcast_to(c, normalized).copy()
    except ValueError:
        return None


class LayerNorm(FuseRule):
    """(x - mean) / sqrt(var + eps) [* gamma + beta] over trailing axes -> LayerNormalization.

    Variants exporters write: the square as Pow(d, 2) or d * d; the division as Div or as a Mul by
    Reciprocal(Sqrt(.)); with or without the affine tail (no tail: scale of ones, no bias).
    """

    rule_name: ClassVar[str] = "layer-norm"

    def __init__(self, square: str, divide: str, affine: bool):
        super().__init__(name=f"LayerNorm_{square}_{divide}{'_affine' if affine else ''}")
        self.square, self.divide, self.affine = square, divide, affine

    def pattern(self, op, x, two, eps, gamma, beta):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["mean"])
        d = op.Sub(x, mean)
        squared = op.Pow(d, two) if self.square == "pow" else op.Mul(d, d)
        var = op.ReduceMean(squared, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["var"])
        std = op.Sqrt(op.Add(var, eps))
        normed = op.Div(d, std) if self.divide == "div" else op.Mul(d, op.Reciprocal(std))
        return op.Add(op.Mul(normed, gamma), beta) if self.affine else normed

    def verify(self, context, x, eps, mean, var, two=None, gamma=None, beta=None, **_) -> MatchResult:
        result = MatchResult()
        if opset(context) < 17:
            return result.fail(f"LayerNormalization needs opset 17, the model has opset {opset(context)}")
        if x.dtype not in FLOAT_TYPES:
            return result.fail(f"LayerNormalization does not take {x.dtype}")
        rank = rank_of(x)
        if rank is None:
            return result.fail("the input rank is unknown")
        a1, a2 = _axes(mean.producer(), rank), _axes(var.producer(), rank)
        if a1 is None or a1 != a2 or a1 != list(range(rank - len(a1), rank)):
            return result.fail(f"the means reduce axes {a1} and {a2}, not the same trailing axes")
        if not attr_int(mean.producer(), "keepdims", 1) or not attr_int(var.producer(), "keepdims", 1):
            return result.fail("a ReduceMean drops the reduced axes (keepdims=0)")
        if self.square == "pow":
            p = const(two)
            if p is None or p.size != 1 or float(p.reshape(-1)[0]) != 2.0:
                return result.fail("the variance does not square (Pow 2)")
        e = const(eps)
        if e is None or e.size != 1:
            return result.fail("epsilon is not a constant scalar")
        dims = tuple(x.shape)[rank - len(a1):]
        if not all(isinstance(d, int) for d in dims):
            return result.fail("the normalized dimensions are not static")
        if self.affine and (_affine_param(gamma, dims) is None or _affine_param(beta, dims) is None):
            return result.fail("gamma or beta is not a constant of the normalized shape")
        if not self.affine and _feeds_affine_tail(context, mean):
            return result.fail("an affine tail (Mul gamma, Add beta) follows: the affine variant takes it")
        return result

    def rewrite(self, op, x, eps, mean, var, two=None, gamma=None, beta=None, **_):
        rank = rank_of(x)
        k = len(_axes(mean.producer(), rank))
        dims = tuple(x.shape)[rank - k:]
        dtype = x.dtype.numpy()
        epsilon = float(const(eps).reshape(-1)[0])
        if not self.affine:
            ones = new_initializer(op, np.ones(dims, dtype=dtype), "ln_scale")
            return op.LayerNormalization(x, ones, axis=rank - k, epsilon=epsilon)
        scale = new_initializer(op, _affine_param(gamma, dims).astype(dtype), gamma.name or "ln_scale")
        bias = new_initializer(op, _affine_param(beta, dims).astype(dtype), beta.name or "ln_bias")
        return op.LayerNormalization(x, scale, bias, axis=rank - k, epsilon=epsilon)


def _feeds_affine_tail(context, mean) -> bool:
    """Whether the normalized value (the matched root's output) goes on into Mul(const) -> Add(const)."""
    root = context.root if context is not None else None
    if root is None or len(root.outputs[0].uses()) != 1:
        return False
    user = next(iter(root.outputs[0].uses())).node
    if user.op_type != "Mul" or const(user.inputs[1]) is None or len(user.outputs[0].uses()) != 1:
        return False
    tail = next(iter(user.outputs[0].uses())).node
    return tail.op_type == "Add" and const(tail.inputs[1]) is not None


_SQRT2 = math.sqrt(2.0)


def _mul(op, a, b, swap: bool):
    # Mul of two computed values: either operand order occurs. (Constants are always on the right:
    # the fuse pass moves them there before matching, so patterns need no other variants.)
    return op.Mul(b, a) if swap else op.Mul(a, b)


def _gelu_tail(op, x, t, order: str, swap: bool):
    """0.5 * x * t in the three association orders exporters write."""
    if order == "x_t_half":      # (x * t) * 0.5
        return op.Mul(_mul(op, x, t, swap), 0.5)
    if order == "x_half_t":      # x * (t * 0.5)
        return _mul(op, x, op.Mul(t, 0.5), swap)
    return _mul(op, op.Mul(x, 0.5), t, swap)  # (x * 0.5) * t


class _GeluBase(FuseRule):
    rule_name: ClassVar[str] = "gelu"
    approximate: ClassVar[str] = "none"

    def __init__(self, order: str, swap: bool, form: str):
        super().__init__(name=f"{type(self).__name__}_{form}_{order}{'_swapped' if swap else ''}")
        self.order, self.swap, self.form = order, swap, form

    def verify(self, context, x) -> MatchResult:
        result = MatchResult()
        if opset(context) < 20:
            return result.fail(f"Gelu needs opset 20, the model has opset {opset(context)}")
        if x.dtype is not None and x.dtype not in FLOAT_TYPES:
            return result.fail(f"Gelu does not take {x.dtype}")
        return result

    def rewrite(self, op, x):
        if self.approximate == "tanh":
            return op.Gelu(x, approximate="tanh")
        return op.Gelu(x)


class GeluErf(_GeluBase):
    """0.5 * x * (1 + Erf(x / sqrt 2)); the division may be a Mul by 1/sqrt 2."""

    def pattern(self, op, x):
        arg = op.Div(x, _SQRT2) if self.form == "div" else op.Mul(x, 1.0 / _SQRT2)
        return _gelu_tail(op, x, op.Add(op.Erf(arg), 1.0), self.order, self.swap)


class GeluTanh(_GeluBase):
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))); x^3 as Pow or as x * (x * x)."""

    approximate: ClassVar[str] = "tanh"

    def pattern(self, op, x):
        if self.form == "pow":
            cube = op.Pow(x, 3.0)
        else:
            cube = _mul(op, x, op.Mul(x, x), self.form == "mul-swapped")
        inner = op.Mul(op.Add(x, op.Mul(cube, 0.044715)), math.sqrt(2.0 / math.pi))
        return _gelu_tail(op, x, op.Add(op.Tanh(inner), 1.0), self.order, self.swap)


_ORDERS = ("x_t_half", "x_half_t", "half_first")

RULES = {
    "layer-norm": tuple(LayerNorm.rule(square, divide, affine) for affine in (True, False)
                        for square in ("pow", "mul") for divide in ("div", "reciprocal")),
    "gelu": tuple(cls.rule(order, swap, form) for cls, forms in ((GeluErf, ("div", "mul")),
                                                                 (GeluTanh, ("pow", "mul", "mul-swapped")))
                  for form in forms for order in _ORDERS for swap in (False, True)),
}
