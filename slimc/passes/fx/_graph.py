"""Helpers shared by FX-level passes."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

__all__ = ["fresh_copy", "set_submodule", "private_copy", "unshare", "single_threaded", "require_traced",
           "require_module", "aten_name", "Edge", "layer_edges", "CONV_OPS", "CONV_TRANSPOSE_OPS", "LINEAR_OPS",
           "BATCH_NORM_OPS", "COPYING_PAD_OPS"]


def fresh_copy(module):
    """A copy of `module` with its own module objects that shares every parameter and buffer.

    Passes replace modules (never mutate tensors in place), so sharing tensors is safe and avoids
    copying every weight of the model; the input program stays intact for --verify-each and the user.
    A GraphModule (the symbolic_trace fallback) also gets its own graph.
    """
    return private_copy(module, share_weights=True)


def set_submodule(root, qualname: str, new) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def private_copy(gm, share_weights: bool = True):
    """A copy of `gm` with private modules. With `share_weights` its tensors are still the caller's
    until `unshare`: passes that cut layers replace most of them, so copying them first is waste."""
    memo = _derived_tensors(gm)
    if share_weights:
        memo.update({id(t): t for t in list(gm.parameters()) + list(gm.buffers())})
    return copy.deepcopy(gm, memo)


def _derived_tensors(gm) -> dict:
    """Tensors computed from parameters and kept in plain attributes (timm LeViT's `attention_bias_cache`,
    filled by a forward pass with grad on) are not graph leaves and cannot be deep-copied: the copy gets
    them detached."""
    import torch

    memo = {}
    for m in gm.modules():
        for value in vars(m).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                else (value,)
            for t in items:
                if isinstance(t, torch.Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach()
    return memo


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
    """FX-level passes need an nn.Module (the user's own, or a GraphModule) and example inputs."""
    import torch

    from ...errors import SlimcError

    if not isinstance(program.ir, torch.nn.Module):
        raise SlimcError(f"{pass_name} works on a torch nn.Module, got {type(program.ir).__name__}; "
                         "load the model through slimc's frontend (slimc.compile / load_program).")
    if not program.example_inputs:
        raise SlimcError(f"{pass_name} needs example inputs to follow channels through the graph; "
                         "give the model's input shape when compiling.")


require_module = require_traced


# ---- layer-to-layer edges, on the exported ATen graph (or the fallback's torch.fx graph) ---------

CONV_OPS = ("conv1d", "conv2d", "conv3d", "convolution", "_convolution")
CONV_TRANSPOSE_OPS = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
LINEAR_OPS = ("linear",)
BATCH_NORM_OPS = ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
                  "_native_batch_norm_legit")
# What a conv with padding_mode reflect/replicate/circular runs before itself (copies its input).
COPYING_PAD_OPS = ("pad", "_pad_circular", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
                   "replication_pad1d", "replication_pad2d", "replication_pad3d")


@dataclass(frozen=True)
class Edge:
    """One layer's output feeding the next layer's data input, e.g. conv -> batch_norm.

    first / second:  module paths ('layer1.0.conv1'); kinds 'conv', 'conv_transpose', 'linear', 'bn'
    first_users:     how many nodes read the first layer's output (1: only the second layer)
    calls:           module path -> number of call sites (shared with every edge of the graph)
    dims:            rank of the tensor between the two layers (None if unknown)
    own_bias:        the conv/linear call reads its own `bias` parameter, or none
    padded:          a copying pad (reflect/replicate/circular) sits between the two
    """

    first: str
    second: str
    first_kind: str
    second_kind: str
    first_users: int
    calls: dict
    dims: int | None
    own_bias: bool = True
    padded: bool = False


def aten_name(node) -> str:
    """'conv2d' for a node calling aten.conv2d.default; '' for other nodes."""
    if getattr(node, "op", None) != "call_function":
        return ""
    packet = getattr(node.target, "_overloadpacket", None)
    return getattr(packet, "__name__", "") if packet is not None else ""


def _aten_kind(name: str) -> str:
    if name in CONV_OPS:
        return "conv"
    if name in CONV_TRANSPOSE_OPS:
        return "conv_transpose"
    if name in LINEAR_OPS:
        return "linear"
    if name in BATCH_NORM_OPS:
        return "bn"
    return ""


def _module_kind(module) -> str:
    import torch.nn as nn

    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "conv_transpose"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    return ""


def layer_edges(program) -> list[Edge]:
    """Every layer -> layer edge of the program's FX-level module, read from its torch.export graph;
    a GraphModule that export refuses (the symbolic_trace fallback) is read from its own graph."""
    import torch.fx

    from ...errors import SlimcError

    try:
        return _aten_edges(program.exported(), program.ir)
    except SlimcError:
        if not isinstance(program.ir, torch.fx.GraphModule):
            raise
        return _fx_edges(program.ir, program.example_inputs)


def _aten_edges(exported, module) -> list[Edge]:
    from ...ir.exported import parameter_owners

    owners = parameter_owners(exported)
    modules = dict(module.named_modules())

    def path_of(arg):
        if getattr(arg, "op", None) != "placeholder" or arg.name not in owners:
            return None
        return owners[arg.name].rpartition(".")[0]

    calls: dict[str, int] = {}
    layer_of = {}  # node -> (module path, kind) for layer nodes whose module has the matching type
    for node in exported.graph.nodes:
        if node.op != "call_function":
            continue
        for mod in {path_of(a) for a in node.args} - {None}:
            calls[mod] = calls.get(mod, 0) + 1
        kind = _aten_kind(aten_name(node))
        if not kind or len(node.args) < 2:
            continue
        # conv/linear: the weight (arg 1) is the parameter read as is (not computed, as in weight
        # standardisation); batch_norm: the running mean (arg 3) names the module
        path = path_of(node.args[3] if kind == "bn" and len(node.args) > 3 else node.args[1])
        if path is not None and _module_kind(modules.get(path)) == kind:
            layer_of[node] = (path, kind)
    edges = []
    for node, (second, second_kind) in layer_of.items():
        src, padded = node.args[0], False
        if aten_name(src) in COPYING_PAD_OPS and len(src.users) == 1:
            src, padded = src.args[0], True
        if src not in layer_of:
            continue
        first, first_kind = layer_of[src]
        bias = src.args[2] if first_kind != "bn" and len(src.args) > 2 else None
        if second_kind != "bn":
            bias = node.args[2] if len(node.args) > 2 else None
        layer = first if first_kind != "bn" else second
        own_bias = bias is None or owners.get(getattr(bias, "name", "")) == f"{layer}.bias"
        val = src.meta.get("val")
        edges.append(Edge(first, second, first_kind, second_kind, len(src.users), calls,
                          val.dim() if hasattr(val, "dim") else None, own_bias, padded))
    return edges


def _fx_edges(gm, example_inputs) -> list[Edge]:
    """The same edges on a symbolic_trace GraphModule (call_module nodes; shapes from ShapeProp)."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    edges = []
    for node in gm.graph.nodes:
        second_kind = _module_kind(modules.get(node.target)) if node.op == "call_module" else ""
        src = node.args[0] if node.args else None
        if not second_kind or getattr(src, "op", None) != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        first_kind = _module_kind(modules.get(src.target))
        if first_kind:
            meta = src.meta.get("tensor_meta")
            edges.append(Edge(src.target, node.target, first_kind, second_kind, len(src.users), calls,
                              len(meta.shape) if hasattr(meta, "shape") else None))
    return edges
