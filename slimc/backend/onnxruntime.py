"""ONNX Runtime: the embedded default backend that runs anywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from ..errors import SlimcError
from ..ir.files import write_unit
from ..ir.onnx_io import save_onnx
from ..ir.ort_session import session_for
from .base import Artifact, Backend, as_numpy, register_backend, sample_arrays
from .files import artifact_main_path

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeArtifact", "OnnxRuntimeOptions", "session_for"]


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """What the `onnxruntime` backend accepts (`--backend-option threads=2`).

    threads:      intra-op threads, 0 = ONNX Runtime's default
    optimization: graph optimization level of the session
    providers:    execution providers, in order of preference
    """

    threads: int = 0
    optimization: Literal["disable", "basic", "extended", "all"] = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError(f"threads={self.threads} must be 0 (ONNX Runtime's default) or more")
        if not self.providers:
            raise ValueError("providers needs at least one execution provider, e.g. CPUExecutionProvider")

    def as_dict(self) -> dict:
        return {"threads": self.threads, "optimization": self.optimization, "providers": list(self.providers)}


def _dtype(ort_type: str):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    return table.get(ort_type, np.float32)


class OnnxRuntimeArtifact(Artifact):
    """An ONNX model with an ONNX Runtime session ready to run."""

    backend: ClassVar[str] = "onnxruntime"

    def __init__(self, model, options: OnnxRuntimeOptions | None = None):
        self.model = model
        self.options = options or OnnxRuntimeOptions()
        o = self.options
        self.session = session_for(model, o.threads, o.optimization, o.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _run(self, inputs: list) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise SlimcError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}.")
        return self.session.run(None, {n: as_numpy(x) for n, x in zip(self.input_names, inputs)})

    def sample_inputs(self, batch: int = 1) -> list[np.ndarray]:
        return sample_arrays([([d if isinstance(d, int) else batch for d in i.shape], _dtype(i.type))
                              for i in self.session.get_inputs()])

    def signature(self) -> dict:
        def sig(items):
            return [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape], "type": i.type}
                    for i in items]

        return {"inputs": sig(self.session.get_inputs()), "outputs": sig(self.session.get_outputs())}

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.backend, "onnxruntime": ort.__version__, **self.options.as_dict()}

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
    """ONNX Runtime on the CPU by default. Options: see OnnxRuntimeOptions."""

    name: ClassVar[str] = "onnxruntime"
    consumes: ClassVar[str] = "onnx"
    extra: ClassVar[str | None] = None
    Options: ClassVar[type] = OnnxRuntimeOptions

    def build(self, program) -> OnnxRuntimeArtifact:
        self.require("onnxruntime")
        return OnnxRuntimeArtifact(program.ir, self.options)
