"""The handler table: how each op moves channels, and how each layer is cut.

A handler's `propagate(ctx)` returns the label of the node's output (see graph.py) and
records couplings on `ctx.tracker`. A layer handler also names its parameter axes (*slots*),
gives the weights behind each slot for importance scores, and `shrink`s the layer given the
indices to keep per slot. Users add their own layers with `register_handler`::

    class MyScaleHandler(Handler):
        def propagate(self, ctx):
            ctx.tracker.slot(ctx.name, "ch", ctx.input_label(0), 1, "MyScale")
            return ctx.input_label(0)
        def weights(self, module, slot):
            return [(module.scale, 0)]
        def shrink(self, module, keep):
            module.scale = nn.Parameter(module.scale[keep["ch"]])

    register_handler(MyScale, MyScaleHandler())
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .graph import NodeContext
from .labels import channel_label, compact, rows

__all__ = ["Handler", "register_handler", "lookup_handler", "handler_for", "Pointwise", "Channelwise", "Opaque",
           "ApplyToLabels", "param_slice", "register_builtin", "registered", "user_module_handler"]

# Two layers: the built-in table (loaded lazily) and the user's registrations, which win.
_BUILTIN: dict[str, dict] = {"modules": {}, "functions": {}, "methods": {}}
_USER: dict[str, dict] = {"modules": {}, "functions": {}, "methods": {}}


class Handler:
    """Base handler. Subclasses override `propagate`; layer handlers also `weights` and `shrink`."""

    def propagate(self, ctx: NodeContext):
        raise NotImplementedError

    def weights(self, module: nn.Module, slot: str) -> list[tuple[torch.Tensor, int]]:
        """(parameter, axis) pairs whose slices along `axis` belong to the slot's channels."""
        return []

    def scale(self, module: nn.Module, slot: str) -> torch.Tensor | None:
        """A per-channel scale for the `bn` criterion (BatchNorm's gamma), if the layer has one."""
        return None

    def shrink(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module | None:
        """Cut `module` to the kept indices per slot; return a replacement or None (changed in place)."""
        return None


def register_handler(key, handler: Handler) -> None:
    """Register `handler` for a module class, a function (torch.cat, operator.add, an ATen op such as
    torch.ops.aten.conv2d) or a method name ("view"). User registrations always take precedence over
    slimc's built-in handlers, whenever these load."""
    _register(_USER, key, handler)


def register_builtin(key, handler: Handler) -> None:
    """How slimc's own handler modules register (below every user registration)."""
    _register(_BUILTIN, key, handler)


def _register(table: dict, key, handler: Handler) -> None:
    if isinstance(key, type) and issubclass(key, nn.Module):
        table["modules"][key] = handler
    elif isinstance(key, str):
        table["methods"][key] = handler
    elif callable(key):
        table["functions"][key] = handler
    else:
        raise TypeError(f"cannot register a prune handler for {key!r}")


def _get(kind: str, key):
    found = _USER[kind].get(key)
    return found if found is not None else _BUILTIN[kind].get(key)


def lookup_handler(node, module) -> Handler | None:
    _load_builtin()
    if node.op == "call_module":
        return handler_for(module)
    if node.op == "call_function":
        found = _get("functions", node.target)
        if found is None and hasattr(node.target, "overloadpacket"):  # aten.conv2d.default -> aten.conv2d
            found = _get("functions", node.target.overloadpacket)
        return found
    if node.op == "call_method":
        return _get("methods", node.target)
    return None


def user_module_handler(module: nn.Module) -> Handler | None:
    """The handler a user registered for this layer's class (or a base class), else None. On an
    exported graph such a module's subgraph is treated as one call of that handler."""
    for cls in type(module).__mro__:
        found = _USER["modules"].get(cls)
        if found is not None:
            return found
    # nn.MultiheadAttention keeps its heads in packed weights: its own handler cuts it (into SlimMultiheadAttention).
    from .attention import SlimMultiheadAttention

    if type(module) in (nn.MultiheadAttention, SlimMultiheadAttention):
        return handler_for(module)
    return None


def handler_for(module: nn.Module) -> Handler | None:
    """The handler of a layer (by class, most specific first), or None."""
    _load_builtin()
    for cls in type(module).__mro__:
        found = _get("modules", cls)
        if found is not None:
            return found
    return None


_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import aten_ops, attention, functional, layers, transformer  # noqa: F401  (importing registers)
        from .onnx2torch_ops import register_onnx2torch_handlers

        register_onnx2torch_handlers()


def param_slice(t: torch.Tensor | None, index: torch.Tensor, dim: int):
    """`t` cut to `index` along `dim`, a Parameter again if it was one (None stays None)."""
    if t is None:
        return None
    new = t.detach().index_select(dim, index)
    return nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new


# ---- generic op kinds ----------------------------------------------------------------------

class Pointwise(Handler):
    """Elementwise ops: inputs are coupled position by position (residual add, SE gate mul)."""

    def propagate(self, ctx):
        shape = ctx.out.shape
        tracked, untracked_args = [], []
        for val, lab in zip(_flat_values((ctx.args, ctx.kwargs)), _flat_values((ctx.arg_labels, ctx.kwarg_labels))):
            if not isinstance(val, torch.Tensor) or val.dim() == 0:
                continue
            if lab is None or not bool((compact(lab) >= 0).any()):
                untracked_args.append(val)
            else:
                tracked.append(torch.broadcast_to(lab, shape))
        if not tracked:
            return ctx.untracked_out()
        # After the union every operand names the same classes; keep the cheapest (most broadcast).
        tracked.sort(key=lambda lab: compact(lab).numel())
        first = tracked[0]
        for other in tracked[1:]:
            ctx.tracker.union(first, other, f"{ctx.describe()} combines it elementwise with other channels")
        for val in untracked_args:
            # An untracked operand of size 1 along the channel axes does not care about channels; nor
            # does one spread along an axis whose positions all leave together (rotary tables along
            # head_dim, whose positions go with their head).
            spread = [d for d in range(first.dim()) if first.stride(d) != 0 and first.shape[d] > 1]
            off = first.dim() - val.dim()
            axes = [d for d in spread if d - off >= 0 and val.shape[d - off] > 1]
            if axes:
                tracker, label, why = ctx.tracker, first, (
                    f"{ctx.describe()} combines it with a tensor whose channels are not followed")

                def check(analysis, axes=axes, label=label, why=why, tracker=tracker):
                    if any(analysis.varies(label, d) for d in axes):
                        tracker.pin(label, why)
                ctx.tracker.constraints.append(check)
        return first


def _flat_values(value) -> list:
    out = []
    if isinstance(value, (list, tuple)):
        for v in value:
            out.extend(_flat_values(v))
    elif isinstance(value, dict):
        for v in value.values():
            out.extend(_flat_values(v))
    else:
        out.append(value)
    return out


class Channelwise(Handler):
    """Ops that keep axis `dim` and mix the others (pooling, resizing, padding of spatial axes)."""

    def __init__(self, dim: int = 1):
        self.dim = dim

    def propagate(self, ctx):
        lab = ctx.input_label(0)
        if not isinstance(ctx.out, torch.Tensor) or ctx.out.dim() != lab.dim() or lab.dim() <= self.dim:
            ctx.pin_inputs(f"{ctx.describe()} changes the rank; channels cannot be followed")
            return ctx.untracked_out()
        r = rows(lab, self.dim)
        rep = r.amax(1)
        ctx.tracker.union(rep[:, None].expand_as(r), r, f"{ctx.describe()} mixes positions of one channel")
        return channel_label(rep, ctx.out.shape, self.dim)


class Opaque(Handler):
    """Ops whose channels cannot be followed: inputs stay whole, the output is untracked."""

    def __init__(self, why: str = "channels cannot be followed through it"):
        self.why = why

    def propagate(self, ctx):
        ctx.pin_inputs(f"{ctx.describe()}: {self.why}")
        return ctx.untracked_out()


class ApplyToLabels(Handler):
    """Pure data movement: run the op itself on the labels (module form, e.g. nn.Flatten)."""

    def propagate(self, ctx):
        return ctx.module(ctx.input_label(0))


def registered(kind: str) -> dict:
    """The merged table (read-only use): 'modules', 'functions' or 'methods'."""
    _load_builtin()
    return {**_BUILTIN[kind], **_USER[kind]}

