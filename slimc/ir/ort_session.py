"""ONNX Runtime sessions for in-memory models: one place, used by the reference runner and the backend.

It lives in `ir` so that running an ONNX graph for a check never imports `backend` (layers point one
way: backend -> ir, never back).
"""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

from ..errors import SlimcError, first_line
from .onnx_io import fits_protobuf, save_onnx

__all__ = ["session_for", "OPTIMIZATION_LEVELS"]

# Option spelling -> onnxruntime.GraphOptimizationLevel member.
OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                       "all": "ORT_ENABLE_ALL"}


def _session_options(threads: int, optimization: str):
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise SlimcError(f"ONNX Runtime optimization level '{optimization}' is not one of "
                         f"{', '.join(OPTIMIZATION_LEVELS)}.")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return so


def session_for(model, threads: int = 0, optimization: str = "all",
                providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An InferenceSession for an in-memory ModelProto (through a temp file when over 2 GiB)."""
    import onnxruntime as ort

    so = _session_options(threads, optimization)
    try:
        if fits_protobuf(model):
            return ort.InferenceSession(model.SerializeToString(), so, providers=list(providers))
        with tempfile.TemporaryDirectory(prefix="slimc-ort-") as tmp:
            path = save_onnx(model, os.path.join(tmp, "model.onnx"), external_data=True)
            return ort.InferenceSession(str(path), so, providers=list(providers))
    except Exception as exc:
        raise SlimcError(f"ONNX Runtime cannot load this model: {first_line(exc)}") from None
