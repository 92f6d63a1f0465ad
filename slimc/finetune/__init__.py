"""Fine-tuning after lossy passes: knowledge distillation from the original model."""

from .distill import FinetuneConfig, FinetuneResult, finetune
from .distributed import is_main_process

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "is_main_process"]
