"""`Program`: what flows through a pipeline.

It holds the current IR (a `torch.fx.GraphModule` or an `onnx.ModelProto`), the example
inputs, the I/O names and what the report needs (the original model, for fidelity).
Passes return a new Program through `Program.with_ir`; none mutates the one it was given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Program", "level_of"]


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

    ir:              torch.fx.GraphModule (level 'fx') or onnx.ModelProto (level 'onnx')
    example_inputs:  tensors that fix input shapes and dtypes (batch included)
    input_names / output_names: names used at the ONNX level and in reports
    dynamic_batch:   whether axis 0 of every input and output is symbolic after export
    original:        the model as the user gave it (a private copy), the fidelity reference
    source:          how the model was named (spec string, file path, or the class name)
    """

    ir: Any
    example_inputs: tuple
    input_names: tuple[str, ...]
    output_names: tuple[str, ...] = ()
    dynamic_batch: bool = False
    original: Any = None
    source: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def level(self) -> str:
        return level_of(self.ir)

    def with_ir(self, ir: Any, **changes) -> "Program":
        """A copy of this program holding `ir` (and any other field changes)."""
        return dataclasses.replace(self, ir=ir, **changes)

    def random_inputs(self, seed: int = 0, batch: int | None = None) -> list[np.ndarray]:
        """Fresh inputs with the example inputs' shapes and dtypes (batch replaced when given)."""
        from .runner import random_like

        return random_like(self.example_inputs, seed=seed, batch=batch)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Execute the current IR on numpy inputs (torch eager for FX, ONNX Runtime for ONNX)."""
        from .runner import run_ir

        return run_ir(self.ir, inputs, self.input_names)
