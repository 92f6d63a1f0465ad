"""The options of a compile, one small frozen dataclass per concern.

`compile`, `search` and a search trial carry these objects instead of re-typing the same keyword
arguments at each layer:

* `InputOptions`    how the model's inputs are fixed, and the seed that makes a run reproducible
* `BackendSpec`     which backend builds the artifact, with its options
* `Instrumentation` what the pass manager records and checks around each pass (slimc.passes.manager)
* `ReportOptions`   what the compile writes and measures after the passes (artifact, report, fidelity)

Example::

    slimc.compile("torchvision:resnet18", pipeline="fuse-bn,to-onnx,simplify",
                  inputs=slimc.InputOptions(shapes=("1x3x224x224",), seed=1),
                  backend=slimc.BackendSpec("onnxruntime", {"threads": 2}),
                  instrumentation=slimc.Instrumentation(verify_each=True),
                  report=slimc.ReportOptions(path="out/report.json", fidelity_samples=16))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import SlimcError
from .passes.manager import Instrumentation

__all__ = ["InputOptions", "BackendSpec", "ReportOptions", "Instrumentation", "with_shorthands"]


@dataclass(frozen=True)
class InputOptions:
    """How the model's inputs are fixed, and the seed of everything random in a compile.

    shapes:         input shapes like '1x3x224x224' or '1x128:int64', one per input (when no example
                    tensors are given)
    dynamic_batch:  export with a symbolic batch axis
    leaf_modules:   submodule or class names that torch.fx keeps whole
    seed:           seeds model creation ('torchvision:NAME' gets the same random weights each run)
                    and the fidelity check's random inputs
    """

    shapes: tuple[str, ...] | None = None
    dynamic_batch: bool = False
    leaf_modules: tuple = ()
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.shapes, str):
            object.__setattr__(self, "shapes", (self.shapes,))
        elif self.shapes is not None:
            object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "leaf_modules", tuple(self.leaf_modules))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SlimcError(f"the seed must be an integer, got {self.seed!r}.")


@dataclass(frozen=True)
class BackendSpec:
    """The backend that builds the artifact ('onnxruntime', 'torch', ...; None: no artifact) and its options."""

    name: str | None = "onnxruntime"
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, backend: "BackendSpec | str | None", options: Mapping | None = None) -> "BackendSpec":
        spec = backend if isinstance(backend, BackendSpec) else cls(backend)
        if options:
            spec = cls(spec.name, {**spec.options, **options})
        return spec


@dataclass(frozen=True)
class ReportOptions:
    """What the compile writes and measures once the passes ran.

    path:              write the JSON report here (None: only `CompileResult.report`)
    output_dir:        save the artifact here ('out/' or 'out/model.onnx')
    fidelity_samples:  random input sets to compare the artifact with the original model (0: no check)
    benchmark_iters:   when > 0, time the artifact and put median/p90 ms in the report
    """

    path: str | Path | None = None
    output_dir: str | Path | None = None
    fidelity_samples: int = 8
    benchmark_iters: int = 0



def with_shorthands(options, **shorthands):
    """`options` with the keyword shorthands that were given (not None) put in; lists become tuples."""
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in shorthands.items() if v is not None}
    return dataclasses.replace(options, **given) if given else options
