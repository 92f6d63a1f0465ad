"""The torch backend: the FX-level module itself, run eagerly (the reference; stays trainable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..ir.files import write_unit
from ..ir.runner import run_torch
from .base import Artifact, Backend, as_numpy, register_backend
from .files import artifact_main_path

__all__ = ["TorchBackend", "TorchArtifact"]


class TorchArtifact(Artifact):
    backend: ClassVar[str] = "torch"

    def __init__(self, module, example_inputs):
        self.module = module
        self.example_inputs = tuple(example_inputs)

    def _run(self, inputs: list) -> list[np.ndarray]:
        return run_torch(self.module, [as_numpy(x) for x in inputs])

    def sample_inputs(self) -> list[np.ndarray]:
        return [t.detach().cpu().numpy() for t in self.example_inputs]

    def describe(self) -> dict:
        import torch

        return {"backend": self.backend, "torch": torch.__version__}

    def save(self, path) -> str:
        """The whole module pickled with torch.save (`torch.load(path, weights_only=False)` reads it)."""
        import torch

        path = artifact_main_path(self.backend, path)
        write_unit(path, lambda folder: torch.save(self.module, folder / path.name), self.describe())
        self.path = str(path)
        return self.path


@register_backend
@dataclass(frozen=True)
class TorchBackend(Backend):
    name: ClassVar[str] = "torch"
    consumes: ClassVar[str] = "fx"

    def build(self, program) -> TorchArtifact:
        return TorchArtifact(program.ir, program.example_inputs)
