"""`to-onnx`: the one-way lowering from the FX level to ONNX (torch.onnx.export).

The default exporter is torch.onnx's dynamo exporter, fed the program's cached ExportedProgram
(the same torch.export graph the FX passes analysed), so the module is not captured twice. The
TorchScript exporter stays an option (`exporter=torchscript`): it is faster on big CNNs and
writes older opsets. The report carries the opset the exporter actually wrote.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..errors import SlimcError, first_line
from .registry import Pass, PassResult, register_pass

__all__ = ["ToOnnx"]


@register_pass
@dataclass(frozen=True)
class ToOnnx(Pass):
    """Export the FX program with torch.onnx.export.

    opset:          ONNX opset to target (the dynamo exporter writes 18 or newer)
    dynamic_batch:  make axis 0 of inputs and outputs symbolic ('batch'); 'auto' follows the program
    exporter:       'dynamo' (torch.export based, the default) or 'torchscript' (the legacy exporter)
    """

    name: ClassVar[str] = "to-onnx"
    level: ClassVar[str] = "fx"
    produces: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "lower the FX module to ONNX with torch.onnx.export"

    opset: int = 18
    dynamic_batch: Literal["auto", "true", "false"] = "auto"
    exporter: Literal["torchscript", "dynamo"] = "dynamo"

    def apply(self, program) -> PassResult:
        dynamic = program.dynamic_batch if self.dynamic_batch == "auto" else self.dynamic_batch == "true"
        exporter, note = self.exporter, None
        try:
            try:
                model = self._dynamo(program, dynamic) if exporter == "dynamo" else self._torchscript(program, dynamic)
            except SlimcError as refused:
                if program.frontend != "symbolic_trace":
                    raise
                # the model came in through the symbolic_trace fallback: torch.export refused it before
                exporter, note = "torchscript", str(refused).split(": ", 1)[0]
                model = self._torchscript(program, dynamic)
        except SlimcError:
            raise
        except Exception as exc:
            first = first_line(exc)
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            raise SlimcError(
                f"torch.onnx.export failed ({exporter} exporter, opset {self.opset}): {first}. "
                f"Try the other exporter with 'to-onnx{{exporter={other}}}' or another opset."
            ) from None
        written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), self.opset)
        details = {"opset": written, "exporter": exporter, "dynamic_batch": dynamic}
        if written != self.opset:
            details["opset_asked"] = self.opset
        if note:
            details["fallback"] = f"{note}; lowered with the torchscript exporter"
        # The FX module stays reachable after lowering: it is what a user fine-tunes.
        return PassResult(program.with_ir(model, dynamic_batch=dynamic, fx_module=program.ir), changed=True,
                          details=details)

    def _dynamo(self, program, dynamic: bool):
        import torch

        exported = program.exported(dynamic_batch=dynamic)  # SlimcError (user frame, fix) when export refuses
        # onnxscript logs a traceback when it cannot convert down to an older opset, then writes its own.
        quiet = logging.getLogger("onnxscript")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                onnx_program = torch.onnx.export(exported, (), dynamo=True, opset_version=self.opset,
                                                 input_names=list(program.input_names),
                                                 output_names=list(program.output_names), verbose=False)
        finally:
            quiet.setLevel(level)
        model = onnx_program.model_proto
        if dynamic:
            _name_batch_axis(model)
        _scope_node_names(model)
        return model

    def _torchscript(self, program, dynamic: bool):
        import onnx
        import torch

        in_names, out_names = list(program.input_names), list(program.output_names)
        axes = {n: {0: "batch"} for n in in_names + out_names} if dynamic else None
        with tempfile.TemporaryDirectory(prefix="slimc-export-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            # Not under no_grad: there nn.MultiheadAttention takes its fused fast path
            # (aten::_native_multi_head_attention), which the TorchScript exporter cannot export.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(program.ir, tuple(program.example_inputs), path, dynamo=False,
                                  opset_version=self.opset, input_names=in_names, output_names=out_names,
                                  dynamic_axes=axes, do_constant_folding=True)
            return onnx.load(path)  # pulls external data (models over 2 GiB) into memory


def _scope_node_names(model) -> None:
    """Name nodes after the module that made them ('/layer1/layer1.0/conv1/Conv'), as the TorchScript
    exporter does, instead of the dynamo exporter's 'node_conv2d_7': names users exclude layers by
    (quantize-int8, profiles) and read in Netron stay the same whichever exporter ran."""
    import ast

    taken: dict[str, int] = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        if not isinstance(scopes, list) or not scopes:
            continue
        base = "/" + "".join(f"{_scope_atom(s)}/" for s in scopes[:-1] if s) + node.op_type
        count = taken.get(base, 0)
        taken[base] = count + 1
        node.name = base if count == 0 else f"{base}_{count}"


def _scope_atom(qualified: str) -> str:
    """'layer1.0.conv1' -> 'conv1', 'layer1.0' -> 'layer1.0': the dynamo exporter's scopes are qualified
    module paths; the TorchScript exporter names each scope from its last non-numeric atom on."""
    atoms = qualified.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified


def _name_batch_axis(model) -> None:
    """The dynamo exporter names the symbolic batch 's0'/'s77'; call it 'batch' as the torchscript path does."""
    g = model.graph
    first = g.input[0].type.tensor_type.shape.dim if g.input else []
    symbol = first[0].dim_param if first and first[0].HasField("dim_param") else None
    if not symbol:
        return
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param == symbol:
                d.dim_param = "batch"
