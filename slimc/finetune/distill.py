"""`slimc.finetune`: win back accuracy after pruning or grouping by distilling from the original.

Loss = alpha * KD + (1 - alpha) * task when both a teacher and labels are there; KD alone without
labels, task alone without a teacher. KD on classifier logits ([N, C]) is the temperature-scaled KL
divergence (Hinton et al.); on other outputs it is the MSE to the teacher's output. On a GPU the
loop uses autocast (bf16 where supported, else fp16 with a grad scaler) and channels_last.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from ..errors import SlimcError
from .distributed import data_parallel

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of the fine-tuning loop (one concept each; defaults suit a short recovery run)."""

    epochs: int = 1
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    alpha: float = 0.7
    temperature: float = 4.0
    max_steps: int | None = None
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    grad_clip: float | None = 5.0
    progress: bool = True


@dataclass
class FinetuneResult:
    module: Any
    history: list[dict] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0


def _split_batch(batch):
    """A batch is a tensor (inputs only), or (inputs, labels), or (inputs..., labels) as a list/tuple."""
    import torch

    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)) and batch:
        if len(batch) == 1:
            return (batch[0],), None
        return tuple(batch[:-1]), batch[-1]
    raise SlimcError(f"a training batch must be a tensor or an (inputs, labels) tuple, got {type(batch).__name__}.")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _losses(student_out, teacher_out, labels, cfg: FinetuneConfig):
    import torch.nn.functional as F

    s = _first(student_out).float()
    parts = {}
    if teacher_out is not None:
        t = _first(teacher_out).float()
        if s.dim() == 2 and s.shape[1] > 1:
            T = cfg.temperature
            parts["kd"] = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
        else:
            parts["kd"] = F.mse_loss(s, t)
    if labels is not None:
        if not labels.is_floating_point() and s.dim() == 2:
            parts["task"] = F.cross_entropy(s, labels.long())
        else:
            parts["task"] = F.mse_loss(s, labels.float().reshape(s.shape))
    if "kd" in parts and "task" in parts:
        total = cfg.alpha * parts["kd"] + (1 - cfg.alpha) * parts["task"]
    else:
        total = next(iter(parts.values()))
    return total, parts


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlimcError(f"device '{device}' was asked for, but torch.cuda.is_available() is False here.")
    return device


def finetune(module, train_data: Iterable, teacher=None, epochs: int | None = None, lr: float | None = None,
             device: str = "auto", config: FinetuneConfig | None = None) -> FinetuneResult:
    """Fine-tune `module` in place on `train_data` (an iterable of batches, re-iterated each epoch).

    Example::

        result = slimc.finetune(pruned, loader, teacher=original, epochs=2)
        result.history[-1]["loss"]

    teacher: the original model (outputs distilled from); None trains on labels alone.
    epochs, lr: given beside `config`, they override its fields (config=FinetuneConfig(...) sets the rest).
    The learning rate follows a cosine from `lr` to 0 over the real number of steps: epochs x len(data)
    (capped by max_steps); for data without len() it stays at `lr` during the first epoch, which
    counts the steps, then anneals over the remaining ones.
    Returns the module (moved back to the CPU, in eval mode) and a history of losses per step.
    """
    import time

    import torch

    cfg = _config(config, epochs=epochs, lr=lr)
    dp = data_parallel(_pick_device(device))  # under torchrun: DDP, this process's share of each batch
    dev = dp.device
    on_gpu = dev.startswith("cuda")
    amp_dtype = None
    if on_gpu and cfg.amp != "off":
        amp_dtype = torch.bfloat16 if cfg.amp in ("auto", "bf16") and torch.cuda.is_bf16_supported() else torch.float16
    memory_format = torch.channels_last if on_gpu else torch.preserve_format
    module = module.to(dev, memory_format=memory_format).train()
    if teacher is not None:
        teacher = teacher.to(dev, memory_format=memory_format).eval()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise SlimcError("the module has no trainable parameters to fine-tune.")
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, train_data = dp.wrap(module), dp.shard(train_data)
    try:
        per_epoch = len(train_data)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    schedule = _Cosine(cfg, per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    total = schedule.total
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    bar = _progress(total or cfg.max_steps, cfg.progress and dp.is_main)
    history: list[dict] = []
    start, step = time.perf_counter(), 0
    try:
        for epoch in range(cfg.epochs):
            for batch in train_data:
                inputs, labels = _split_batch(batch)
                inputs = tuple(x.to(dev, non_blocking=True) for x in inputs)
                if on_gpu:
                    inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                                   for x in inputs)
                labels = labels.to(dev) if labels is not None else None
                with torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=amp_dtype,
                                    enabled=amp_dtype is not None):
                    with torch.no_grad():
                        t_out = teacher(*inputs) if teacher is not None else None
                    loss, parts = _losses(model(*inputs), t_out, labels, cfg)
                loss_value = dp.global_mean(loss)
                if not math.isfinite(loss_value):
                    raise SlimcError(f"fine-tuning diverged at step {step} (loss {loss_value}); lower the lr.")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss * dp.batch_share).backward()
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                history.append({"step": step, "epoch": epoch, "loss": loss_value, "lr": sched.get_last_lr()[0],
                                **{k: v.item() for k, v in parts.items()}})
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            if cfg.max_steps and step >= cfg.max_steps:
                break
            if epoch == 0:
                schedule.first_epoch_done(step)
        dp.sync_buffers(module)
    finally:
        if bar is not None:
            bar.close()
        dp.close()
    if step == 0:
        raise SlimcError("the training data yielded no batches.")
    module = module.to("cpu", memory_format=torch.contiguous_format).eval()
    if teacher is not None:
        teacher.to("cpu")
    return FinetuneResult(module, history, dev, time.perf_counter() - start)


def _config(config: FinetuneConfig | None, **overrides) -> FinetuneConfig:
    """The config with the keyword arguments that were given (not None) put in: they win."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config or FinetuneConfig(), **given)


class _Cosine:
    """Cosine annealing from the base lr to 0 over the run's real step count (LambdaLR's factor)."""

    def __init__(self, cfg: FinetuneConfig, per_epoch: int | None):
        self.cfg, self.sized, self.start = cfg, per_epoch is not None, 0
        self.total = self._capped(per_epoch * cfg.epochs) if per_epoch else None

    def _capped(self, steps: int) -> int:
        return min(steps, self.cfg.max_steps) if self.cfg.max_steps else steps

    def first_epoch_done(self, steps: int) -> None:
        if not self.sized:  # data without len(): the first epoch told us its length; anneal over the rest
            self.total = self._capped(steps * self.cfg.epochs)
            self.start = steps

    def factor(self, step: int) -> float:
        if not self.total:
            return 1.0
        span = max(self.total - self.start, 1)
        done = min(max(step - self.start, 0), span)
        return 0.5 * (1.0 + math.cos(math.pi * done / span))


def _progress(total, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="finetune", unit="step", leave=False)
