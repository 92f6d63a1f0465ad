"""`fuse-bn-conv`: fold an eval-mode BatchNorm into the Conv / Linear that *follows* it.

BatchNorm is a per-channel affine map, bn(x) = s * x + t with s = gamma / sqrt(var + eps) and
t = beta - mean * s. A conv of it is again a conv:

    conv(s * x + t) = conv_{W * s}(x) + sum_{i,k} W[o, i, k] * t[i]      (per output channel o)

This is exact where every input the conv reads went through the BatchNorm. Zero padding does
not: the padded zeros are not shifted by t, so a conv with zero padding (and t != 0) is rejected
with that reason. Reflect / replicate / circular padding copy BatchNorm outputs, so they fold.
Linear after BatchNorm1d on [N, C] folds the same way (no padding). The `fuse-bn` pass covers the
other order (conv -> bn); this one is for pre-activation blocks (bn -> conv), DenseNet, heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import fresh_copy, set_submodule

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


def _why_not(gm, bn_node, consumer_node, bn, consumer) -> str | None:
    """None when the pair folds exactly, else the reason it does not."""
    import torch.nn as nn

    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm uses batch statistics (track_running_stats=False)"
    if bn.training:
        return "BatchNorm is in training mode"
    if len(bn_node.users) != 1:
        return "the BatchNorm output is used by more than the conv/linear"
    if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == consumer_node.target) > 1:
        return "the conv/linear module is called at more than one place"
    if consumer_node.args[0] is not bn_node or len(consumer_node.args) != 1 or consumer_node.kwargs:
        return "the BatchNorm output is not the layer's only input"
    if isinstance(consumer, nn.Linear):
        meta = bn_node.meta.get("tensor_meta")
        if meta is None or len(meta.shape) != 2:
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
        import torch
        import torch.nn as nn
        from torch.fx.passes.shape_prop import ShapeProp

        convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
        gm = fresh_copy(program.ir)
        modules = dict(gm.named_modules())
        pairs = []
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(modules.get(node.target), (*convs, nn.Linear)):
                continue
            src = node.args[0] if node.args else None
            if getattr(src, "op", None) == "call_module" and isinstance(modules.get(src.target), bns):
                pairs.append((src, node))
        if not pairs:
            return PassResult(program, False, {"fused": 0})
        if any(isinstance(modules[c.target], nn.Linear) for _, c in pairs) and program.example_inputs:
            with torch.no_grad():  # Linear folds only on [N, C]: shapes needed
                ShapeProp(gm).propagate(*program.example_inputs)
        fused, rejected = [], {}
        for bn_node, node in pairs:
            bn, consumer = modules[bn_node.target], modules[node.target]
            why = _why_not(gm, bn_node, node, bn, consumer)
            if why:
                rejected.setdefault(why, []).append(f"{bn_node.target} -> {node.target}")
                continue
            set_submodule(gm, node.target, _folded(consumer, bn))
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
            fused.append(f"{bn_node.target} -> {node.target}")
        details = {"fused": len(fused), "pairs": fused, "rejected": rejected}
        if not fused:
            return PassResult(program, False, details)
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
        return PassResult(program.with_ir(gm), True, details)
