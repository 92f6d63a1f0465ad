"""Which TensorRT to use — the full `tensorrt` or TensorRT for RTX (`tensorrt_rtx`) — and a quiet logger.

Both share the Python API the backend needs (Builder, OnnxParser, Runtime) and both are strongly typed
here: precision comes from the ONNX graph's types, never from FP16/INT8 builder flags.
The full TensorRT needs a GPU to build; TensorRT for RTX builds ahead of time on a CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from ...errors import SlimcError

__all__ = ["TrtFlavor", "import_flavor", "importable_flavors", "make_logger", "INSTALL_HINT", "check_int8_graph"]

_MODULES = {"full": "tensorrt", "rtx": "tensorrt_rtx"}
INSTALL_HINT = ("pip install 'slimc[tensorrt]' (TensorRT for RTX, package tensorrt-rtx-cu13, builds engines on a "
                "CPU) or pip install tensorrt (the full TensorRT, needs an NVIDIA GPU to build)")


@dataclass(frozen=True)
class TrtFlavor:
    """An imported TensorRT: name ('full' or 'rtx'), the module, its version."""

    name: str
    module: Any
    version: str

    @property
    def label(self) -> str:
        return f"TensorRT {self.version}" if self.name == "full" else f"TensorRT for RTX {self.version}"

    def as_dict(self) -> dict:
        return {"flavor": self.name, "module": self.module.__name__, "version": self.version}


def importable_flavors() -> list[str]:
    """Flavors whose module can be found (without importing it)."""
    out = []
    for name, module in _MODULES.items():
        try:
            if importlib.util.find_spec(module) is not None:
                out.append(name)
        except (ImportError, ValueError):
            pass
    return out


def _import(name: str) -> TrtFlavor | None:
    try:
        module = importlib.import_module(_MODULES[name])
    except Exception:  # a stub or broken install raises more than ImportError
        return None
    if not hasattr(module, "Builder"):
        return None
    return TrtFlavor(name, module, str(getattr(module, "__version__", "unknown")))


def import_flavor(flavor: str = "auto") -> TrtFlavor:
    """The TensorRT to use. 'auto': the full one when importable and a GPU is usable, else RTX."""
    if flavor in _MODULES:
        found = _import(flavor)
        if found is None:
            raise SlimcError(f"backend 'tensorrt' with flavor={flavor} needs the Python module '{_MODULES[flavor]}', "
                             f"which is not importable here. Install it with: {INSTALL_HINT}.")
        return found
    if flavor != "auto":
        raise SlimcError(f"TensorRT flavor '{flavor}' is not one of auto, full, rtx.")
    candidates = importable_flavors()
    if "full" in candidates:
        from .gpu_probe import probe_gpu

        # The full TensorRT cannot even create a builder without a GPU; RTX can, so it wins there.
        if probe_gpu().usable or "rtx" not in candidates:
            found = _import("full")
            if found is not None:
                return found
    found = _import("rtx") if "rtx" in candidates else None
    if found is None:
        raise SlimcError(f"backend 'tensorrt' needs TensorRT, but neither 'tensorrt' nor 'tensorrt_rtx' is importable "
                         f"here. Install it with: {INSTALL_HINT}.")
    return found


def check_int8_graph(flavor: TrtFlavor, model) -> None:
    """Refuse an int8 QDQ graph (activations quantized, as quantize-int8 writes) that this TensorRT cannot build.

    TensorRT for RTX has no int8 activation kernels (weight-only int8 GEMM and FP8 only, FP8 on compute
    capability >= 8.9); the full TensorRT takes int8 QDQ but only symmetric (int8, zero point 0).
    """
    inits = {i.name: i for i in model.graph.initializer}
    act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    if not act_q:
        return
    if flavor.name == "rtx":
        raise SlimcError(f"{flavor.label} cannot build this int8 QDQ graph ({len(act_q)} activations quantized): it "
                         "has no int8 activation kernels, only weight-only int8 GEMM and FP8 (compute capability >= "
                         "8.9). Use the full TensorRT (pip install tensorrt; backend option flavor=full) with "
                         "quantize-int8{symmetric-activations=true}, run the int8 graph on onnxruntime or openvino, "
                         "or drop quantize-int8 and use to-fp16 for TensorRT for RTX.")
    from onnx import TensorProto, numpy_helper

    asymmetric = [n.name for n in act_q if len(n.input) < 3 or n.input[2] not in inits
                  or inits[n.input[2]].data_type != TensorProto.INT8 or numpy_helper.to_array(inits[n.input[2]]).any()]
    if asymmetric:
        raise SlimcError(f"{flavor.label} takes int8 QDQ graphs with symmetric int8 activations only, and "
                         f"{len(asymmetric)} QuantizeLinear node(s) (e.g. '{asymmetric[0]}') use uint8 or a nonzero "
                         "zero point. Quantize for TensorRT with quantize-int8{symmetric-activations=true}.")


def make_logger(trt, keep_from: str = "WARNING"):
    """A TensorRT logger that keeps messages (for error reports) instead of printing them."""
    order = ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]
    limit = order.index(keep_from)

    class _KeepingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            name = getattr(severity, "name", str(severity))
            if name in order and order.index(name) <= limit:
                self.messages.append((name, msg))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("INTERNAL_ERROR", "ERROR")]

    return _KeepingLogger()
