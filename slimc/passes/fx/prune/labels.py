"""Labels and the tracker: the data structures of the channel analysis (see graph.py).

A label is an int64 tensor shaped like a node's output whose entries name the *atom* (a
channel id) that each position belongs to, -1 where no removable channel is. The tracker
collects what the handlers find: unions (channels that leave together), pins (channels that
must stay, with the reason), slots (parameter axes that follow channels) and rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["Tracker", "SizeLabel", "untracked", "channel_label", "compact", "rows"]

# ---- label helpers -------------------------------------------------------------------

def untracked(shape) -> torch.Tensor:
    """A label saying "no position here can be removed"."""
    return torch.full((), -1, dtype=torch.long).expand(tuple(shape))


def channel_label(atoms: torch.Tensor, shape, dim: int) -> torch.Tensor:
    """Label of a tensor of `shape` whose axis `dim` carries `atoms` (broadcast elsewhere)."""
    shape = tuple(shape)
    dim = dim % len(shape)
    view = [1] * len(shape)
    view[dim] = -1
    return atoms.view(view).expand(shape)


def compact(label: torch.Tensor) -> torch.Tensor:
    """`label` with every stride-0 (broadcast) axis cut to size 1: same information, less memory."""
    index = tuple(slice(0, 1) if label.stride(i) == 0 else slice(None) for i in range(label.dim()))
    return label[index]


def rows(label: torch.Tensor, dim: int) -> torch.Tensor:
    """The atoms seen at each index of axis `dim`, as an (n, k) matrix (k >= 1)."""
    t = label.movedim(dim % label.dim(), 0)
    if t.numel() == 0:  # an empty tensor (Swin3D's zero-width padding slices): no atom anywhere
        return torch.full((t.shape[0], 1), -1, dtype=t.dtype)
    # An axis broadcast with stride 0 repeats one value: looking at its first entry is enough.
    index = tuple([slice(None)] + [0 if t.stride(i) == 0 else slice(None) for i in range(1, t.dim())])
    t = t[index]
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)


def _squeeze_broadcast(a: torch.Tensor, b: torch.Tensor):
    a, b = torch.broadcast_tensors(a, b)
    index = tuple(0 if a.stride(i) == 0 and b.stride(i) == 0 else slice(None) for i in range(a.dim()))
    return a[index].reshape(-1), b[index].reshape(-1)


# ---- what the walk records -------------------------------------------------------------

class Tracker:
    """Collects atoms, couplings (unions), pins (atoms that must stay) and module slots."""

    def __init__(self):
        self.count = 0
        self._edges: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pins: list[tuple[torch.Tensor, str]] = []
        self.slots: dict[tuple[str, str], torch.Tensor] = {}  # (module, slot) -> atom per index
        self.producers: list[tuple[str, str, str]] = []  # (group name, module, slot), graph order
        self.widths: dict[tuple[str, str], int] = {}  # channels per atom, where not 1 (attention heads)
        self.params: dict[str, torch.Tensor] = {}  # get_attr target -> label of the whole tensor
        self.constraints: list[Callable[["ChannelAnalysis"], None]] = []
        self.rewrites: list[Callable[[Any], None]] = []

    def fresh(self, n: int) -> torch.Tensor:
        atoms = torch.arange(self.count, self.count + n, dtype=torch.long)
        self.count += n
        return atoms

    def union(self, a: torch.Tensor, b: torch.Tensor, reason: str) -> None:
        """Position by position, `a` and `b` leave together (broadcasting as torch does)."""
        a, b = _squeeze_broadcast(a, b)
        both = (a >= 0) & (b >= 0)
        if both.any():
            self._edges.append((a[both], b[both]))
        one = (a >= 0) ^ (b >= 0)
        if one.any():
            self.pin(torch.where(a[one] >= 0, a[one], b[one]), reason)

    def pin(self, atoms: torch.Tensor, reason: str) -> None:
        atoms = compact(atoms).reshape(-1)
        atoms = atoms[atoms >= 0]
        if atoms.numel():
            self.pins.append((atoms.unique(), reason))

    def slot(self, module: str, slot: str, label: torch.Tensor, dim: int, reason: str) -> torch.Tensor:
        """Axis `dim` of `label` feeds parameter axis `slot` of `module`; returns one atom per index."""
        r = rows(label, dim)
        rep = r.amax(1)
        # Everything one input channel sees must go together, or the channel could not be cut.
        self.union(rep[:, None].expand_as(r), r, reason)
        key = (module, slot)
        old = self.slots.get(key)
        if old is None:
            self.slots[key] = rep
        elif old.shape == rep.shape:
            self.union(old, rep, f"module '{module}' is called more than once")
        else:
            self.pin(torch.cat([old, rep]), f"module '{module}' is called with different widths")
        return rep

    def produce(self, module: str, slot: str, atoms: torch.Tensor, name: str | None = None, width: int = 1) -> None:
        key = (module, slot)
        if width != 1:
            self.widths[key] = width
        if key in self.slots:  # a layer called twice creates its channels once
            self.union(self.slots[key], atoms, f"module '{module}' is called more than once")
            return
        self.slots[key] = atoms
        self.producers.append((name or module, module, slot))

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._edges:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        return torch.cat([e[0] for e in self._edges]), torch.cat([e[1] for e in self._edges])


def _components(n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return torch.empty(0, dtype=torch.long)
    m = coo_matrix((np.ones(a.numel(), dtype=np.int8), (a.numpy(), b.numpy())), shape=(n, n))
    _, labels = connected_components(m, directed=False)
    return torch.from_numpy(labels.astype(np.int64))


@dataclass(frozen=True)
class SizeLabel:
    """The label of an int read from a tensor's shape: the atoms along that axis. A reshape that
    sizes another tensor with it ties the two axes' widths (see functional.Reshape)."""

    atoms: torch.Tensor


def _size_labels(label: torch.Tensor, dim=None):
    if dim is not None:
        return SizeLabel(rows(label, dim).amax(1))
    return tuple(SizeLabel(rows(label, d).amax(1)) for d in range(label.dim()))


def _flat_labels(value) -> list[torch.Tensor]:
    out = []
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.extend(_flat_labels(v))
    elif isinstance(value, dict):
        for v in value.values():
            out.extend(_flat_labels(v))
    return out


def _mirror(value):
    """Untracked labels with the structure of a real value (None for non-tensors)."""
    if isinstance(value, torch.Tensor):
        return untracked(value.shape)
    if isinstance(value, (list, tuple)):
        return type(value)(_mirror(v) for v in value) if not hasattr(value, "_fields") else tuple(
            _mirror(v) for v in value)
    return None


def _has_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_tensor(v) for v in value)
    return False
