"""Consistent channel permutations over the prune analysis's channel groups.

Reordering a layer's output channels changes nothing when every consumer's input axis (and
everything coupled with it: BatchNorm, residual partners, a flatten->linear block) is
reordered the same way. That set is exactly a `ChannelGroup` of the prune analysis, so a
permutation is given per group as the new order of its units and applied at every
(module, slot) that holds its classes, positions moving by the new rank of their class.

A group is permuted only when that is certainly free (`permutable_groups` says why not).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..prune.graph import ChannelAnalysis, ChannelGroup
from ..prune.handlers import handler_for
from ..prune.labels import compact

__all__ = ["permutable_groups", "permutation_indices", "apply_permutation"]

# Layers whose prune handler cuts with index_select in the order given (checked in
# prune/layers.py): a permuted index list reorders them exactly.
_ORDERED_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
                  nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding)


def _slot_classes(analysis: ChannelAnalysis) -> dict[tuple[str, str], torch.Tensor]:
    return {key: analysis.classes(atoms) for key, atoms in analysis.tracker.slots.items()}


def _unit_of(analysis: ChannelAnalysis, group: ChannelGroup) -> torch.Tensor:
    """class id -> unit index in `group` (-1 for classes of other groups); last entry for -1."""
    n = int(analysis.class_of.max()) + 1 if analysis.class_of.numel() else 0
    unit = torch.full((n + 1,), -1, dtype=torch.long)
    unit[group.classes] = torch.arange(group.size)
    return unit


def _canonical(seq: torch.Tensor, size: int) -> bool:
    """Whether unit ids read along an axis are runs of 0, 1, ..., size-1 of one common length."""
    if seq.numel() == 0 or seq.numel() % size:
        return False
    run = seq.numel() // size
    return torch.equal(seq, torch.arange(size).repeat_interleave(run))


def permutable_groups(analysis: ChannelAnalysis) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """(groups that can be permuted for free, {group name: why not} for the others)."""
    gm = analysis.gm
    slot_cls = _slot_classes(analysis)
    param_classes = set()
    for label in analysis.tracker.params.values():
        c = analysis.classes(compact(label)).unique()
        param_classes.update(c[c >= 0].tolist())
    partial = _partly_seen(analysis)
    ok, skipped = {}, {}
    for gi, g in enumerate(analysis.groups):
        why = _why_not(analysis, g, gm, slot_cls, param_classes)
        if why is None and gi in partial:
            why = "some node sees only part of its channels (slicing or split)"
        if why:
            skipped[g.name] = why
        else:
            ok[g.name] = g
    return ok, skipped


def _partly_seen(analysis: ChannelAnalysis) -> set[int]:
    """Indices of groups of which some node output holds some, but not all, classes."""
    n = int(analysis.class_of.max()) + 1 if analysis.class_of.numel() else 0
    group_of = torch.full((n,), -1, dtype=torch.long)
    sizes = torch.zeros(len(analysis.groups), dtype=torch.long)
    for gi, g in enumerate(analysis.groups):
        group_of[g.classes] = gi
        sizes[gi] = g.classes.numel()
    partial: set[int] = set()
    for lab in _flat(analysis.labels.values()):
        c = analysis.classes(compact(lab)).unique()
        gids = group_of[c[c >= 0]]
        counts = torch.bincount(gids[gids >= 0], minlength=len(sizes))
        partial.update(((counts > 0) & (counts < sizes)).nonzero().flatten().tolist())
    return partial


def _why_not(analysis, g, gm, slot_cls, param_classes) -> str | None:
    if g.size < 2:
        return "a single unit"
    if g.width != 1:
        return f"units are {g.width} channels wide (heads or tied blocks)"
    if g.pinned:
        return "pinned units: " + "; ".join(g.reasons[:2])
    if param_classes.intersection(g.classes.tolist()):
        return "its channels reach a graph constant (get_attr), which is not permuted"
    unit = _unit_of(analysis, g)
    for (module, slot), cls in slot_cls.items():
        u = unit[torch.where(cls >= 0, cls, torch.full_like(cls, -1))]
        seq = u[u >= 0]
        if not seq.numel():
            continue
        mod = gm.get_submodule(module)
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        if not isinstance(mod, _ORDERED_TYPES) or (transposed and mod.groups != 1):
            return f"reaches a {type(mod).__name__} ('{module}') that is not permuted"
        if not _canonical(seq, g.size):
            return f"'{module}:{slot}' sees its channels sliced, split or reordered"
    return None


def _flat(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _flat(v)
        elif isinstance(v, dict):
            yield from _flat(v.values())


def permutation_indices(analysis: ChannelAnalysis,
                        orders: dict[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """Index list per (module, slot) that applies `orders` ({group name: units in their new order}).

    Only slots that change are returned. Within the positions of a permuted group, positions
    are sorted (stably) by the new rank of their class, so multi-position classes move whole.
    """
    n = int(analysis.class_of.max()) + 1 if analysis.class_of.numel() else 0
    rank = torch.full((n + 1,), -1, dtype=torch.long)
    owner = torch.full((n + 1,), -1, dtype=torch.long)
    by_name = {g.name: g for g in analysis.groups}
    for gi, (name, order) in enumerate(orders.items()):
        g = by_name[name]
        order = torch.as_tensor(order, dtype=torch.long)
        if not torch.equal(order.sort().values, torch.arange(g.size)):
            raise ValueError(f"order for group '{name}' is not a permutation of its {g.size} units")
        rank[g.classes[order]] = torch.arange(g.size)
        owner[g.classes] = gi
    out = {}
    for key, cls in _slot_classes(analysis).items():
        c = torch.where(cls >= 0, cls, torch.full_like(cls, -1))
        own = owner[c]
        index = torch.arange(cls.numel())
        changed = False
        for gi in own[own >= 0].unique().tolist():
            pos = (own == gi).nonzero().flatten()
            new = pos[torch.sort(rank[c[pos]], stable=True).indices]
            if not torch.equal(new, pos):
                index[pos] = new
                changed = True
        if changed:
            out[key] = index
    return out


def apply_permutation(analysis: ChannelAnalysis, orders: dict[str, torch.Tensor]) -> list[str]:
    """Reorder the layers of `analysis.gm` in place (modules replaced by the handlers' new tensors).

    The modules must be private to the caller (their tensors may be shared: handlers replace
    them, never write into them). Returns the names of the layers that changed.
    """
    per_slot = permutation_indices(analysis, orders)
    modules = sorted({m for m, _ in per_slot})
    for module in modules:
        mod = analysis.gm.get_submodule(module)
        keep = {slot: per_slot.get((module, slot), torch.arange(atoms.numel()))
                for (m, slot), atoms in analysis.tracker.slots.items() if m == module}
        handler_for(mod).shrink(mod, keep)
    return modules
