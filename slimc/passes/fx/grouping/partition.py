"""Balanced k-way co-clustering of a layer's output and input channels.

`mass[o, i]` is the squared weight between output o and input i (summed over the kernel).
A grouped conv keeps the pairs whose blocks match, so we look for balanced block labels of
outputs and inputs that maximise the kept mass: greedy balanced assignment of one side given
the other, alternated for a few rounds from several starts.
"""

from __future__ import annotations

import torch

__all__ = ["balanced_assign", "cocluster", "contiguous_blocks", "kept_mass", "mass_of", "order_from_blocks"]


def balanced_assign(score: torch.Tensor) -> torch.Tensor:
    """Block per item (row) from `score` [items, blocks], each block getting items/blocks rows.

    Greedy: (item, block) pairs by descending score, taken while the item is free and the block
    has room.
    """
    n, g = score.shape
    cap = n // g
    block = torch.full((n,), -1, dtype=torch.long)
    room = [cap] * g
    order = torch.argsort(score.reshape(-1), descending=True, stable=True).tolist()
    left = n
    for flat in order:
        i, b = divmod(flat, g)
        if block[i] >= 0 or room[b] == 0:
            continue
        block[i] = b
        room[b] -= 1
        left -= 1
        if left == 0:
            break
    return block


def _onehot(block: torch.Tensor, g: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(block, g).to(torch.float64)


def kept_mass(mass: torch.Tensor, out_block: torch.Tensor, in_block: torch.Tensor) -> float:
    return float((mass * (out_block[:, None] == in_block[None, :])).sum())


def contiguous_blocks(n: int, g: int) -> torch.Tensor:
    return torch.arange(n) // (n // g)


def cocluster(mass: torch.Tensor, g: int, out_block: torch.Tensor | None = None,
              in_block: torch.Tensor | None = None, rounds: int = 8, starts: int = 4,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced block labels (out_block, in_block) for `mass` [out, in]; a side given is kept fixed."""
    mass = mass.to(torch.float64)
    n_out, n_in = mass.shape
    if out_block is not None and in_block is not None:
        return out_block, in_block
    if in_block is not None:
        return balanced_assign(mass @ _onehot(in_block, g)), in_block
    if out_block is not None:
        return out_block, balanced_assign(mass.t() @ _onehot(out_block, g))
    gen = torch.Generator().manual_seed(seed)
    inits = [contiguous_blocks(n_in, g)] + [contiguous_blocks(n_in, g)[torch.randperm(n_in, generator=gen)]
                                             for _ in range(starts)]
    best, best_pair = -1.0, None
    for ib in inits:
        ob = balanced_assign(mass @ _onehot(ib, g))
        score = kept_mass(mass, ob, ib)
        for _ in range(rounds):
            ib_new = balanced_assign(mass.t() @ _onehot(ob, g))
            ob_new = balanced_assign(mass @ _onehot(ib_new, g))
            new = kept_mass(mass, ob_new, ib_new)
            if new <= score + 1e-12 * max(score, 1.0):
                break
            ib, ob, score = ib_new, ob_new, new
        if score > best:
            best, best_pair = score, (ob, ib)
    return best_pair


def order_from_blocks(block: torch.Tensor) -> torch.Tensor:
    """Units in their new order: block 0's units first (original order kept within a block)."""
    return torch.sort(block, stable=True).indices


def mass_of(weight):
    """Squared weight summed over kernel positions: [out, in]."""
    w = weight.detach().double()
    return w.pow(2).reshape(w.shape[0], w.shape[1], -1).sum(-1)
