"""`Program`: what flows through a pipeline.

It holds the current IR, the example inputs, the I/O names and what the report needs (the
original model, for fidelity). At the FX level the IR is the user's own `nn.Module` (a private
copy in eval mode: its own class and `forward`); analysis reads its `torch.export` graph through
`Program.exported()`. At the ONNX level it is an `onnx.ModelProto`. Passes return a new Program
through `Program.with_ir`; none mutates the one it was given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Program", "level_of", "FRONTENDS"]

# How the FX-level IR was obtained: torch.export analyses the module itself; symbolic_trace is the
# fallback for models export refuses (the IR is then the traced GraphModule); onnx2torch lifts ONNX.
FRONTENDS = ("torch.export", "symbolic_trace", "onnx2torch", "onnx", "")


def level_of(ir: Any) -> str:
    """'fx' for a torch module / GraphModule, 'onnx' for an onnx.ModelProto."""
    import onnx

    if isinstance(ir, onnx.ModelProto):
        return "onnx"
    import torch

    if isinstance(ir, torch.nn.Module):
        return "fx"
    raise TypeError(f"not an IR slimc knows: {type(ir).__name__}")


@dataclass(frozen=True)
class Program:
    """The unit a pass transforms.

    ir:              an nn.Module (level 'fx': the user's class, or a GraphModule from the fallback
                     frontends) or an onnx.ModelProto (level 'onnx')
    example_inputs:  tensors that fix input shapes and dtypes (batch included)
    input_names / output_names: names used at the ONNX level and in reports
    dynamic_batch:   whether axis 0 of every input and output is symbolic after export
    original:        the model as the user gave it (a private copy), the fidelity reference
    source:          how the model was named (spec string, file path, or the class name)
    frontend:        'torch.export', 'symbolic_trace' (fallback), 'onnx2torch' (lifted) or 'onnx'
    fx_module:       after lowering, the FX-level module the ONNX came from (what a user fine-tunes)
    lifted_from_onnx: the FX-level IR was lifted from an ONNX model
    """

    ir: Any
    example_inputs: tuple
    input_names: tuple[str, ...]
    output_names: tuple[str, ...] = ()
    dynamic_batch: bool = False
    original: Any = None
    source: str = ""
    frontend: str = ""
    fx_module: Any = None
    lifted_from_onnx: bool = False

    @property
    def level(self) -> str:
        return level_of(self.ir)

    def with_ir(self, ir: Any, **changes) -> "Program":
        """A copy of this program holding `ir` (and any other field changes)."""
        return dataclasses.replace(self, ir=ir, **changes)

    def exported(self, dynamic_batch: bool | None = None):
        """The `torch.export` ExportedProgram of the FX-level module on the example inputs.

        Exported once per module object and cached (a pass that rewrites the module makes a new
        object, so the next call re-exports). dynamic_batch None: any cached export; True/False:
        that kind. Raises SlimcError when torch.export refuses the module.

            ep = program.exported()
            owners = parameter_modules(ep)   # placeholder -> owning module path (slimc.frontend.export)
        """
        from .exported import exported_program_of

        if self.level != "fx":
            raise TypeError("Program.exported() needs an FX-level program (an nn.Module), not ONNX")
        return exported_program_of(self.ir, self.example_inputs, dynamic_batch=dynamic_batch)

    def random_inputs(self, seed: int = 0, batch: int | None = None) -> list[np.ndarray]:
        """Fresh inputs with the example inputs' shapes and dtypes (batch replaced when given)."""
        from .runner import random_like

        return random_like(self.example_inputs, seed=seed, batch=batch)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Execute the current IR on numpy inputs (torch eager for FX, ONNX Runtime for ONNX)."""
        from .runner import run_ir

        return run_ir(self.ir, inputs, self.input_names)
