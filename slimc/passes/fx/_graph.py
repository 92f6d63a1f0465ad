"""Helpers shared by FX-level passes."""

from __future__ import annotations

import copy

__all__ = ["fresh_copy", "set_submodule"]


def fresh_copy(gm):
    """A GraphModule with its own graph and module hierarchy that shares the leaf modules.

    Passes replace modules (never mutate them), so sharing leaves is safe and avoids copying
    every weight of the model; the input program stays intact for --verify-each and the user.
    """
    import torch.fx

    return torch.fx.GraphModule(gm, copy.deepcopy(gm.graph), type(gm).__name__)


def set_submodule(root, qualname: str, new) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)
