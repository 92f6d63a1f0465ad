"""`finetune`: recover accuracy inside the pipeline, after lossy FX passes and before lowering.

`prune-channels{ratio=0.5},finetune{data=train.py:loader epochs=2},to-onnx,simplify`
distills from the original model (the program's fidelity reference) on the user's batches.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import ClassVar, Literal

from ...errors import SlimcError
from ..registry import Pass, PassResult, register_pass

__all__ = ["Finetune"]


@register_pass
@dataclass(frozen=True)
class Finetune(Pass):
    """Fine-tune the FX module on `data` (file.py:fn returning an iterable of batches: x or (x, y)).

    teacher=true distills from the original model; labels in the batches add the task loss.
    """

    name: ClassVar[str] = "finetune"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = False
    summary: ClassVar[str] = "fine-tune with distillation from the original model (slimc.finetune)"

    data: str = ""
    epochs: int = 1
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    alpha: float = 0.7
    teacher: bool = True
    max_steps: int | None = None
    device: str = "auto"

    def apply(self, program) -> PassResult:
        import torch

        from ...finetune import FinetuneConfig, finetune
        from ...frontend.specs import load_callable

        if not self.data:
            raise SlimcError("finetune needs training data: finetune{data=path/to/file.py:loader}, where loader() "
                             "returns an iterable of batches (a tensor, or (inputs, labels)).")
        loader = load_callable(self.data, "loader")()
        teacher = program.original if self.teacher and isinstance(program.original, torch.nn.Module) else None
        student = copy.deepcopy(program.ir)
        cfg = FinetuneConfig(epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, alpha=self.alpha,
                             max_steps=self.max_steps, progress=sys.stderr.isatty())  # minutes: show a bar
        result = finetune(student, loader, teacher=copy.deepcopy(teacher) if teacher is not None else None,
                          device=self.device, config=cfg)
        h = result.history
        return PassResult(program.with_ir(result.module), True, {
            "steps": len(h), "device": result.device, "seconds": round(result.seconds, 3),
            "loss_first": h[0]["loss"], "loss_last": h[-1]["loss"],
        })
