"""`group-conv`: replace dense convolutions by grouped ones, keeping the block diagonal of each weight.

A conv with groups=g connects input block k only to output block k, so it has 1/g of the
parameters and MACs. Before cutting, channels are permuted so the weight mass inside the
diagonal blocks is as large as possible. A permutation is free when it is applied to a whole
channel group of the prune analysis (producer outputs, every consumer's inputs, BatchNorm,
residual partners), so each group gets one order, decided by the first conv that needs it
(grouping/partition.py), and applied everywhere (grouping/permute.py).

    group-conv{groups=4 permute=true min-channels=16 layers=layer4.0.conv2:2}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...errors import SlimcError
from ..registry import Pass, PassResult, register_pass
from ._graph import private_copy, require_traced, set_submodule, single_threaded, unshare

__all__ = ["GroupConv"]


@register_pass
@dataclass(frozen=True)
class GroupConv(Pass):
    """Turn dense convs into grouped convs (block-diagonal weights), after a free channel permutation.

    groups:       group count of every eligible conv
    permute:      reorder channels first so the kept blocks hold most of the weight
    min_channels: convs with fewer input or output channels are left dense
    ignore:       layers (names or name prefixes) left dense
    layers:       per-layer group counts, e.g. layer4.0.conv2:2 (1 leaves the layer dense)
    """

    name: ClassVar[str] = "group-conv"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = False
    summary: ClassVar[str] = "dense convs to grouped convs (block-diagonal weights) after a channel permutation"

    groups: int = 4
    permute: bool = True
    min_channels: int = 16
    ignore: tuple[str, ...] = ()
    layers: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        bad = [f"{k}={v}" for k, v in {"groups": self.groups, **self.layers}.items() if v < 1]
        if bad:
            raise ValueError(f"group counts must be at least 1: {', '.join(bad)}")
        if self.min_channels < 1:
            raise ValueError("min-channels must be at least 1")

    def apply(self, program) -> PassResult:
        with single_threaded():
            return self._apply(program)

    def _apply(self, program) -> PassResult:

        from .grouping.partition import contiguous_blocks, kept_mass, mass_of
        from .grouping.plan import plan_and_permute
        from .prune.graph import analyze, output_shapes

        require_traced(program, "group-conv")
        gm = private_copy(program.ir).eval()
        candidates, skipped = self._candidates(gm)
        if not candidates:
            return PassResult(program, changed=False, details={"grouped": 0, "skipped": skipped})
        reference = output_shapes(gm, program.example_inputs)
        out_numels = _out_numels(gm, program.example_inputs, {name for name, _, _ in candidates})
        originals = {name: mod.weight for name, mod, _ in candidates}  # handlers replace, never write
        orders, perm_skipped, check = {}, {}, "not permuted"
        if self.permute:
            try:
                analysis = analyze(gm, program.example_inputs)
            except Exception as exc:  # grouping needs no analysis: cut in the original order
                first = str(exc).splitlines()[0] if str(exc) else ""
                check = f"channel analysis failed ({type(exc).__name__}: {first}): not permuted"
            else:
                gm, orders, perm_skipped, check = plan_and_permute(analysis, candidates, program.example_inputs)
        layers, totals = {}, {"params_before": 0, "params_after": 0, "macs_before": 0, "macs_after": 0}
        for name, _, g in candidates:
            mod = gm.get_submodule(name)
            new = _grouped(mod, g)
            set_submodule(gm, name, new)
            mass = mass_of(mod.weight)
            total = float(mass.sum()) or 1.0
            blocks_o, blocks_i = contiguous_blocks(mass.shape[0], g), contiguous_blocks(mass.shape[1], g)
            kept = kept_mass(mass, blocks_o, blocks_i) / total
            kept0 = kept_mass(mass_of(originals[name]), blocks_o, blocks_i) / total
            out_numel = out_numels.get(name, 0)
            row = {"groups": g, "kept_fraction": round(kept, 4), "kept_fraction_unpermuted": round(kept0, 4),
                   "params_before": _params(mod), "params_after": _params(new),
                   "macs_before": out_numel * mod.in_channels * _prod(mod.kernel_size),
                   "macs_after": out_numel * (mod.in_channels // g) * _prod(mod.kernel_size)}
            layers[name] = row
            for k in totals:
                totals[k] += row[k]
        gm.graph.lint()
        gm.recompile()
        unshare(gm, program.ir)
        got = output_shapes(gm, program.example_inputs)
        if got != reference:  # pragma: no cover - a grouped conv keeps its shapes
            raise SlimcError(f"group-conv changed the output shapes from {reference} to {got}; this is a bug.")
        details = {"grouped": len(layers), **totals, "layers": layers, "skipped": skipped,
                   "groups_permuted": len(orders), "permutation_check": check}
        if perm_skipped:
            details["permutation_skipped"] = perm_skipped
        return PassResult(program.with_ir(gm), changed=True, details=details)

    def _candidates(self, gm):
        """([(name, module, groups)], {name: why skipped}) in graph order."""
        import torch.nn as nn

        dense_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        seen, out, skipped = set(), [], {}
        names = {n for n, m in gm.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
        unknown = [k for k in self.layers if k not in names]
        if unknown:
            from ...errors import closest

            raise SlimcError(f"group-conv: layers names convs that do not exist: {', '.join(unknown)}"
                             f"{closest(unknown[0], names)}.")
        for node in gm.graph.nodes:
            if node.op != "call_module" or node.target in seen:
                continue
            seen.add(node.target)
            name, mod = node.target, gm.get_submodule(node.target)
            if isinstance(mod, nn.Linear):
                skipped[name] = "linear layers are not grouped"
                continue
            if not isinstance(mod, nn.modules.conv._ConvNd):
                continue
            g = self.layers.get(name, self.groups)
            why = None
            if type(mod) not in dense_types:
                why = f"{type(mod).__name__} is not grouped (only Conv1d/2d/3d)"
            elif any(name == i or name.startswith(i + ".") for i in self.ignore):
                why = "in the ignore list"
            elif mod.groups > 1:
                why = "depthwise" if mod.groups == mod.in_channels else f"already grouped (groups={mod.groups})"
            elif g == 1:
                why = "groups=1 asked"
            elif min(mod.in_channels, mod.out_channels) < self.min_channels:
                why = f"too small ({mod.in_channels}->{mod.out_channels} channels, min-channels={self.min_channels})"
            elif mod.in_channels % g or mod.out_channels % g:
                why = f"{mod.in_channels}->{mod.out_channels} channels are not divisible by groups={g}"
            if why:
                skipped[name] = why
            else:
                out.append((name, mod, g))
        return out, skipped


# ---- cutting --------------------------------------------------------------------------

def _grouped(mod, g: int):
    """A new conv with groups=g whose weight is the block diagonal of `mod.weight` (in its current order)."""
    import torch
    import torch.nn as nn

    w = mod.weight.detach()
    og, ig = mod.out_channels // g, mod.in_channels // g
    new = type(mod)(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                    dilation=mod.dilation, groups=g, bias=mod.bias is not None, padding_mode=mod.padding_mode,
                    device=w.device, dtype=w.dtype)
    blocks = [w[b * og:(b + 1) * og, b * ig:(b + 1) * ig] for b in range(g)]
    new.weight = nn.Parameter(torch.cat(blocks, 0).clone(), requires_grad=mod.weight.requires_grad)
    if mod.bias is not None:
        new.bias = nn.Parameter(mod.bias.detach().clone(), requires_grad=mod.bias.requires_grad)
    new.train(mod.training)
    return new


def _params(mod) -> int:
    return sum(p.numel() for p in mod.parameters())


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _out_numels(gm, example_inputs, names) -> dict[str, int]:
    """Output size of each named module on the example inputs (first call), for MAC counts."""
    import torch

    sizes, hooks = {}, []
    for name in names:
        def hook(mod, args, out, name=name):
            sizes.setdefault(name, out.numel())
        hooks.append(gm.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            gm(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return sizes
