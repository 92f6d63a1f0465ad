"""`to-onnx`: the one-way lowering from the FX level to ONNX (torch.onnx.export)."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..errors import SlimcError
from .registry import Pass, PassResult, register_pass

__all__ = ["ToOnnx"]


@register_pass
@dataclass(frozen=True)
class ToOnnx(Pass):
    """Export the FX program with torch.onnx.export.

    opset:          ONNX opset to target
    dynamic_batch:  make axis 0 of inputs and outputs symbolic ('batch'); 'auto' follows the program
    exporter:       'torchscript' (fast, mature graphs) or 'dynamo' (torch.export based)
    """

    name: ClassVar[str] = "to-onnx"
    level: ClassVar[str] = "fx"
    produces: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "lower the FX module to ONNX with torch.onnx.export"

    opset: int = 17
    dynamic_batch: Literal["auto", "true", "false"] = "auto"
    exporter: Literal["torchscript", "dynamo"] = "torchscript"

    def apply(self, program) -> PassResult:
        import onnx
        import torch

        dynamic = program.dynamic_batch if self.dynamic_batch == "auto" else self.dynamic_batch == "true"
        module = program.ir
        inputs = tuple(program.example_inputs)
        in_names = list(program.input_names)
        out_names = list(program.output_names)
        axes = {n: {0: "batch"} for n in in_names + out_names} if dynamic else None
        with tempfile.TemporaryDirectory(prefix="slimc-export-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            try:
                # Not under no_grad: there nn.MultiheadAttention takes its fused fast path
                # (aten::_native_multi_head_attention), which the TorchScript exporter cannot export.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if self.exporter == "dynamo":
                        # Positional: a dict would need forward()'s argument names, not the ONNX input names.
                        dyn = tuple({0: torch.export.Dim("batch")} for _ in in_names) if dynamic else None
                        prog = torch.onnx.export(module, inputs, dynamo=True, opset_version=self.opset,
                                                 input_names=in_names, output_names=out_names,
                                                 dynamic_shapes=dyn, verbose=False)
                        prog.save(path, external_data=True)
                    else:
                        torch.onnx.export(module, inputs, path, dynamo=False, opset_version=self.opset,
                                          input_names=in_names, output_names=out_names, dynamic_axes=axes,
                                          do_constant_folding=True)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SlimcError(
                    f"torch.onnx.export failed ({self.exporter} exporter, opset {self.opset}): {first}. "
                    f"Try the other exporter with 'to-onnx{{exporter={'dynamo' if self.exporter == 'torchscript' else 'torchscript'}}}' "
                    "or another opset."
                ) from None
            model = onnx.load(path)  # pulls external data (models over 2 GiB) into memory
        # The FX module stays reachable after lowering: it is what a user fine-tunes.
        metadata = {**program.metadata, "fx_module": module}
        return PassResult(program.with_ir(model, dynamic_batch=dynamic, metadata=metadata), changed=True,
                          details={"opset": self.opset, "exporter": self.exporter, "dynamic_batch": dynamic})
