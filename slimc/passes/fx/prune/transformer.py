"""nn.TransformerEncoderLayer and nn.TransformerEncoder, which FX keeps as single leaf calls.

A layer has three channel sets: the embedding ("embed": attention projections, both norms,
linear1's inputs, linear2's outputs, the layer's input and output), the heads, and the MLP
hidden units ("hidden"). The encoder chains its layers, so the embedding is one group across
the whole stack, while every layer has its own heads and hidden groups.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from .attention import AttentionHandler
from .handlers import Handler, Opaque, register_builtin
from .labels import channel_label
from .layers import LayerNormHandler, LinearHandler

__all__ = ["EncoderLayerHandler", "EncoderHandler"]


class EncoderLayerHandler(Handler):
    def propagate(self, ctx):
        m, t = ctx.module, ctx.tracker
        attn = m.self_attn
        if isinstance(attn, nn.MultiheadAttention) and (not attn._qkv_same_embed_dim or attn.bias_k is not None):
            return Opaque("attention with kdim/vdim or bias_k is not pruned").propagate(ctx)
        rep = t.slot(ctx.name, "embed", ctx.input_label(0), -1, f"{ctx.describe()} keeps one embedding width")
        heads = attn.num_heads
        t.produce(ctx.name, "heads", t.fresh(heads), name=f"{ctx.name}.heads", width=m.linear1.in_features // heads
                  if isinstance(attn, nn.MultiheadAttention) else attn.head_dim)
        t.produce(ctx.name, "hidden", t.fresh(m.linear1.out_features), name=f"{ctx.name}.hidden")
        return channel_label(rep, ctx.out.shape, -1)

    def weights(self, module, slot):
        attn = AttentionHandler().weights(module.self_attn, "embed" if slot == "embed" else "heads")
        if slot == "heads":
            return attn
        if slot == "hidden":
            pairs = [(module.linear1.weight, 0), (module.linear2.weight, 1)]
            return pairs + ([(module.linear1.bias, 0)] if module.linear1.bias is not None else [])
        pairs = attn + [(module.linear1.weight, 1), (module.linear2.weight, 0)]
        for p in (module.linear2.bias, module.norm1.weight, module.norm1.bias, module.norm2.weight, module.norm2.bias):
            if p is not None:
                pairs.append((p, 0))
        return pairs

    def shrink(self, module, keep):
        ke, kh, kf = keep["embed"], keep["heads"], keep["hidden"]
        module.self_attn = AttentionHandler().shrink(module.self_attn, {"embed": ke, "heads": kh})
        LinearHandler().shrink(module.linear1, {"in": ke, "out": kf})
        LinearHandler().shrink(module.linear2, {"in": kf, "out": ke})
        for norm in (module.norm1, module.norm2):
            LayerNormHandler().shrink(norm, {"ch": ke})


class EncoderHandler(Handler):
    """The stack: each layer is handled as if it were its own call (slots named by the layer)."""

    def propagate(self, ctx):
        enc = ctx.module
        label = ctx.input_label(0)
        layer_handler = EncoderLayerHandler()
        for i, layer in enumerate(enc.layers):
            sub = dataclasses.replace(ctx, module=layer, args=ctx.args[:1], kwargs={}, arg_labels=(label,),
                                      kwarg_labels={}, qualname=f"{ctx.name}.layers.{i}")
            label = layer_handler.propagate(sub)
        if enc.norm is not None:
            sub = dataclasses.replace(ctx, module=enc.norm, args=ctx.args[:1], kwargs={}, arg_labels=(label,),
                                      kwarg_labels={}, qualname=f"{ctx.name}.norm")
            label = LayerNormHandler().propagate(sub)
        return label


register_builtin(nn.TransformerEncoderLayer, EncoderLayerHandler())
register_builtin(nn.TransformerEncoder, EncoderHandler())
