"""`bn-recal`: re-estimate BatchNorm running statistics on the user's batches after a cut.

`prune-channels{ratio=0.5},bn-recal{data=train.py:loader batches=50},to-onnx`

Pruning or grouping a conv changes the distribution of its outputs, but the BatchNorm after it still
normalises with the statistics of the dense model; this alone can cost most of the accuracy (digits:
35.8% after group-conv g=4, 95.0% once the statistics are re-estimated, no training). The pass resets
the running statistics, switches the BatchNorms (only them) to train mode with `momentum=None` (a
cumulative average over the batches rather than an exponential one), runs N batches without gradients,
and puts everything back as it was. Weights are not touched. Works on any `nn.Module` and on every
subclass of `torch.nn.modules.batchnorm._BatchNorm` (BatchNorm1d/2d/3d, SyncBatchNorm, the user's own).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from ...errors import SlimcError
from ..registry import Pass, PassResult, register_pass

__all__ = ["BnRecal", "recalibrate_batchnorm"]


def _batchnorms(module):
    import torch.nn as nn

    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def recalibrate_batchnorm(module, batches, max_batches: int = 0, device: str = "cpu") -> dict:
    """Re-estimate the running statistics of every BatchNorm in `module` in place from `batches`.

    `batches`: an iterable of batches (a tensor, or (inputs..., labels)); at most `max_batches` of
    them are used (0: all). Only the BatchNorms run in train mode: dropout and anything else that
    checks `self.training` behave as at inference, so the statistics are those the deployed model sees.
    Returns counts for the report. Example::

        recalibrate_batchnorm(pruned, [x for x, _ in train_batches], max_batches=50)
    """
    import torch

    from ...finetune.distill import _split_batch

    bns = _batchnorms(module)
    if not bns:
        return {"batchnorms": 0, "batches": 0, "samples": 0}
    was_training = {m: m.training for m in module.modules()}
    momenta = {name: m.momentum for name, m in bns}
    before = {name: m.running_var.detach().clone() for name, m in bns}
    seen = samples = 0
    try:
        module.eval()
        for _, m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts the same
            m.train()
        module.to(device)
        with torch.no_grad():
            for batch in batches:
                if max_batches and seen >= max_batches:
                    break
                inputs, _ = _split_batch(batch)
                module(*(x.to(device) for x in inputs))
                seen += 1
                samples += int(inputs[0].shape[0]) if inputs[0].dim() else 1
    finally:
        for name, m in bns:
            m.momentum = momenta[name]
        for m, flag in was_training.items():
            m.training = flag
        module.to("cpu")
    if seen == 0:
        raise SlimcError("bn-recal: the data yielded no batches; the loader must return at least one batch "
                         "(a tensor, or (inputs, labels)).")
    shift = max(float(((m.running_var.cpu() - before[name]).abs() / before[name].abs().clamp_min(1e-12)).max())
                for name, m in bns)
    return {"batchnorms": len(bns), "batches": seen, "samples": samples, "max_rel_var_change": round(shift, 6)}


@register_pass
@dataclass(frozen=True)
class BnRecal(Pass):
    """Re-estimate BatchNorm statistics on `data` (file.py:fn returning an iterable of batches: x or (x, y)).

    batches: how many batches to use (0: all the loader yields).
    """

    name: ClassVar[str] = "bn-recal"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = False
    summary: ClassVar[str] = "re-estimate BatchNorm running statistics on your batches (after a cut)"

    data: str = ""
    batches: int = 100
    device: str = "auto"

    def __post_init__(self):
        if self.batches < 0:
            raise ValueError(f"batches must be >= 0 (0 uses every batch), got {self.batches}")

    def apply(self, program) -> PassResult:
        import torch

        from ...finetune.distill import _pick_device
        from ...frontend.specs import load_callable

        if not self.data:
            raise SlimcError("bn-recal needs data to estimate statistics on: bn-recal{data=path/to/file.py:loader "
                             "batches=N}, where loader() returns an iterable of batches (a tensor, or "
                             "(inputs, labels)), e.g. your training loader.")
        if not isinstance(program.ir, torch.nn.Module):
            raise SlimcError(f"bn-recal works on a torch module (before to-onnx), got {type(program.ir).__name__}.")
        if not _batchnorms(program.ir):
            return PassResult(program, False, {"batchnorms": 0,
                                               "note": "no BatchNorm with running statistics: nothing to do"})
        loader_fn = load_callable(self.data, "loader")
        try:
            batches = loader_fn()
        except Exception as exc:
            raise SlimcError(f"bn-recal: '{self.data}()' raised {type(exc).__name__}: {exc}") from None
        device = _pick_device(self.device)
        # On the CPU the parameters stay shared with the input program (nothing writes them); buffers become
        # private, so the input program keeps its statistics for --verify-each and the user. Moving to another
        # device rewrites parameters in place, so there the copy is whole.
        memo = {id(p): p for p in program.ir.parameters()} if device == "cpu" else {}
        module = copy.deepcopy(program.ir, memo)
        details = recalibrate_batchnorm(module, batches, self.batches, device)
        return PassResult(program.with_ir(module), True, details)
