"""slimc: a compiler that makes trained neural networks smaller and faster.

Example::

    import slimc, torch, torchvision
    result = slimc.compile(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224),
                           pipeline="fuse-bn,to-onnx,simplify", backend="onnxruntime")
    print(result.report["after"])
"""

from .backend.base import Artifact, BenchmarkResult, backend_names, get_backend
from .compiler import CompileResult, compile, load_program
from .errors import SlimcError
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .ir.program import Program
from .compile_options import BackendSpec, InputOptions, ReportOptions
from .passes.manager import Instrumentation, PassManager
from .passes.pipeline import Pipeline
from .passes.registry import Pass, PassResult, register_pass, registered_passes
from .search import search

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "BackendSpec",
    "BenchmarkResult",
    "CompileResult",
    "FinetuneConfig",
    "FinetuneResult",
    "InputOptions",
    "Instrumentation",
    "Pass",
    "PassManager",
    "PassResult",
    "Pipeline",
    "Program",
    "ReportOptions",
    "SlimcError",
    "backend_names",
    "compile",
    "finetune",
    "get_backend",
    "load_program",
    "register_pass",
    "registered_passes",
    "search",
]
