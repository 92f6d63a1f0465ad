"""Helpers shared by FX-level passes."""

from __future__ import annotations

import contextlib
import copy

__all__ = ["fresh_copy", "set_submodule", "private_copy", "unshare", "single_threaded", "require_traced"]


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


def private_copy(gm, share_weights: bool = True):
    """A copy of `gm` with private modules. With `share_weights` its tensors are still the caller's
    until `unshare`: passes that cut layers replace most of them, so copying them first is waste."""
    if not share_weights:
        return copy.deepcopy(gm)
    memo = {id(t): t for t in list(gm.parameters()) + list(gm.buffers())}
    return copy.deepcopy(gm, memo)


def unshare(gm, original) -> None:
    """Clone every tensor of `gm` still shared with `original`, so training the result leaves it alone."""
    import torch.nn as nn

    theirs = {id(t) for t in list(original.parameters()) + list(original.buffers())}
    for module in gm.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in theirs:
                module._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None and id(b) in theirs:
                module._buffers[name] = b.clone()


@contextlib.contextmanager
def single_threaded():
    """Channel analysis and surgery are many small tensor ops: OpenMP fan-out costs more than it gains
    (resnet50 pruning at 224 on a busy 2-core machine: 0.7 s with one thread, 3.5 s with two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def require_traced(program, pass_name: str) -> None:
    """Passes that follow channels need an FX graph and example inputs; say so plainly otherwise."""
    import torch.fx

    from ...errors import SlimcError

    if not isinstance(program.ir, torch.fx.GraphModule):
        raise SlimcError(f"{pass_name} works on a torch.fx GraphModule, got {type(program.ir).__name__}; "
                         "load the model through slimc's frontend (it traces it) or torch.fx.symbolic_trace.")
    if not program.example_inputs:
        raise SlimcError(f"{pass_name} needs example inputs to follow channels through the graph; "
                         "give the model's input shape when compiling.")
