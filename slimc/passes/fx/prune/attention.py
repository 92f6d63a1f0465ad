"""Attention: whole heads are pruned, and the embedding dim is tied across the residual stream.

nn.MultiheadAttention cannot hold fewer heads than embed_dim // head_dim, so a pruned one is
replaced by `SlimMultiheadAttention`: the same computation with separate q/k/v/out Linear
layers of any width, the same call signature, and an ONNX export made of plain ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .labels import channel_label, untracked
from .handlers import Handler, Opaque, register_builtin

__all__ = ["SlimMultiheadAttention", "AttentionHandler"]


class SlimMultiheadAttention(nn.Module):
    """Multi-head attention with `num_heads` heads of `head_dim` over an `embed_dim` stream.

    Example::

        attn = SlimMultiheadAttention(embed_dim=48, num_heads=3, head_dim=32, batch_first=True)
        out, _ = attn(x, x, x, need_weights=False)
    """

    # nn.TransformerEncoder(Layer) probe these for their fused fast path; these values opt out.
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, batch_first: bool = False,
                 bias: bool = True, dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, s, _ = query.shape
        t = key.shape[1]
        q = self.q_proj(query).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1))
        if attn_mask is not None:
            mask = attn_mask.view(-1, self.num_heads, s, t) if attn_mask.dim() == 3 else attn_mask
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask.view(b, 1, 1, t)
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        attn = F.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
        return out, weights


def _parts(m) -> dict:
    """Per-head views of the weights of either attention class (q/k/v: [heads, head_dim, embed])."""
    if isinstance(m, SlimMultiheadAttention):
        h, d = m.num_heads, m.head_dim
        parts = {n: getattr(m, f"{n}_proj").weight.view(h, d, -1) for n in "qkv"}
        bias = [getattr(m, f"{n}_proj").bias for n in "qkv"]
        parts["b"] = None if bias[0] is None else torch.stack([x.view(h, d) for x in bias])
        scale = m.scale
    else:
        h = m.num_heads
        d = m.embed_dim // h
        w = m.in_proj_weight.view(3, h, d, -1)
        parts = {"q": w[0], "k": w[1], "v": w[2]}
        parts["b"] = None if m.in_proj_bias is None else m.in_proj_bias.view(3, h, d)
        scale = 1.0 / math.sqrt(d)
    parts.update(heads=h, head_dim=d, out_w=m.out_proj.weight.view(-1, h, d), out_b=m.out_proj.bias, scale=scale)
    return parts


class AttentionHandler(Handler):
    """nn.MultiheadAttention / SlimMultiheadAttention, self-attention with equal q/k/v widths.

    Slots: "embed" (the stream's channels: q/k/v inputs and out_proj outputs, so the block's
    output carries the same channels as its input) and "heads" (whole heads)."""

    def propagate(self, ctx):
        m, t = ctx.module, ctx.tracker
        if isinstance(m, nn.MultiheadAttention) and (not m._qkv_same_embed_dim or m.bias_k is not None
                                                     or m.add_zero_attn):
            return Opaque("attention with kdim/vdim or bias_k/add_zero_attn is not pruned").propagate(ctx)
        names = ("query", "key", "value")
        labels = [ctx.arg_labels[i] if i < len(ctx.arg_labels) else ctx.kwarg_labels.get(names[i]) for i in range(3)]
        values = [ctx.args[i] if i < len(ctx.args) else ctx.kwargs.get(names[i]) for i in range(3)]
        why = f"{ctx.describe()} projects query, key and value from the same embedding"
        rep = None
        for val, lab in zip(values, labels):
            lab = lab if isinstance(lab, torch.Tensor) else untracked(val.shape)
            rep = t.slot(ctx.name, "embed", lab, -1, why)
        heads = t.fresh(_parts(m)["heads"])
        t.produce(ctx.name, "heads", heads, name=f"{ctx.name}.heads", width=_parts(m)["head_dim"])
        out, weights = ctx.out
        return channel_label(rep, out.shape, -1), (None if weights is None else untracked(weights.shape))

    def weights(self, module, slot):
        p = _parts(module)
        if slot == "heads":
            pairs = [(p[n], 0) for n in "qkv"] + [(p["out_w"], 1)]
            return pairs + ([(p["b"], 1)] if p["b"] is not None else [])
        pairs = [(p[n], 2) for n in "qkv"] + [(module.out_proj.weight, 0)]
        return pairs + ([(p["out_b"], 0)] if p["out_b"] is not None else [])

    def shrink(self, module, keep):
        p = _parts(module)
        ke, kh = keep["embed"], keep["heads"]
        slim = SlimMultiheadAttention(ke.numel(), kh.numel(), p["head_dim"], batch_first=module.batch_first,
                                      bias=p["b"] is not None, dropout=float(module.dropout), scale=p["scale"])
        with torch.no_grad():
            for i, n in enumerate("qkv"):
                lin = getattr(slim, f"{n}_proj")
                lin.weight.copy_(p[n][kh][:, :, ke].reshape(lin.weight.shape))
                if p["b"] is not None:
                    lin.bias.copy_(p["b"][i][kh].reshape(-1))
            slim.out_proj.weight.copy_(p["out_w"][ke][:, kh].reshape(slim.out_proj.weight.shape))
            if p["out_b"] is not None:
                slim.out_proj.bias.copy_(p["out_b"][ke])
        return slim.train(module.training)


register_builtin(nn.MultiheadAttention, AttentionHandler())
register_builtin(SlimMultiheadAttention, AttentionHandler())
