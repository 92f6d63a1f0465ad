"""`group-conv`: replace dense convolutions by grouped ones, keeping the block diagonal of each weight.

A conv with groups=g connects input block k only to output block k, so it has 1/g of the
parameters and MACs. Before cutting, channels are permuted so the weight mass inside the
diagonal blocks is as large as possible. A permutation is free when it is applied to a whole
channel group of the prune analysis (producer outputs, every consumer's inputs, BatchNorm,
residual partners), so each group gets one order, decided by the first conv that needs it
(grouping/partition.py), and applied everywhere (grouping/permute.py).

Analysis on the exported graph, rewrite on the user's module: the convs are found on
`program.exported()` (the ATen conv calls and the parameters they read, mapped to their module
by the graph signature), the channel groups come from the prune analysis of that graph, and the
permutation and the cut replace parameters and conv submodules of a private copy of the module,
so the result is the user's own class with its own `forward`. Models torch.export refuses are
traced with torch.fx instead (the report's "frontend" says so).

    group-conv{groups=4 permute=true min-channels=16 layers=layer4.0.conv2:2}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...errors import SlimcError
from ..registry import Pass, PassResult, register_pass
from ._graph import (CONV_OPS, CONV_TRANSPOSE_OPS, aten_name, private_copy, require_module, set_submodule,
                     single_threaded, unshare)

__all__ = ["GroupConv"]


@register_pass
@dataclass(frozen=True)
class GroupConv(Pass):
    """Turn dense convs into grouped convs (block-diagonal weights), after a free channel permutation.

    groups:       group count of every eligible conv
    permute:      reorder channels first so the kept blocks hold most of the weight
    min_channels: convs with fewer input or output channels are left dense
    ignore:       layers (names or name prefixes) left dense
    layers:       group counts by layer name or name prefix, e.g. layer4:2 or layer4.0.conv2:8 (the
                  longest matching prefix wins; 1 leaves the layer dense)
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
        import torch.nn as nn

        from ...frontend.export import export_module

        if not isinstance(program.ir, nn.Module):
            raise SlimcError(f"group-conv works on a PyTorch module, got {type(program.ir).__name__}.")
        require_module(program, "group-conv")
        try:
            # The frontend's cached export of this module object (eval mode, as the analysis wants).
            training = any(m.training for m in program.ir.modules())
            exported = export_module(private_copy(program.ir).eval(), program.example_inputs) if training \
                else program.exported()
        except SlimcError as exc:
            return self._apply_traced(program, f"torch.export refused the model: {str(exc)[:200]}")
        work = private_copy(program.ir).eval()
        candidates, skipped = self._candidates(work, _exported_layers(exported, work))

        def analyse():
            from .prune import aten_graph

            return aten_graph.analyze_module(work, program.example_inputs, exported=exported)

        return self._group(program, work, candidates, skipped, analyse, "torch.export")

    def _apply_traced(self, program, why: str) -> PassResult:
        """The fallback for models torch.export refuses: the same cut on a torch.fx graph."""
        program = _traced(program)
        gm = private_copy(program.ir).eval()
        candidates, skipped = self._candidates(gm, _traced_layers(gm))

        def analyse():
            from .prune import graph

            return graph.analyze(gm, program.example_inputs)

        return self._group(program, gm, candidates, skipped, analyse, f"torch.fx.symbolic_trace graph ({why})")

    def _group(self, program, gm, candidates, skipped, analyse, frontend) -> PassResult:
        """Permute (when asked and free), then cut every candidate conv to its block diagonal."""
        import torch.fx

        from .grouping.partition import contiguous_blocks, kept_mass, mass_of
        from .grouping.plan import plan_and_permute
        from .prune.graph import output_shapes

        if not candidates:
            return PassResult(program, changed=False, details={"grouped": 0, "skipped": skipped, "frontend": frontend})
        reference = output_shapes(gm, program.example_inputs)
        inputs_of = _input_shapes(gm, program.example_inputs, {name for name, _, _ in candidates})
        originals = {name: mod.weight for name, mod, _ in candidates}  # permutations replace, never write
        orders, perm_skipped, check = {}, {}, "not permuted"
        if self.permute:
            try:
                analysis = analyse()
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
            row = {"groups": g, "kept_fraction": round(kept, 4), "kept_fraction_unpermuted": round(kept0, 4),
                   "params_before": _params(mod), "params_after": _params(new),
                   "macs_before": _layer_macs(mod, inputs_of.get(name)),
                   "macs_after": _layer_macs(new, inputs_of.get(name))}
            layers[name] = row
            for k in totals:
                totals[k] += row[k]
        if isinstance(gm, torch.fx.GraphModule):
            gm.graph.lint()
            gm.recompile()
        unshare(gm, program.ir)
        got = output_shapes(gm, program.example_inputs)
        if got != reference:  # pragma: no cover - a grouped conv keeps its shapes
            raise SlimcError(f"group-conv changed the output shapes from {reference} to {got}; this is a bug.")
        details = {"grouped": len(layers), **totals, "layers": layers, "skipped": skipped,
                   "groups_permuted": len(orders), "permutation_check": check, "frontend": frontend}
        if perm_skipped:
            details["permutation_skipped"] = perm_skipped
        return PassResult(program.with_ir(gm), changed=True, details=details)

    def _candidates(self, gm, layers):
        """([(name, module, groups)], {name: why skipped}) for `layers` [(module path, why or None)] in
        graph order: the conv and linear layers the graph calls."""
        import torch.nn as nn

        dense_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        out, skipped = [], {}
        names = {n for n, m in gm.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
        unknown = [k for k in self.layers if not any(_matches(n, k) for n in names)]
        if unknown:
            from ...errors import closest

            raise SlimcError(f"group-conv: layers names convs (or name prefixes) that do not exist: "
                             f"{', '.join(unknown)}{closest(unknown[0], names)}.")
        for name, why in layers:
            mod = gm.get_submodule(name)
            if isinstance(mod, nn.Linear):
                skipped[name] = "linear layers are not grouped"
                continue
            if not isinstance(mod, nn.modules.conv._ConvNd):
                continue
            g = _by_prefix(name, self.layers, self.groups)
            if why:
                pass
            elif type(mod) not in dense_types:
                why = f"{type(mod).__name__} is not grouped (only Conv1d/2d/3d)"
            elif any(_matches(name, i) for i in self.ignore):
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


# ---- which layers the graph calls ------------------------------------------------------

_LAYER_OPS = CONV_OPS + CONV_TRANSPOSE_OPS + ("linear", "addmm")


def _exported_layers(exported, module) -> list[tuple[str, str | None]]:
    """[(module path, why it cannot be grouped or None)] of the conv and linear calls of the exported
    graph, in graph order. A layer is the module owning the weight the call reads (or, for a weight
    computed in forward, the module the call runs in); a conv whose weight another module's forward
    uses is not grouped, since setting `groups` on it would not change that call."""
    from ...ir.exported import parameter_owners
    from .prune.aten_graph import module_of

    owners = parameter_owners(exported)
    layers: dict[str, str | None] = {}
    for node in exported.graph.nodes:
        op = aten_name(node)
        if op not in _LAYER_OPS or len(node.args) < 2:
            continue
        weight = node.args[2] if op == "addmm" else node.args[1]
        fqn = owners.get(weight.name) if getattr(weight, "op", None) == "placeholder" else None
        caller = module_of(node)
        path = fqn.rpartition(".")[0] if fqn else caller
        try:
            module.get_submodule(path)
        except AttributeError:
            continue
        why = None
        if fqn and caller != path and not caller.startswith(path + "."):
            why = f"its weight is used by '{caller or type(module).__name__}', outside its own forward"
        if path not in layers or (why and not layers[path]):
            layers[path] = why
    return list(layers.items())


def _traced_layers(gm) -> list[tuple[str, None]]:
    """The modules a torch.fx graph calls, in graph order."""
    seen: dict[str, None] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            seen.setdefault(node.target, None)
    return list(seen.items())


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


def _matches(name: str, prefix: str) -> bool:
    """`prefix` names the layer itself or a module containing it (as ignore= and prune-channels' ratios=)."""
    return name == prefix or name.startswith(prefix + ".")


def _by_prefix(name: str, table: dict, default):
    best = max((k for k in table if _matches(name, k)), key=len, default=None)
    return table[best] if best is not None else default


def _traced(program):
    """The fallback rewrites a torch.fx graph: a plain module is traced first (the result is a GraphModule)."""
    import torch.fx
    import torch.nn as nn

    if isinstance(program.ir, nn.Module) and not isinstance(program.ir, torch.fx.GraphModule):
        try:
            return program.with_ir(torch.fx.symbolic_trace(program.ir))
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlimcError(f"group-conv needs a model torch.export or torch.fx can capture; export refused "
                             f"{type(program.ir).__name__} and tracing it failed too: {first}. Leave group-conv out "
                             "of the pipeline for this model.") from exc
    return program


def _layer_macs(mod, input_shape) -> int:
    """MACs of one layer on its input shape, from the shared counter (slimc.ir.stats)."""
    import torch

    from ...ir.stats import stats_of

    if input_shape is None:
        return 0
    return stats_of(mod, (torch.empty(input_shape, device="meta"),)).macs  # counted on meta tensors


def _input_shapes(gm, example_inputs, names) -> dict[str, tuple]:
    """Input shape of each named module on the example inputs (first call)."""
    import torch

    shapes, hooks = {}, []
    for name in names:
        def hook(mod, args, name=name):
            shapes.setdefault(name, tuple(args[0].shape))
        hooks.append(gm.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            gm(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return shapes
