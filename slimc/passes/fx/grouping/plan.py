"""Which order each channel group gets before group-conv cuts, and applying it safely.

Convs are visited in graph order; a group's order is decided once, by the first conv that
reads or writes it as a whole (its slot holds exactly that group): the free side is assigned
to balanced blocks given the other side (co-clustering when both are free). Block k of the
inputs pairs with block k of the outputs, as in a grouped conv.
"""

from __future__ import annotations

__all__ = ["plan_and_permute"]


def plan_and_permute(analysis, candidates, example_inputs):
    """Decide one order per permutable group (graph order of the convs) and apply them.

    The analysis ran on the exported graph (the module is `analysis.module`, a conv's slots are its
    weight's axes) or on a torch.fx graph (`analysis.gm`, slots (conv, 'in'/'out')).
    Returns (module, orders, skipped groups, check). The permuted model is compared with the
    unpermuted one on the example inputs; if it differs (an op the analysis could not see
    through), the permutation is dropped and the layers are cut in their original order.
    """
    import torch

    from .._graph import private_copy
    from . import permute
    from .partition import cocluster, contiguous_blocks, mass_of, order_from_blocks

    exported = permute.is_exported_analysis(analysis)

    def slot(name, side):  # a dense conv's weight is (out, in, k...)
        return (f"{name}.weight", 0 if side == "out" else 1) if exported else (name, side)

    ok, skipped = permute.permutable_groups(analysis)
    orders: dict[str, torch.Tensor] = {}
    for name, mod, g in candidates:
        mass = mass_of(mod.weight)
        gin = _exact_group(analysis, ok, slot(name, "in"))
        gout = _exact_group(analysis, ok, slot(name, "out"))
        fixed_in = _blocks_of(orders[gin], g) if gin in orders else (
            None if gin else contiguous_blocks(mass.shape[1], g))
        fixed_out = _blocks_of(orders[gout], g) if gout in orders else (
            None if gout else contiguous_blocks(mass.shape[0], g))
        if gin is not None and gin == gout:  # conv coupled with its own input (x + conv(x)): one order
            if gin not in orders:
                ob, _ = cocluster(mass, g, fixed_out, None)
                orders[gin] = order_from_blocks(ob)
            continue
        ob, ib = cocluster(mass, g, fixed_out, fixed_in)
        if gout is not None and gout not in orders:
            orders[gout] = order_from_blocks(ob)
        if gin is not None and gin not in orders:
            orders[gin] = order_from_blocks(ib)
    orders = {k: v for k, v in orders.items() if not torch.equal(v, torch.arange(v.numel()))}
    gm = analysis.module if exported else analysis.gm
    if not orders:
        return gm, {}, skipped, "no group needed reordering"
    backup = private_copy(gm)
    with torch.no_grad():
        before = gm(*example_inputs)
        permute.apply_permutation(analysis, orders)
        after = gm(*example_inputs)
    if _close(before, after):
        return gm, orders, skipped, "exact on the example inputs"
    return backup, {}, skipped, "the permuted model differed on the example inputs: permutation dropped"


def _exact_group(analysis, ok, key):
    """Name of the permutable group whose classes are exactly this slot, one index per unit, else None."""
    import torch

    atoms = analysis.tracker.slots.get(key)
    if atoms is None or not bool((atoms >= 0).all()):
        return None
    cls = analysis.classes(atoms)
    for name, g in ok.items():
        if g.size == cls.numel() and torch.equal(g.classes, cls):
            return name
    return None


def _blocks_of(order, g):
    """Block of each unit once the group is laid out in `order` and cut into g contiguous blocks."""
    import torch

    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel())
    return pos // (order.numel() // g)


def _close(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(
            a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(a.abs().max()) if a.numel() else 1.0))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b
