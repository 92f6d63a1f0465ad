"""Size and cost statistics for both IR levels: parameters, MACs, node count, op histogram.

MACs are counted for the example inputs as given (batch included), from shapes: FX by torch's
FlopCounterMode on a meta-tensor forward run (every ATen conv/matmul/attention, wherever it is
called), ONNX by shape inference and a small per-op table (Conv, ConvTranspose, MatMul, Gemm);
ops not counted are memory-bound, not MAC-bound.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Stats", "fx_stats", "onnx_stats", "onnx_node_macs", "stats_of", "human"]


@dataclass(frozen=True)
class Stats:
    params: int
    macs: int
    nodes: int
    ops: dict = field(default_factory=dict)

    def as_dict(self, with_ops: bool = False) -> dict:
        out = {"params": self.params, "macs": self.macs, "nodes": self.nodes}
        if with_ops:
            out["ops"] = dict(self.ops)
        return out


def stats_of(ir, example_inputs=()) -> Stats:
    from .program import level_of

    return fx_stats(ir, example_inputs) if level_of(ir) == "fx" else onnx_stats(ir, example_inputs)


# ---- FX ------------------------------------------------------------------------------

def _numel(shape) -> int:
    return int(math.prod(shape))


def fx_stats(module, example_inputs=()) -> Stats:
    """Statistics of a torch module: parameters, and for the example inputs MACs and the ATen op histogram.

    One forward run on meta tensors (shapes only, nothing computed) under torch's own
    FlopCounterMode counts every conv, matmul and attention wherever it happens: inside custom
    layers, Conv3d video models, Swin's attention, Hugging Face models. Models with data-dependent
    code that meta tensors cannot run are counted on their real tensors instead.
    """
    params = sum(p.numel() for p in module.parameters())
    if not example_inputs:
        return Stats(params, 0, 0, {})
    try:
        macs, ops = _count(module, example_inputs, meta=True)
    except Exception:  # .item(), nonzero, tensors held outside parameters/buffers: real values needed
        macs, ops = _count(module, example_inputs, meta=False)
    return Stats(params, macs, sum(ops.values()), dict(ops.most_common()))


# Dispatched ops that only rename or re-describe memory: not worth a histogram line.
_BOOKKEEPING = {"detach", "alias", "lift_fresh", "_to_copy", "empty", "empty_strided", "t", "expand", "view",
                "_unsafe_view", "unsqueeze", "squeeze", "clone", "copy_", "as_strided"}


def _count(module, example_inputs, meta: bool) -> tuple[int, Counter]:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    ops: Counter = Counter()

    class _OpCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._overloadpacket.__name__
            if name not in _BOOKKEEPING:
                ops[name] += 1
            return func(*args, **(kwargs or {}))

    counter = FlopCounterMode(display=False)
    if meta:
        # Grad stays enabled: under no_grad nn.MultiheadAttention and TransformerEncoderLayer take fused
        # fast paths (aten._native_multi_head_attention) that the counter does not see.
        with _on_meta(module) as meta_inputs_of:
            inputs = meta_inputs_of(example_inputs)
            with counter, _OpCounter():
                module(*inputs)
    else:
        with torch.no_grad(), counter, _OpCounter():
            module(*example_inputs)
    # FlopCounterMode counts a multiply-accumulate as 2 FLOPs
    return int(counter.get_total_flops()) // 2, ops


def _on_meta(module):
    """Context: the module's parameters and buffers swapped for meta tensors; yields an input converter."""
    import contextlib

    import torch
    from torch.nn.utils.stateless import _reparametrize_module

    tensors = {k: v.to("meta") for k, v in list(module.named_parameters()) + list(module.named_buffers())}

    @contextlib.contextmanager
    def swapped():
        with _reparametrize_module(module, tensors):
            yield lambda inputs: tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs)

    return swapped()


# ---- ONNX ----------------------------------------------------------------------------

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def onnx_stats(model, example_inputs=()) -> Stats:
    """Statistics of an onnx.ModelProto; MACs need static shapes (shape inference fills them).

    example_inputs fix symbolic input dimensions (a dynamic batch) to the shapes being compiled for.
    """

    graph = model.graph
    # A QDQ graph stores weights in int8 (read by DequantizeLinear): they are parameters; the scales are not.
    quantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    quant_params = {x for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for x in n.input[1:]}
    params = sum(_numel(t.dims) for t in graph.initializer
                 if t.name in quantized or (t.data_type in _FLOAT_TYPES and t.name not in quant_params))
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_TYPES and _numel(a.t.dims) > 1:
                    params += _numel(a.t.dims)
    ops = Counter(n.op_type for n in graph.node)
    return Stats(params, _onnx_macs(model, example_inputs), len(graph.node), dict(ops.most_common()))


def _without_big_weights(model):
    """The graph with large initializers declared as inputs: shape inference needs their shapes,
    not their bytes, and copying a few hundred MB of weights through protobuf would dominate."""
    from onnx import helper

    g = model.graph
    small = [t for t in g.initializer if _numel(t.dims) <= 64 or t.data_type not in _FLOAT_TYPES]
    declared = {i.name for i in g.input}
    big = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
           for t in g.initializer if t not in small and t.name not in declared]
    graph = helper.make_graph(list(g.node), g.name, list(g.input) + big, list(g.output), small,
                              value_info=list(g.value_info))
    light = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    light.functions.extend(model.functions)
    return light


def _pin_inputs(light, model, example_inputs):
    """Set the graph inputs' dimensions to the example inputs' shapes (in place, on the light copy)."""
    inits = {t.name for t in model.graph.initializer}  # the light copy declares big weights as inputs
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != len(example_inputs):
        return light
    by_name = {i.name: i for i in light.graph.input}
    inputs = [by_name[n] for n in names]
    changed = False
    for vi, example in zip(inputs, example_inputs):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == len(example.shape):
            for d, n in zip(dims, example.shape):
                if not d.HasField("dim_value") or d.dim_value != int(n):
                    d.dim_value = int(n)  # replaces a dim_param ('batch') in the oneof
                    changed = True
    if changed:  # recorded shapes still say 'batch' and would win over the inferred ones
        del light.graph.value_info[:]
        for out in light.graph.output:
            out.type.tensor_type.ClearField("shape")
    return light


def _shapes(model, example_inputs=()) -> dict[str, tuple]:
    import onnx

    try:
        light = _pin_inputs(_without_big_weights(model), model, example_inputs)
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # a graph shape inference cannot handle still gets params and nodes
        inferred = model
    shapes = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _onnx_macs(model, example_inputs=()) -> int:
    return int(sum(onnx_node_macs(model, example_inputs).values()))


def onnx_node_macs(model, example_inputs=()) -> dict[str, int]:
    """MACs of each node that has a formula (Conv, ConvTranspose, MatMul, Gemm), keyed by node name
    (`<op_type>_<index>` for an unnamed node). Per-node costs for profiles; their sum is `Stats.macs`."""
    shapes = _shapes(model, example_inputs)
    per_node = {}
    for i, node in enumerate(model.graph.node):
        out = shapes.get(node.output[0]) if node.output else None
        macs = 0
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            # Conv: each output element meets in/groups * kernel weights; ConvTranspose: each input element
            # meets out/groups * kernel weights. Both are numel(ref) * numel(w[1:]).
            ref = out if node.op_type == "Conv" else shapes.get(node.input[0])
            if _known(w) and _known(ref):
                macs = _numel(ref) * _numel(w[1:])
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            if _known(out) and _known(a) and a:  # a 0-d operand has no inner dimension
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                k = a[0] if (node.op_type == "Gemm" and trans_a) else a[-1]
                macs = _numel(out) * k
        if macs:
            per_node[node.name or f"{node.op_type}_{i}"] = int(macs)
    return per_node


def human(n) -> str:
    """1234567 -> '1.23M': counts as the CLI tables and reports print them."""
    if n is None:
        return "-"
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"
