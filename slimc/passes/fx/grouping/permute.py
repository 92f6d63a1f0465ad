"""Consistent channel permutations over the prune analysis's channel groups.

Reordering a layer's output channels changes nothing when every consumer's input axis (and
everything coupled with it: BatchNorm, residual partners, a flatten->linear block) is
reordered the same way. That set is exactly a `ChannelGroup` of the prune analysis, so a
permutation is given per group as the new order of its units and applied at every slot that
holds its classes, positions moving by the new rank of their class.

Two kinds of analysis: on the exported ATen graph (prune/aten_graph.py) a slot is a parameter
axis of the user's module ('b1.conv1.weight', 0) and the permutation reorders that parameter
(or buffer) along that axis; on a torch.fx graph (the symbolic_trace fallback) a slot is
(module, 'in'/'out') and the layer's prune handler reorders it.

A group is permuted only when that is certainly free (`permutable_groups` says why not).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..prune.graph import ChannelAnalysis, ChannelGroup
from ..prune.handlers import handler_for
from ..prune.labels import compact

__all__ = ["permutable_groups", "permutation_indices", "apply_permutation", "is_exported_analysis"]

# Layers whose prune handler cuts with index_select in the order given (checked in
# prune/layers.py): a permuted index list reorders them exactly.
_ORDERED_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
                  nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding)


def is_exported_analysis(analysis) -> bool:
    """Whether `analysis` ran on the exported ATen graph (slots are parameter axes of `analysis.module`)."""
    return getattr(analysis, "walk", None) is not None


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
    slot_problem = _exported_slot_problem(analysis) if is_exported_analysis(analysis) else _fx_slot_problem(analysis)
    slot_cls = _slot_classes(analysis)
    param_classes = set()
    for label in analysis.tracker.params.values():
        c = analysis.classes(compact(label)).unique()
        param_classes.update(c[c >= 0].tolist())
    partial = _partly_seen(analysis)
    ok, skipped = {}, {}
    for gi, g in enumerate(analysis.groups):
        why = _why_not(analysis, g, slot_problem, slot_cls, param_classes)
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


def _why_not(analysis, g, slot_problem, slot_cls, param_classes) -> str | None:
    if g.size < 2:
        return "a single unit"
    if g.width != 1:
        return f"units are {g.width} channels wide (heads or tied blocks)"
    if g.pinned:
        return "pinned units: " + "; ".join(g.reasons[:2])
    if param_classes.intersection(g.classes.tolist()):
        return ("its channels reach a parameter read element by element (not by a layer), which is not permuted"
                if is_exported_analysis(analysis) else
                "its channels reach a graph constant (get_attr), which is not permuted")
    unit = _unit_of(analysis, g)
    for (module, slot), cls in slot_cls.items():
        u = unit[torch.where(cls >= 0, cls, torch.full_like(cls, -1))]
        seq = u[u >= 0]
        if not seq.numel():
            continue
        problem = slot_problem((module, slot), cls.numel())
        if problem:
            return problem
        if not _canonical(seq, g.size):
            return f"'{module}:{slot}' sees its channels sliced, split or reordered"
    return None


def _fx_slot_problem(analysis):
    """(module, 'in'/'out') slots: only layers whose handler cuts with index_select in order permute."""
    def problem(key, length):
        module = key[0]
        mod = analysis.gm.get_submodule(module)
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        if not isinstance(mod, _ORDERED_TYPES) or (transposed and mod.groups != 1):
            return f"reaches a {type(mod).__name__} ('{module}') that is not permuted"
        return None
    return problem


def _exported_slot_problem(analysis):
    """(parameter FQN, axis) slots: any parameter or buffer reordered along the axis the graph reads
    channels on, except slots of user module handlers and nn.MultiheadAttention's packed weights."""
    from ..prune.module_cut import _tensor

    attention = [n for n, m in analysis.module.named_modules() if isinstance(m, nn.MultiheadAttention)]

    def problem(key, length):
        fqn, axis = key
        if not isinstance(axis, int):
            return f"reaches '{fqn}:{axis}', a slot of a module-level handler, which is not permuted"
        if fqn.endswith(("#in", "#all")):  # a grouped conv's input side: its classes are its outputs' (moved there)
            return None
        owner = fqn.rpartition(".")[0]
        if any(owner == a or owner.startswith(a + ".") for a in attention):
            return f"reaches nn.MultiheadAttention '{owner}' (packed weights), which is not permuted"
        try:
            t = _tensor(analysis.module, fqn)
        except AttributeError:
            t = None
        if not isinstance(t, torch.Tensor) or t.dim() <= axis or t.shape[axis] != length:
            return f"'{fqn}' axis {axis} does not hold these channels one per position; not permuted"
        return None
    return problem


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
    """Reorder the layers of the analysed module in place: `analysis.module` (exported analysis: its
    parameters and buffers are replaced by reordered copies) or `analysis.gm` (torch.fx analysis:
    the layers' prune handlers replace their tensors).

    The modules must be private to the caller (their tensors may be shared with the user's: they
    are replaced, never written into). Returns the names of the modules that changed.
    """
    if is_exported_analysis(analysis):
        return _apply_to_parameters(analysis, orders)
    per_slot = permutation_indices(analysis, orders)
    modules = sorted({m for m, _ in per_slot})
    for module in modules:
        mod = analysis.gm.get_submodule(module)
        keep = {slot: per_slot.get((module, slot), torch.arange(atoms.numel()))
                for (m, slot), atoms in analysis.tracker.slots.items() if m == module}
        handler_for(mod).shrink(mod, keep)
    return modules


def _apply_to_parameters(analysis, orders) -> list[str]:
    """Exported analysis: every (parameter, axis) slot that changes is index_select-ed; tied names
    (one tensor under several names) get the same new tensor."""
    from ..prune.module_cut import _aliases, _assign, _tensor

    per_fqn: dict[str, list] = {}
    for (fqn, axis), index in permutation_indices(analysis, orders).items():
        if not fqn.endswith(("#in", "#all")):  # no tensor of its own (a grouped conv's input side)
            per_fqn.setdefault(fqn, []).append((axis, index))
    root = analysis.module
    aliases = _aliases(root)
    for fqn, axes in per_fqn.items():
        old = _tensor(root, fqn)
        new = old.detach()
        for axis, index in axes:
            new = new.index_select(axis, index)
        new = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
        for name in aliases.get(fqn, [fqn]):
            _assign(root, name, new, old)
    return sorted({fqn.rpartition(".")[0] for fqn in per_fqn})
