"""`fuse-bn`: fold an eval-mode BatchNorm into the conv or linear layer that feeds it.

y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is again a conv with scaled weights and
a new bias, so the BatchNorm disappears. Grouped and depthwise convs fold the same way
(BatchNorm is per output channel). The conv's output must feed only the BatchNorm.

Pairs are found on the exported ATen graph (aten.conv*/linear feeding aten.batch_norm; the
parameter placeholders each node reads name the owning modules), so subclasses of the built-in
layers (torchvision's Conv3DSimple, timm's BatchNormAct2d) fold like the built-ins. The rewrite
happens on a private copy of the user's module: the producer gets folded weights, a plain
BatchNorm becomes nn.Identity, and a BatchNorm subclass with its own forward (BatchNormAct2d:
norm, then dropout and activation) keeps its forward with the norm made an exact identity.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import fresh_copy, layer_edges, require_module, set_submodule

__all__ = ["FuseBN", "fold", "without_norm", "folds_own_bias"]


def _why_not(edge, layer, bn) -> str | None:
    """None when bn(layer(x)) folds exactly into `layer`, else the reason it does not."""
    if edge.first_users != 1:
        return "the conv/linear output is used by more than the BatchNorm"
    if edge.calls.get(edge.first, 0) != 1:
        # a module called at several places shares its weights: folding would rescale the other calls
        return "the conv/linear module is called at more than one place"
    if edge.calls.get(edge.second, 0) != 1:
        return "the BatchNorm module is called at more than one place"
    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm uses batch statistics (track_running_stats=False)"
    if not edge.own_bias:
        return "the conv/linear bias is computed, not its own parameter"
    if layer.bias is None and not folds_own_bias(layer):
        return f"{type(layer).__name__}.forward may not use a new bias"
    if edge.first_kind == "linear" and edge.dims != 2:
        return "Linear + BatchNorm folds only on [N, C] outputs"  # BatchNorm1d normalises dim 1
    return None


def folds_own_bias(layer) -> bool:
    """Whether `layer.forward` reads `self.bias` (true for the built-ins), so a bias added by folding is used."""
    import inspect

    import torch.nn as nn

    forward = type(layer).forward
    builtin = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    if any(forward is b.forward for b in builtin):
        return True
    try:
        return "self.bias" in inspect.getsource(forward)
    except (OSError, TypeError):
        return False


def without_norm(bn):
    """What replaces a folded BatchNorm: nn.Identity for a plain one; for a subclass with its own forward
    (norm + activation, e.g. timm's BatchNormAct2d) a copy whose norm is exactly the identity map, so
    everything else its forward does is kept."""
    import torch
    import torch.nn as nn

    if type(bn).forward is nn.modules.batchnorm._BatchNorm.forward:
        return nn.Identity()
    new = copy.copy(bn)  # shallow: its own parameter and buffer dicts below, the submodules (act) shared
    new._parameters, new._buffers, new._modules = dict(bn._parameters), dict(bn._buffers), dict(bn._modules)
    n = bn.num_features
    like = bn.running_mean
    new.running_mean = torch.zeros(n, dtype=like.dtype)
    new.running_var = torch.ones(n, dtype=like.dtype)
    new.eps = 0.0  # (x - 0) / sqrt(1 + 0) * 1 + 0 == x exactly
    if bn.affine:
        new.weight = nn.Parameter(torch.ones(n, dtype=bn.weight.dtype), requires_grad=bn.weight.requires_grad)
        new.bias = nn.Parameter(torch.zeros(n, dtype=bn.bias.dtype), requires_grad=bn.bias.requires_grad)
        # Better with no scale and shift at all, so that folding adds no parameters (the conv gained a bias):
        # kept when the subclass's forward takes weight=None as F.batch_norm does and computes the same.
        plain = copy.copy(new)
        plain._parameters = dict(new._parameters)
        plain.weight, plain.bias, plain.affine = None, None, False
        if _same_on_probe(new, plain, n, like.dtype):
            return plain
    return new


def _same_on_probe(norm, other, n: int, dtype) -> bool:
    """Whether two eval-mode norms both run and agree exactly on a random probe of a shape they accept."""
    import torch

    for shape in ((2, n, 3, 3), (2, n, 3), (2, n), (2, n, 2, 2, 2)):
        x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                want = norm.eval()(x)
        except Exception:
            continue
        try:
            with torch.no_grad():
                return torch.equal(want, other.eval()(x))
        except Exception:
            return False
    return False


@register_pass
@dataclass(frozen=True)
class FuseBN(Pass):
    """Fold BatchNorm into the preceding Conv/ConvTranspose (any groups) or Linear ([N, C] outputs)."""

    name: ClassVar[str] = "fuse-bn"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "fold BatchNorm into the preceding conv/linear"

    def apply(self, program) -> PassResult:
        require_module(program, self.name)
        modules = dict(program.ir.named_modules())
        rejected, plan = {}, []
        for edge in layer_edges(program):
            if edge.second_kind != "bn" or edge.first_kind not in ("conv", "conv_transpose", "linear"):
                continue
            why = _why_not(edge, modules[edge.first], modules[edge.second])
            if why:
                rejected.setdefault(why, []).append(f"{edge.second} -> {edge.first}")
            else:
                plan.append((edge.first, edge.second))
        if not plan:
            return PassResult(program, changed=False, details={"fused": 0, **({"rejected": rejected} if rejected else {})})
        new = fresh_copy(program.ir)
        for prod, bn in plan:
            set_submodule(new, prod, fold(modules[prod], modules[bn]))
            set_submodule(new, bn, without_norm(modules[bn]))
        details = {"fused": len(plan), "pairs": [f"{bn} -> {prod}" for prod, bn in plan]}
        if rejected:
            details["rejected"] = rejected
        return PassResult(program.with_ir(new), changed=True, details=details)


def fold(producer, bn):
    """A new module computing bn(producer(x)); `producer` itself is left alone.

    Not torch.nn.utils.fusion: it scales a grouped ConvTranspose's weight on the wrong axis
    ([in, out/groups, ...] needs a per-group view), fails on a Linear before a BatchNorm without
    affine parameters, and leaves a newly created bias with requires_grad=False (not trainable).
    """
    import torch
    import torch.nn as nn

    new = copy.copy(producer)  # shallow: the class and options kept, parameters replaced below
    new._parameters = dict(producer._parameters)
    w = producer.weight
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        if isinstance(producer, nn.modules.conv._ConvTransposeNd):
            g = producer.groups  # weight [in, out/groups, *k]; output channel = group * out/groups + j
            per_group = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
            new_w = (per_group * scale.reshape(g, 1, w.shape[1], *[1] * (w.dim() - 2))).reshape(w.shape)
        else:  # conv [out, in/groups, *k], linear [out, in]
            new_w = w * scale.reshape(-1, *[1] * (w.dim() - 1))
        bias = producer.bias if producer.bias is not None else torch.zeros_like(scale)
        new_b = bias * scale + shift
    new.weight = nn.Parameter(new_w.to(w.dtype), requires_grad=w.requires_grad)
    new.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=w.requires_grad)
    return new
