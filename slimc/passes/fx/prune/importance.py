"""Importance of each unit of each channel group, and the choice of units to remove.

A unit's score sums, over every parameter axis of its group (producer outputs, consumer
inputs, norms), the slices that belong to it, so the whole coupled structure votes.
"""

from __future__ import annotations

import math

import torch

from .graph import ChannelAnalysis, ChannelGroup
from .handlers import handler_for

__all__ = ["unit_scores", "choose_removals", "CRITERIA"]

CRITERIA = ("l1", "l2", "bn", "taylor", "random")
_GLOBAL_CAP = 0.9  # in global scope no group loses more than this share of its units


def _unit_index(analysis: ChannelAnalysis):
    """Class id -> (group index, unit position); -1 where a class is in no group."""
    n = int(analysis.class_of.max()) + 1 if analysis.class_of.numel() else 0
    group = torch.full((n,), -1, dtype=torch.long)
    unit = torch.full((n,), -1, dtype=torch.long)
    for gi, g in enumerate(analysis.groups):
        group[g.classes] = gi
        unit[g.classes] = torch.arange(g.size)
    return group, unit


def _slots(analysis: ChannelAnalysis):
    """(atoms, [(tensor, axis)], per-channel scale or None) for every slot of the analysis."""
    walk = getattr(analysis, "walk", None)
    if walk is not None:  # exported graph: slots are parameter axes of the user's module
        from .module_cut import _tensor

        for (fqn, axis), atoms in analysis.tracker.slots.items():
            if isinstance(axis, str):  # a slot named by a user's module handler
                mod = analysis.module.get_submodule(fqn) if fqn else analysis.module
                handler = handler_for(mod)
                yield atoms, handler.weights(mod, axis), handler.scale(mod, axis)
                continue
            if fqn.endswith(("#in", "#all")):
                continue
            tensor = _tensor(analysis.module, fqn)
            if not tensor.is_floating_point():
                continue
            scale = tensor.detach().abs() if (fqn, axis) in walk.scales else None
            yield atoms, [(tensor, axis)], scale
        return
    gm, lookup = analysis.gm, {}
    for (module, slot), atoms in analysis.tracker.slots.items():
        mod = gm.get_submodule(module)
        handler = lookup[module] if module in lookup else handler_for(mod)
        lookup[module] = handler
        yield atoms, (handler.weights(mod, slot) if handler else []), (handler.scale(mod, slot) if handler else None)


def _accumulate(analysis, per_slot) -> list[torch.Tensor]:
    group, unit = _unit_index(analysis)
    scores = [torch.zeros(g.size, dtype=torch.float64) for g in analysis.groups]
    found = [False] * len(analysis.groups)
    for atoms, weights, scale in _slots(analysis):
        values = per_slot(weights, scale, atoms.numel())
        if values is None:
            continue
        cls = analysis.classes(atoms)
        ok = cls >= 0
        gi, ui = group[cls[ok]], unit[cls[ok]]
        vals = values[ok]
        for g in gi.unique().tolist():
            if g < 0:
                continue
            sel = gi == g
            scores[g].index_add_(0, ui[sel], vals[sel].double())
            found[g] = True
    return scores, found


def _magnitude(power: float):
    cache: dict = {}  # a conv weight serves two slots (out and in): reduce its kernel axes once

    def per_axis(tensor, dim):
        key = (id(tensor), tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), dim if dim > 1 else -1)
        if key not in cache:
            t = tensor.detach()
            t = t.abs() if power == 1 else t * t
            if dim <= 1 and t.dim() >= 2:
                cache[key] = t.reshape(t.shape[0], t.shape[1], -1).sum(2)
            else:  # trailing then leading axes: contiguous reductions
                cache[key] = t.reshape(math.prod(t.shape[:dim]), t.shape[dim], -1).sum(2).sum(0)
        r = cache[key]
        if dim <= 1 and tensor.dim() >= 2:
            return r.sum(1 - dim)
        return r

    def per_slot(weights, scale, n):
        total = torch.zeros(n, dtype=torch.float64)
        for tensor, dim in weights:
            if tensor is None or tensor.shape[dim] != n:
                continue
            total += per_axis(tensor, dim % tensor.dim()).double()
        return total
    return per_slot


def _bn_scale(weights, scale, n):
    return scale.double() if scale is not None and scale.numel() == n else None


def unit_scores(analysis: ChannelAnalysis, criterion: str, example_inputs=(), seed: int = 0):
    """Scores (higher = more important) per group, aligned with `group.classes`, and notes for the report."""
    notes: list[str] = []
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(g.size, generator=gen, dtype=torch.float64) for g in analysis.groups], notes
    if criterion == "taylor":
        return _taylor(analysis, example_inputs, seed, notes), notes
    if criterion == "bn":
        scores, found = _accumulate(analysis, _bn_scale)
        l2, _ = _accumulate(analysis, _magnitude(2))
        fallback = [g.name for g, f in zip(analysis.groups, found) if not f and g.prunable]
        if fallback:
            notes.append(f"bn: {len(fallback)} group(s) have no BatchNorm; scored by l2 instead")
        return [s if f else torch.sqrt(l) for s, l, f in zip(scores, l2, found)], notes
    scores, _ = _accumulate(analysis, _magnitude(1 if criterion == "l1" else 2))
    return (scores if criterion == "l1" else [torch.sqrt(s) for s in scores]), notes


def _taylor(analysis, example_inputs, seed, notes):
    """First-order Taylor |w * dL/dw| with L = the norm of the model's own outputs on random inputs."""
    gm = analysis.module if getattr(analysis, "walk", None) is not None else analysis.gm
    gen = torch.Generator().manual_seed(seed)
    calib = tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype) if x.is_floating_point() else x
                  for x in example_inputs)
    notes.append("taylor: gradients from random calibration inputs shaped like the example inputs, "
                 "loss = norm of the model's own outputs (no data was given)")
    params = [p for p in gm.parameters() if p.is_floating_point()]
    with torch.enable_grad():
        outs = gm(*calib)
        from torch.utils._pytree import tree_leaves

        flat = [o for o in tree_leaves(outs) if isinstance(o, torch.Tensor) and o.is_floating_point()]
        loss = sum(o.float().norm() for o in flat)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    saved = [p.data for p in params]
    try:
        for p, g in zip(params, grads):
            p.data = (p.data * g).abs() if g is not None else torch.zeros_like(p.data)
        scores, _ = _accumulate(analysis, _magnitude(1))
    finally:
        for p, d in zip(params, saved):
            p.data = d
    return scores


# ---- choosing what to remove ------------------------------------------------------------

def _ratio_for(name: str, ratio: float, ratios: dict) -> float:
    if name in ratios:
        return ratios[name]
    best = max((k for k in ratios if name.startswith(k + ".") or name.startswith(k + ":")), key=len, default=None)
    return ratios[best] if best is not None else ratio


def _kept_units(g: ChannelGroup, ratio: float, round_to: int, min_channels: int) -> int:
    n = g.size
    step = round_to // math.gcd(round_to, g.width) if round_to > 1 else 1
    kept = n - math.floor(n * ratio + 1e-9)
    kept = max(kept, math.ceil(min_channels / g.width), 1)
    kept = math.ceil(kept / step) * step
    return max(min(kept, n), g.pinned)


def _lowest(g: ChannelGroup, score: torch.Tensor, count: int) -> torch.Tensor:
    free = (~g.pinned_mask).nonzero().flatten()
    order = free[score[free].argsort(stable=True)]
    return order[:count]


def choose_removals(groups, scores, ratio: float, scope: str = "local", round_to: int = 1,
                    min_channels: int = 1, ratios: dict | None = None) -> dict[str, torch.Tensor]:
    """Unit positions to remove per group name (groups left whole are absent)."""
    ratios = ratios or {}
    out: dict[str, torch.Tensor] = {}
    pool = []
    for g, s in zip(groups, scores):
        if not g.prunable:
            continue
        r = _ratio_for(g.name, ratio, ratios)
        if scope == "global" and g.name not in ratios and r == ratio:
            pool.append((g, s))
            continue
        kept = _kept_units(g, r, round_to, min_channels)
        if kept < g.size:
            out[g.name] = _lowest(g, s, g.size - kept)
    if pool:
        out.update(_global(pool, ratio, round_to, min_channels))
    return {k: v for k, v in out.items() if v.numel()}


def _global(pool, ratio, round_to, min_channels):
    total = sum(g.channels for g, _ in pool)
    target = math.floor(total * ratio)
    cand = []
    for gi, (g, s) in enumerate(pool):
        norm = s / (s.mean() + 1e-12)
        for u in (~g.pinned_mask).nonzero().flatten().tolist():
            cand.append((float(norm[u]), gi, u))
    cand.sort()
    removed = [[] for _ in pool]
    caps = [min(g.size - max(math.ceil(min_channels / g.width), 1), math.floor(g.size * _GLOBAL_CAP)) for g, _ in pool]
    done = 0
    for _, gi, u in cand:
        if done >= target:
            break
        if len(removed[gi]) < caps[gi]:
            removed[gi].append(u)
            done += pool[gi][0].width
    out = {}
    for (g, s), units in zip(pool, removed):
        kept = _kept_units(g, len(units) / g.size, round_to, min_channels) if units else g.size
        units = sorted(units, key=lambda u: float(s[u]))[: g.size - kept]
        out[g.name] = torch.tensor(units, dtype=torch.long)
    return out
