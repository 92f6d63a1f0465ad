"""What the prune report says about cost: layer MACs before and after, and what held channels.

MACs here are those of the layers the analysis saw on the exported graph (convolutions,
linear layers, matmuls, attention), the ones pruning can change; the compile report's own
counter (slimc/ir/stats.py) gives the whole model's.
"""

from __future__ import annotations

import torch

from .shrink import Cut

__all__ = ["mac_estimate", "blockers"]


def _kept_fraction(cut: Cut, atoms: torch.Tensor) -> float:
    return float((~cut.removed_at(atoms)).float().mean()) if atoms.numel() else 1.0


def mac_estimate(analysis, removed_units) -> tuple[int, int]:
    """(dense, pruned) MACs of the analysed layers: each layer scales with its kept inputs and outputs."""
    cut = Cut(analysis, removed_units)
    slots = analysis.tracker.slots
    dense = after = 0
    for node, macs in analysis.macs.items():
        dense += macs
        frac = 1.0
        for key in analysis.layer_slots.get(node, ()):
            if key in slots:
                frac *= _kept_fraction(cut, slots[key])
        after += macs * frac
    return int(dense), int(after)


def blockers(analysis, full: bool = False) -> list[dict]:
    """One entry per reason channels were pinned, with the layer MACs whose channels it holds, largest first."""
    class_of, slots = analysis.class_of, analysis.tracker.slots
    layer_classes = []
    for node, macs in analysis.macs.items():
        keys = [k for k in analysis.layer_slots.get(node, ()) if k in slots]
        atoms = torch.cat([slots[k] for k in keys]) if keys else torch.empty(0, dtype=torch.long)
        atoms = atoms[atoms >= 0]
        layer_classes.append((macs, class_of[atoms].unique() if atoms.numel() else atoms))
    by_reason: dict[str, torch.Tensor] = {}
    for atoms, reason in analysis.tracker.pins:
        cls = class_of[atoms].unique()
        by_reason[reason] = torch.cat([by_reason[reason], cls]) if reason in by_reason else cls
    out = []
    for reason, cls in by_reason.items():
        cls = cls.unique()
        held = sum(m for m, lc in layer_classes if lc.numel() and bool(torch.isin(lc, cls).any()))
        out.append({"reason": reason, "macs_held": int(held)})
    out.sort(key=lambda b: -b["macs_held"])
    return out if full else out[:10]
