"""`fuse-bn-conv`: fold an eval-mode BatchNorm into the Conv / Linear that *follows* it.

BatchNorm is a per-channel affine map, bn(x) = s * x + t with s = gamma / sqrt(var + eps) and
t = beta - mean * s. A conv of it is again a conv:

    conv(s * x + t) = conv_{W * s}(x) + sum_{i,k} W[o, i, k] * t[i]      (per output channel o)

This is exact where every input the conv reads went through the BatchNorm. Zero padding does
not: the padded zeros are not shifted by t, so a conv with zero padding (and t != 0) is rejected
with that reason. Reflect / replicate / circular padding copy BatchNorm outputs, so they fold.
Linear after BatchNorm1d on [N, C] folds the same way (no padding). The `fuse-bn` pass covers the
other order (conv -> bn); this one is for pre-activation blocks (bn -> conv), DenseNet, heads.
Pairs are found on the exported ATen graph (batch_norm feeding conv/linear; parameter placeholders
name the modules) and folded on a private copy of the module: the BatchNorm becomes nn.Identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import fresh_copy, layer_edges, require_module, set_submodule
from .fuse_bn import folds_own_bias

__all__ = ["FuseBNConv"]


def _bn_affine(bn):
    """(s, t) of an eval-mode BatchNorm as float64 tensors."""
    import torch

    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.detach().double()
        shift = bn.bias.detach().double() - mean * scale
    else:
        shift = -mean * scale
    return scale, shift


def _has_zero_padding(conv) -> bool:
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _why_not(edge, bn, consumer) -> str | None:
    """None when consumer(bn(x)) folds exactly into `consumer`, else the reason it does not."""
    import torch.nn as nn

    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm uses batch statistics (track_running_stats=False)"
    if bn.training:
        return "BatchNorm is in training mode"
    if type(bn).forward is not nn.modules.batchnorm._BatchNorm.forward:
        return f"{type(bn).__name__} does more than normalise in its forward (e.g. an activation after the norm)"
    if edge.first_users != 1:
        return "the BatchNorm output is used by more than the conv/linear"
    if edge.calls.get(edge.second, 0) != 1:
        return "the conv/linear module is called at more than one place"
    if edge.calls.get(edge.first, 0) != 1:
        return "the BatchNorm module is called at more than one place"
    if not edge.own_bias:
        return "the conv/linear bias is computed, not its own parameter"
    if consumer.bias is None and not folds_own_bias(consumer):
        return f"{type(consumer).__name__}.forward may not use a new bias"
    if isinstance(consumer, nn.Linear):
        if edge.dims != 2:
            return "Linear after BatchNorm folds only on [N, C] inputs"
        return None
    if consumer.in_channels != bn.num_features:
        return f"conv has {consumer.in_channels} input channels, BatchNorm {bn.num_features}"
    if _has_zero_padding(consumer):
        _, shift = _bn_affine(bn)
        if bool((shift != 0).any()):
            return ("the conv zero-pads its input: padded zeros would not be shifted by the BatchNorm "
                    "(exact only without padding or with reflect/replicate/circular padding)")
    return None


def _folded(consumer, bn):
    """A new conv/linear equal to consumer(bn(x)); the originals are left as they are."""
    import copy

    import torch
    import torch.nn as nn

    scale, shift = _bn_affine(bn)
    new = copy.deepcopy(consumer)
    w = consumer.weight.detach().double()
    b = consumer.bias.detach().double() if consumer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if isinstance(consumer, nn.Linear):
        new_w = w * scale[None, :]
        new_b = b + w @ shift
    else:
        groups = consumer.groups
        cout, cin_g = w.shape[0], w.shape[1]
        # out channel o reads input channels of its group: g(o) * cin_g ... + cin_g
        index = (torch.arange(cout) // (cout // groups))[:, None] * cin_g + torch.arange(cin_g)[None, :]
        view = (cout, cin_g) + (1,) * (w.dim() - 2)
        new_w = w * scale[index].reshape(view)
        new_b = b + (w * shift[index].reshape(view)).reshape(cout, -1).sum(dim=1)
    dtype = consumer.weight.dtype
    with torch.no_grad():
        new.weight = nn.Parameter(new_w.to(dtype), requires_grad=consumer.weight.requires_grad)
        new.bias = nn.Parameter(new_b.to(dtype), requires_grad=consumer.weight.requires_grad)
    return new


@register_pass
@dataclass(frozen=True)
class FuseBNConv(Pass):
    """Fold BatchNorm into the Conv1d/2d/3d or Linear after it; zero-padded convs are rejected with a reason."""

    name: ClassVar[str] = "fuse-bn-conv"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "fold BatchNorm into the following conv/linear (bn -> conv)"

    def apply(self, program) -> PassResult:
        import torch.nn as nn

        require_module(program, self.name)
        modules = dict(program.ir.named_modules())
        edges = [e for e in layer_edges(program) if e.first_kind == "bn" and e.second_kind in ("conv", "linear")]
        if not edges:
            return PassResult(program, False, {"fused": 0})
        rejected, plan = {}, []
        for edge in edges:
            why = _why_not(edge, modules[edge.first], modules[edge.second])
            if why:
                rejected.setdefault(why, []).append(f"{edge.first} -> {edge.second}")
            else:
                plan.append((edge.first, edge.second))
        details = {"fused": len(plan), "pairs": [f"{b} -> {c}" for b, c in plan], "rejected": rejected}
        if not plan:
            return PassResult(program, False, details)
        new = fresh_copy(program.ir)
        for bn_path, path in plan:
            set_submodule(new, path, _folded(modules[path], modules[bn_path]))
            set_submodule(new, bn_path, nn.Identity())
        return PassResult(program.with_ir(new), True, details)
