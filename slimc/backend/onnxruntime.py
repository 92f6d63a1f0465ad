"""ONNX Runtime: the embedded default backend that runs anywhere."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from ..errors import SlimcError
from ..ir.files import write_unit
from ..ir.onnx_io import fits_protobuf, save_onnx
from .base import Artifact, Backend, register_backend
from .files import artifact_main_path

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeArtifact", "session_for"]

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def _session_options(threads: int = 0, optimization: str = "all"):
    import onnxruntime as ort

    if optimization not in _LEVELS:
        raise SlimcError(f"onnxruntime optimization level '{optimization}' is not one of {', '.join(_LEVELS)}.")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
    if threads:
        try:
            so.intra_op_num_threads = int(threads)
        except (TypeError, ValueError):
            raise SlimcError(f"onnxruntime option threads={threads!r} is not a whole number "
                             "(0 = ONNX Runtime's default).") from None
    so.log_severity_level = 3
    return so


def session_for(model, threads: int = 0, optimization: str = "all", providers: Sequence[str] = ("CPUExecutionProvider",)):
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SlimcError(f"ONNX Runtime cannot load this model: {first}") from None


def _dtype(ort_type: str):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    return table.get(ort_type, np.float32)


class OnnxRuntimeArtifact(Artifact):
    """An ONNX model with an ONNX Runtime session ready to run."""

    backend: ClassVar[str] = "onnxruntime"

    def __init__(self, model, threads: int = 0, optimization: str = "all", providers=("CPUExecutionProvider",)):
        self.model = model
        self.options = {"threads": threads, "optimization": optimization, "providers": list(providers)}
        self.session = session_for(model, threads, optimization, providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise SlimcError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}.")
        return self.session.run(None, dict(zip(self.input_names, inputs)))

    def sample_inputs(self, batch: int = 1) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        out = []
        for i in self.session.get_inputs():
            shape = [d if isinstance(d, int) else batch for d in i.shape]
            dt = _dtype(i.type)
            out.append(rng.standard_normal(shape).astype(dt) if np.issubdtype(dt, np.floating)
                       else np.zeros(shape, dtype=dt))
        return out

    def signature(self) -> dict:
        def sig(items):
            return [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape], "type": i.type}
                    for i in items]

        return {"inputs": sig(self.session.get_inputs()), "outputs": sig(self.session.get_outputs())}

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.backend, "onnxruntime": ort.__version__, **self.options}

    def save(self, path) -> str:
        """`path` (.onnx; external `.data` beside it when over 2 GiB) plus `path.json` with session options.

        The files are written as one unit: the sidecar lists their SHA-256 (see slimc.ir.files.write_unit).
        """
        path = artifact_main_path(self.backend, path)
        write_unit(path, lambda folder: save_onnx(self.model, folder / path.name),
                   {**self.describe(), **self.signature()})
        self.path = str(path)
        return self.path


@register_backend
@dataclass(frozen=True)
class OnnxRuntimeBackend(Backend):
    """Options: threads (intra-op, 0 = ORT's default), optimization (disable|basic|extended|all), providers."""

    name: ClassVar[str] = "onnxruntime"
    consumes: ClassVar[str] = "onnx"
    extra: ClassVar[str | None] = None

    def build(self, program) -> OnnxRuntimeArtifact:
        self.require("onnxruntime")
        opts = dict(self.options)
        unknown = set(opts) - {"threads", "optimization", "providers"}
        if unknown:
            raise SlimcError(f"unknown onnxruntime option(s): {', '.join(sorted(unknown))}; "
                             "known: threads, optimization, providers.")
        providers = opts.pop("providers", ("CPUExecutionProvider",))
        if isinstance(providers, str):
            providers = providers.split(",")
        return OnnxRuntimeArtifact(program.ir, providers=tuple(providers), **opts)
