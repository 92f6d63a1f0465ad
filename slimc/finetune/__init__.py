"""Fine-tuning after lossy passes: knowledge distillation from the original model."""

from .distill import FinetuneConfig, FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]
