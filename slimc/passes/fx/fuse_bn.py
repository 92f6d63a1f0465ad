"""`fuse-bn`: fold an eval-mode BatchNorm into the conv or linear layer that feeds it.

y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is again a conv with scaled weights and
a new bias, so the BatchNorm node disappears. Grouped and depthwise convs fold the same way
(BatchNorm is per output channel). The conv's output must feed only the BatchNorm.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import fresh_copy, set_submodule

__all__ = ["FuseBN"]


def _candidates(gm):
    """(producer node, bn node, producer module, bn module) where a conv/linear feeds only a BatchNorm."""
    import torch.nn as nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    modules = dict(gm.named_modules())
    # A module called at several places shares its weights between them: folding one BN into it
    # would rescale the other calls too.
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), bns):
            continue
        src = node.args[0] if node.args else None
        if getattr(src, "op", None) != "call_module" or len(src.users) != 1 or calls[src.target] != 1:
            continue
        producer, bn = modules[src.target], modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue  # batch statistics at inference: nothing fixed to fold
        if isinstance(producer, (*convs, nn.Linear)):
            yield src, node, producer, bn


def _fusable_pairs(gm):
    import torch.nn as nn

    for src, node, producer, bn in _candidates(gm):
        if not isinstance(producer, nn.Linear) or _is_2d(src):
            yield src, node, producer, bn


def _is_2d(node) -> bool:
    # BatchNorm1d normalises dim 1: that is the linear layer's features only for [N, C] outputs.
    meta = node.meta.get("tensor_meta")
    return meta is not None and len(meta.shape) == 2


@register_pass
@dataclass(frozen=True)
class FuseBN(Pass):
    """Fold BatchNorm into the preceding Conv/ConvTranspose (any groups) or Linear ([N, C] outputs)."""

    name: ClassVar[str] = "fuse-bn"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "fold BatchNorm into the preceding conv/linear"

    def apply(self, program) -> PassResult:
        import torch
        import torch.nn as nn
        from torch.fx.passes.shape_prop import ShapeProp

        gm = fresh_copy(program.ir)
        if any(isinstance(p, nn.Linear) for _, _, p, _ in _candidates(gm)) and program.example_inputs:
            with torch.no_grad():  # Linear+BN fuses only on [N, C] outputs: shapes needed
                ShapeProp(gm).propagate(*program.example_inputs)
        fused = []
        for src, bn_node, producer, bn in list(_fusable_pairs(gm)):
            set_submodule(gm, src.target, _fold(producer, bn))
            bn_node.replace_all_uses_with(src)
            gm.graph.erase_node(bn_node)
            fused.append(f"{bn_node.target} -> {src.target}")
        if not fused:
            return PassResult(program, changed=False, details={"fused": 0})
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
        return PassResult(program.with_ir(gm), changed=True, details={"fused": len(fused), "pairs": fused})


def _fold(producer, bn):
    """A new module computing bn(producer(x)); `producer` itself is left alone.

    Not torch.nn.utils.fusion: it scales a grouped ConvTranspose's weight on the wrong axis
    ([in, out/groups, ...] needs a per-group view), fails on a Linear before a BatchNorm without
    affine parameters, and leaves a newly created bias with requires_grad=False (not trainable).
    """
    import torch
    import torch.nn as nn

    new = copy.deepcopy(producer)
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
