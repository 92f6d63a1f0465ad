"""NVIDIA TensorRT backend: ONNX → serialized engine (cached), run on a GPU with torch CUDA buffers.

TensorRT for RTX (`pip install 'slimc[tensorrt]'`) builds engines ahead of time on a CPU; the full
`tensorrt` is used instead when importable and a GPU is usable (or with `flavor=full`).
Nothing here imports TensorRT until a build, a report or a run asks for it.

Example::

    result = slimc.compile(model, x, backend="tensorrt", backend_options={"cache_dir": "/tmp/engines"})
    result.artifact.save("out/model.engine")      # + out/model.json, the sidecar
"""

from .backend import TensorRTBackend, build_artifact
from .engine_file import format_engine_info, inspect_engine, load_engine
from .gpu_probe import GpuStatus, probe_gpu
from .options import TensorRTOptions, parse_options
from .parser_report import capability_report, format_capability
from .runner import EngineRunner, GpuUnavailableError, TensorRTArtifact

__all__ = [
    "EngineRunner",
    "GpuStatus",
    "GpuUnavailableError",
    "TensorRTArtifact",
    "TensorRTBackend",
    "TensorRTOptions",
    "build_artifact",
    "capability_report",
    "format_capability",
    "format_engine_info",
    "inspect_engine",
    "load_engine",
    "parse_options",
    "probe_gpu",
]
