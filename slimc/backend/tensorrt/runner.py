"""Run a serialized engine on an NVIDIA GPU: `EngineRunner` (a context manager) and `TensorRTArtifact`.

Device buffers are torch CUDA tensors and work is queued on a torch CUDA stream
(`execute_async_v3`), so no extra CUDA Python package is needed. Before the TensorRT runtime
is touched, `probe_gpu` (a subprocess) confirms there is a GPU to run on: without one, a
clear SlimcError says what was found instead of a crash inside the runtime.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np

from ...errors import SlimcError
from ...ir.files import write_unit
from ..base import Artifact, BenchmarkResult, CannotRunHere, as_numpy, input_list, sample_arrays, time_calls
from .flavor import TrtFlavor, make_logger
from .gpu_probe import probe_gpu

__all__ = ["GpuUnavailableError", "EngineRunner", "TensorRTArtifact", "require_gpu", "as_tensors"]


class GpuUnavailableError(CannotRunHere):
    """Running (not building) an engine needs an NVIDIA GPU and none is usable here."""


def require_gpu(doing: str = "run a TensorRT engine") -> None:
    status = probe_gpu()
    if not status.usable:
        raise GpuUnavailableError(
            f"to {doing} slimc needs an NVIDIA GPU with a working CUDA driver, and none is usable here: "
            f"{status.reason}. Building engines works without one (the engine and its .json sidecar can be saved "
            "and run on a GPU machine); to run here, use backend onnxruntime.")


def as_tensors(inputs: Sequence) -> list:
    """Torch tensors of numpy arrays or tensors (tensors are kept as they are, on their device)."""
    import torch

    return [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]


def _torch_dtype(trt_dtype):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    name = getattr(trt_dtype, "name", str(trt_dtype))
    if name not in table:
        raise SlimcError(f"engine tensors of type {name} cannot be exchanged through numpy by slimc yet.")
    return table[name]


class EngineRunner:
    """Deserializes an engine and runs it on torch CUDA tensors.

    Example::

        with EngineRunner(flavor, engine_bytes) as runner:
            outputs = runner.infer([x])          # numpy in, numpy out
    """

    def __init__(self, flavor: TrtFlavor, engine: bytes):
        self.flavor, self._engine_bytes = flavor, engine
        self.engine = self.context = self.stream = None
        self._outputs: list = []

    def __enter__(self) -> "EngineRunner":
        require_gpu()
        import torch

        trt = self.flavor.module
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self._engine_bytes)
        if self.engine is None:
            why = " | ".join(self.logger.errors()[-2:]) or "no reason given"
            raise SlimcError(f"{self.flavor.label} cannot load this engine on this GPU: {why}. Engines are tied to "
                             "the TensorRT version (and, for the full TensorRT, the GPU) that built them; rebuild it.")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inp = self.flavor.module.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == inp]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != inp]
        return self

    def __exit__(self, *exc) -> None:
        self.context = self.engine = self.runtime = None
        self._outputs = []

    def bind(self, tensors) -> list:
        """Bind device tensors as inputs, allocate outputs; returns the output tensors."""
        import torch

        if len(tensors) != len(self.input_names):
            raise SlimcError(f"the engine takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(tensors)}.")
        # Copies and allocations happen on the engine's stream, so execution is ordered after them.
        with torch.cuda.stream(self.stream):
            return self._bind(tensors)

    def _bind(self, tensors) -> list:
        import torch

        self._inputs = []
        for name, t in zip(self.input_names, tensors):
            want = _torch_dtype(self.engine.get_tensor_dtype(name))
            t = t.to(device="cuda", dtype=want if t.is_floating_point() == want.is_floating_point else t.dtype)
            if t.dtype != want:
                raise SlimcError(f"input '{name}' must be {want}, got {t.dtype}.")
            t = t.contiguous()
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise SlimcError(f"input '{name}' of shape {tuple(t.shape)} is outside the engine's optimization "
                                 "profile; rebuild with a wider dynamic_batch=MIN:OPT:MAX.")
            self.context.set_tensor_address(name, t.data_ptr())
            self._inputs.append(t)
        self._outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise SlimcError(f"output '{name}' has a data-dependent shape {shape}; slimc's TensorRT runner does "
                                 "not support those yet.")
            out = torch.empty(shape, dtype=_torch_dtype(self.engine.get_tensor_dtype(name)), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            self._outputs.append(out)
        return self._outputs

    def execute(self) -> None:
        """Run once on the bound buffers and wait for the GPU."""
        import torch

        self.stream.wait_stream(torch.cuda.current_stream())  # tensors the caller bound from another stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise SlimcError(f"{self.flavor.label} failed to execute the engine: "
                             f"{' | '.join(self.logger.errors()[-2:]) or 'no reason given'}.")
        self.stream.synchronize()

    def infer(self, inputs: Sequence) -> list[np.ndarray]:
        """Numpy arrays or torch tensors in (tensors already on the GPU are not copied), numpy out."""
        outs = self.bind(as_tensors(inputs))
        self.execute()
        return [as_numpy(o) for o in outs]


class TensorRTArtifact(Artifact):
    """A serialized TensorRT engine with what slimc knows about it (signature, options, cache state)."""

    backend: ClassVar[str] = "tensorrt"

    def __init__(self, flavor: TrtFlavor, engine: bytes, info: dict):
        self.flavor, self.engine, self.info = flavor, engine, dict(info)
        self._runner: EngineRunner | None = None

    @property
    def signature(self) -> dict:
        return {"inputs": self.info.get("inputs", []), "outputs": self.info.get("outputs", [])}

    def _open(self) -> EngineRunner:
        if self._runner is None:
            self._runner = EngineRunner(self.flavor, self.engine).__enter__()
        return self._runner

    def _run(self, inputs: list) -> list[np.ndarray]:
        return self._open().infer(inputs)

    def benchmark(self, inputs=None, warmup: int = 5, iters: int = 30) -> BenchmarkResult:
        """Latency of the engine alone: inputs stay on the GPU, each call is execute + stream sync."""
        runner = self._open()
        runner.bind(as_tensors(input_list(inputs) if inputs is not None else self.sample_inputs()))
        return time_calls(runner.execute, warmup, iters)

    def sample_inputs(self, batch: int | None = None) -> list[np.ndarray]:
        profile, examples, specs = self.info.get("profile") or {}, self.info.get("example_shapes") or [], []
        for n, spec in enumerate(self.signature["inputs"]):
            shape = list(profile[spec["name"]]["opt"]) if spec["name"] in profile else \
                [d if d >= 0 else (examples[n][a] if n < len(examples) else 1) for a, d in enumerate(spec["shape"])]
            if batch is not None and shape:
                shape[0] = batch
            specs.append((shape, "float32" if spec["dtype"] in ("bfloat16", "float8_e4m3") else spec["dtype"]))
        return sample_arrays(specs)

    def describe(self) -> dict:
        keys = ("cache_hit", "cache_key", "cache_entry", "cache_note", "build_seconds", "backend_seconds", "notes",
                "options", "profile")
        return {"backend": self.backend, **self.flavor.as_dict(), "tensorrt": self.flavor.version,
                "engine_bytes": len(self.engine), **{k: self.info[k] for k in keys if k in self.info}}

    def sidecar(self) -> dict:
        import hashlib

        return {**self.describe(), **self.signature, "example_shapes": self.info.get("example_shapes"),
                "graph_hash": self.info.get("graph_hash"), "engine_sha256": hashlib.sha256(self.engine).hexdigest(),
                "slimc": _slimc_version()}

    def save(self, path) -> str:
        """`path` (.engine; `model.engine` inside it when a directory) plus `path.json`, the sidecar."""
        from ..files import artifact_main_path

        path = artifact_main_path(self.backend, path)
        write_unit(path, lambda folder: (folder / path.name).write_bytes(self.engine), self.sidecar())
        self.path = str(path)
        return self.path

    def close(self) -> None:
        if self._runner is not None:
            self._runner.__exit__(None, None, None)
            self._runner = None


def _slimc_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slimc")
    except PackageNotFoundError:
        return "unknown"
