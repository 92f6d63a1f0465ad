"""Handlers for the modules onnx2torch builds, so ONNX models lifted to FX prune as well as torch ones.

Registered only when onnx2torch is importable. They map onnx2torch's layers to the generic kinds
of the table: its Concat is torch.cat, Sum and elementwise math are pointwise, global average
pooling keeps channels, Transpose is data movement run on the labels.
"""

from __future__ import annotations

import dataclasses

from .functional import Cat
from .handlers import ApplyToLabels, Channelwise, Handler, Pointwise, register_builtin

__all__ = ["register_onnx2torch_handlers"]


class _Concat(Handler):
    """OnnxConcat(axis) takes the tensors as separate arguments: hand them to cat's handler as a list."""

    def propagate(self, ctx):
        as_cat = dataclasses.replace(ctx, args=(list(ctx.args), ctx.module.axis), kwargs={},
                                     arg_labels=(list(ctx.arg_labels), None), kwarg_labels={})
        return Cat().propagate(as_cat)


class _BinaryMath(Handler):
    """Add/Sub/Mul/Div with numpy broadcasting are pointwise; the legacy axis-broadcast form is not followed."""

    def propagate(self, ctx):
        if getattr(ctx.module, "broadcast", None) and getattr(ctx.module, "axis", None) is not None:
            ctx.pin_inputs(f"{ctx.describe()} broadcasts along an explicit axis (opset < 7)")
            return ctx.untracked_out()
        return Pointwise().propagate(ctx)


def register_onnx2torch_handlers() -> bool:
    try:
        from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
        from onnx2torch.node_converters.concat import OnnxConcat
        from onnx2torch.node_converters.global_average_pool import OnnxGlobalAveragePoolWithKnownInputShape
        from onnx2torch.node_converters.sum import OnnxSum
        from onnx2torch.node_converters.transpose import OnnxTranspose
    except ImportError:
        return False
    register_builtin(OnnxConcat, _Concat())
    register_builtin(OnnxSum, Pointwise())
    register_builtin(OnnxBinaryMathOperation, _BinaryMath())
    register_builtin(OnnxGlobalAveragePoolWithKnownInputShape, Channelwise(1))
    register_builtin(OnnxTranspose, ApplyToLabels())
    return True
