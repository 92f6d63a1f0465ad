"""Module surgery: cut every layer, parameter and graph constant to the kept channels.

The GraphModule handed in is the one that was analysed (the pass's private copy); its layers
are replaced by smaller dense ones, so the result is a normal trainable nn.Module.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .graph import ChannelAnalysis
from .labels import rows
from .handlers import handler_for

__all__ = ["Cut", "apply_cut"]


class Cut:
    """Which classes are removed; answers "what is kept along this axis of this label"."""

    def __init__(self, analysis: ChannelAnalysis, removed_units: dict[str, torch.Tensor]):
        self.analysis = analysis
        n = int(analysis.class_of.max()) + 1 if analysis.class_of.numel() else 0
        self.removed = torch.zeros(n + 1, dtype=torch.bool)  # last entry: untracked (-1), never removed
        for g in analysis.groups:
            units = removed_units.get(g.name)
            if units is not None and units.numel():
                self.removed[g.classes[units]] = True

    def removed_at(self, label: torch.Tensor) -> torch.Tensor:
        cls = self.analysis.classes(label)
        return self.removed[torch.where(cls >= 0, cls, torch.full_like(cls, -1))]

    def kept(self, label: torch.Tensor, dim: int) -> torch.Tensor:
        """Bool per index of axis `dim`: kept unless every position there is removed."""
        return ~self.removed_at(rows(label, dim)).all(1)


def _set_attr(root: nn.Module, qualname: str, value) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(value, nn.Module):
        setattr(parent, attr, value)
    elif attr in parent._parameters:
        parent._parameters[attr] = nn.Parameter(value, requires_grad=parent._parameters[attr].requires_grad)
    elif attr in parent._buffers:
        parent._buffers[attr] = value
    else:
        setattr(parent, attr, value)


def _cut_param(tensor: torch.Tensor, removed: torch.Tensor, name: str, free: torch.Tensor | None = None) -> torch.Tensor:
    """`tensor` less the slices along one axis whose positions are all removed. `free` marks positions
    tied to nothing (never read: table rows a smaller window does not gather); they go with their slice."""
    for d in range(tensor.dim()):
        along = removed.movedim(d, 0).reshape(tensor.shape[d], -1)
        idle = along if free is None else free.movedim(d, 0).reshape(tensor.shape[d], -1)
        drop = (along | idle).all(1) & along.any(1)
        # The removed positions must be whole slices along one axis.
        if bool((drop | ~along.any(1)).all()) and drop.any():
            keep = (~drop).nonzero().flatten()
            return tensor.detach().index_select(d, keep).clone()
    raise RuntimeError(f"parameter '{name}' would lose positions that do not form whole slices")


def apply_cut(analysis: ChannelAnalysis, removed_units: dict[str, torch.Tensor]) -> list[str]:
    """Shrink `analysis.gm` in place; returns the names of the layers that changed."""
    gm, tracker = analysis.gm, analysis.tracker
    cut = Cut(analysis, removed_units)
    per_module: dict[str, dict[str, torch.Tensor]] = {}
    changed: set[str] = set()
    for (module, slot), atoms in tracker.slots.items():
        gone = cut.removed_at(atoms)
        per_module.setdefault(module, {})[slot] = (~gone).nonzero().flatten()
        if bool(gone.any()):
            changed.add(module)
    for module in sorted(changed):
        mod = gm.get_submodule(module)
        new = handler_for(mod).shrink(mod, per_module[module])
        if new is not None and new is not mod:
            _set_attr(gm, module, new)
    for target, label in tracker.params.items():
        gone = cut.removed_at(label)
        if bool(gone.any()):
            owner_name, _, attr = target.rpartition(".")
            value = getattr(gm.get_submodule(owner_name) if owner_name else gm, attr)
            _set_attr(gm, target, _cut_param(value, gone, target))
            changed.add(target)
    for rewrite in tracker.rewrites:
        rewrite(cut)
    gm.recompile()
    return sorted(changed)
