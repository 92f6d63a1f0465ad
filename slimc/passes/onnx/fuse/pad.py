"""A constant Pad folded into the Conv / pooling op after it.

* pad-conv: Conv(Pad(x, zeros)) -> Conv(x, pads += pad) (zero padding is what Conv pads with)
* pad-pool: AveragePool(Pad(x, zeros)) with count_include_pad=1 -> AveragePool(x, pads += pad);
            MaxPool(Pad(x, -inf)) -> MaxPool(x, pads += pad)
Only the spatial axes may be padded, by non-negative amounts, with mode "constant".
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from ._rule import FuseRule, attr_int, attr_ints, attr_str, const, rank_of

__all__ = ["RULES"]


def _pad_amounts(pad_node, rank: int | None):
    """(pads [begin..., end...] over all axes, constant value) of a Pad node, or a reason string."""
    if attr_str(pad_node, "mode", "constant") != "constant":
        return "Pad mode is not 'constant'"
    inputs = pad_node.inputs
    if len(inputs) >= 2 and inputs[1] is not None:
        pads = const(inputs[1])
        if pads is None:
            return "the pads are not constants"
        value = 0.0
        if len(inputs) >= 3 and inputs[2] is not None:
            v = const(inputs[2])
            if v is None:
                return "the pad value is not a constant"
            value = float(v.reshape(-1)[0]) if v.size else 0.0
        if len(inputs) >= 4 and inputs[3] is not None:
            axes = const(inputs[3])
            if axes is None or rank is None:
                return "Pad has axes that are not constant, or the rank is unknown"
            full = [0] * (2 * rank)
            for i, a in enumerate(int(a) % rank for a in axes):
                full[a], full[a + rank] = int(pads[i]), int(pads[i + len(axes)])
            return full, value
        return [int(p) for p in pads], value
    pads = attr_ints(pad_node, "pads")  # opset < 11
    if pads is None:
        return "Pad has no pads"
    a = pad_node.attributes.get("value")
    return list(pads), (a.as_float() if a is not None else 0.0)


class _PadInto(FuseRule):
    op_type: ClassVar[str] = ""
    pad_value: ClassVar[float] = 0.0

    def pattern(self, op, x):
        padded = op.Pad(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["padded"])
        return getattr(op, self.op_type)(padded, _allow_other_inputs=True, _allow_other_attributes=True,
                                         _outputs=["out"])

    def _extra_check(self, node, merged, result) -> MatchResult:
        return result

    def verify(self, context, x, padded, out) -> MatchResult:
        result = MatchResult()
        node = out.producer()
        rank = rank_of(x)
        got = _pad_amounts(padded.producer(), rank)
        if isinstance(got, str):
            return result.fail(got)
        pads, value = got
        if value != self.pad_value and not (math.isinf(self.pad_value) and value == self.pad_value):
            return result.fail(f"Pad value {value} is not {self.pad_value}, what {self.op_type} pads with")
        n = len(pads) // 2
        if any(p < 0 for p in pads):
            return result.fail("negative pads crop, they cannot become op padding")
        if pads[0] or pads[1] or pads[n] or pads[n + 1]:
            return result.fail("batch or channel axes are padded")
        if len(node.outputs) != 1:
            return result.fail(f"{self.op_type} has more than one output (indices would change)")
        if attr_str(node, "auto_pad", "NOTSET") != "NOTSET":
            return result.fail(f"{self.op_type} uses auto_pad")
        if padded.dtype is not None and not padded.dtype.is_floating_point():
            return result.fail(f"{self.op_type} on {padded.dtype}")
        spatial = n - 2
        own = attr_ints(node, "pads", [0] * (2 * spatial))
        merged = [own[i] + pads[2 + i] for i in range(spatial)] + [own[spatial + i] + pads[n + 2 + i]
                                                                   for i in range(spatial)]
        return self._extra_check(node, merged, result)

    def rewrite(self, op, x, padded, out):
        node = out.producer()
        pads, _ = _pad_amounts(padded.producer(), rank_of(x))
        n = len(pads) // 2
        spatial = n - 2
        own = attr_ints(node, "pads", [0] * (2 * spatial))
        merged = [own[i] + pads[2 + i] for i in range(spatial)] + [own[spatial + i] + pads[n + 2 + i]
                                                                   for i in range(spatial)]
        attrs = {k: v for k, v in node.attributes.items() if k not in ("pads", "auto_pad")}
        return getattr(op, self.op_type)(x, *node.inputs[1:], pads=merged, **attrs)


class PadConv(_PadInto):
    rule_name: ClassVar[str] = "pad-conv"
    op_type: ClassVar[str] = "Conv"


class PadAveragePool(_PadInto):
    rule_name: ClassVar[str] = "pad-pool"
    op_type: ClassVar[str] = "AveragePool"

    def _extra_check(self, node, merged, result) -> MatchResult:
        if not attr_int(node, "count_include_pad", 0):
            return result.fail("AveragePool has count_include_pad=0: padded zeros would not be averaged")
        return _pool_window_check(node, merged, result)


def _pool_window_check(node, merged, result) -> MatchResult:
    """What both pools need: no ceil_mode, and every merged pad smaller than the (dilated) window."""
    if attr_int(node, "ceil_mode", 0):
        return result.fail("ceil_mode=1: windows past the end would count the padding differently")
    kernel = attr_ints(node, "kernel_shape", [])
    dil = attr_ints(node, "dilations", [1] * len(kernel))
    spatial = len(kernel)
    if any(max(merged[i], merged[spatial + i]) >= (kernel[i] - 1) * dil[i] + 1 for i in range(spatial)):
        return result.fail("the merged padding is not smaller than the pooling window")
    return result


class PadMaxPool(PadAveragePool):
    op_type: ClassVar[str] = "MaxPool"
    pad_value: ClassVar[float] = -np.inf

    def _extra_check(self, node, merged, result) -> MatchResult:
        if attr_int(node, "storage_order", 0):
            return result.fail("MaxPool with storage_order=1")
        return _pool_window_check(node, merged, result)


RULES = {
    "pad-conv": (PadConv.rule(),),
    "pad-pool": (PadAveragePool.rule(), PadMaxPool.rule()),
}
