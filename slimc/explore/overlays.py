"""Node-data overlays for Model Explorer, computed from the ONNX graphs slimc dumps.

Each overlay is Model Explorer's node data format for one graph (`GraphNodeData` as JSON):
`{"results": {node name: {"value": v}}, "gradient": [...]}`; the ONNX adapter's node ids are
the ONNX node names. Overlays:

* out-channels   output channels of each Conv / Gemm / MatMul weight (and, given the dense
                 graph, `channels-kept`: the fraction kept per module after prune-channels)
* conv-groups    the `group` attribute of each Conv (after group-conv)
* fp32-nodes     1 for a compute node left in float32 in a graph that holds float16 or int8 (what
                 to-fp16 / quantize-int8 left in full precision), 0 for one in float16 or fed
                 through a DequantizeLinear (int8 in a QDQ graph)
* profile-ms     per-node milliseconds from a `slimc profile --report` JSON
"""

from __future__ import annotations

from ..profile.names import GraphIndex

__all__ = ["out_channels", "channels_kept", "conv_groups", "fp32_nodes", "profile_ms", "overlays_for"]

_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_LOW_PRECISION = {10, 16, 3, 2}  # FLOAT16, BFLOAT16, INT8, UINT8
_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Sigmoid", "Softmax",
            "LayerNormalization", "BatchNormalization", "GlobalAveragePool", "AveragePool", "MaxPool",
            "ReduceMean", "Div", "Sub", "Gelu", "Tanh", "Erf", "Pow", "Sqrt"}


# Model Explorer colours a node by where its value falls between the overlay's min (stop 0) and max (1).
GRADIENT = [{"stop": 0, "bgColor": "#e3f2fd"}, {"stop": 0.5, "bgColor": "#ffcc80"}, {"stop": 1, "bgColor": "#e53935"}]


def _node_data(results: dict, name: str) -> dict:
    return {"name": name, "results": {k: {"value": v} for k, v in results.items()}, "gradient": GRADIENT}


def _weight_shapes(model) -> dict:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def _out_channels_by_node(model) -> dict:
    shapes = _weight_shapes(model)
    out = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in _WEIGHTED or len(node.input) < 2:
            continue
        w = shapes.get(node.input[1])
        if not w:
            continue
        if node.op_type in ("Conv",):
            channels = w[0]
        elif node.op_type == "ConvTranspose":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            channels = w[1] * group
        elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            channels = w[0]
        else:
            channels = w[-1]
        out[node.name or f"{node.op_type}_{i}"] = int(channels)
    return out


def out_channels(model) -> dict:
    return _node_data(_out_channels_by_node(model), "out channels")


def channels_kept(model, dense) -> dict:
    """Fraction of output channels kept per weighted node, matched to the dense graph by module path."""
    mine, ref = _out_channels_by_node(model), _out_channels_by_node(dense)
    mine_idx, ref_idx = GraphIndex.of(model), GraphIndex.of(dense)
    ref_by_module = {ref_idx.modules[n]: c for n, c in ref.items()}
    kept = {}
    for node, c in mine.items():
        before = ref_by_module.get(mine_idx.modules.get(node))
        if before:
            kept[node] = round(c / before, 4)
    return _node_data(kept, "channels kept")


def conv_groups(model) -> dict:
    groups = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Conv":
            groups[node.name or f"Conv_{i}"] = next((a.i for a in node.attribute if a.name == "group"), 1)
    # Only graphs with grouped convolutions (after group-conv, or depthwise) get this overlay.
    return _node_data(groups if any(g > 1 for g in groups.values()) else {}, "conv groups")


def fp32_nodes(model) -> dict | None:
    """1 per compute node left in float32, when the graph holds low-precision tensors; else None."""
    import onnx

    g = model.graph
    low = any(t.data_type in _LOW_PRECISION for t in g.initializer) or \
        any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger") for n in g.node) or \
        any(n.op_type == "Cast" and any(a.name == "to" and a.i in _LOW_PRECISION for a in n.attribute) for n in g.node)
    if not low:
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an uninferable graph just gets no overlay
        return None
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    # In a QDQ graph (quantize-int8) a quantized Conv still reads and writes float32 tensors: what makes
    # it int8 is that its data input comes through a DequantizeLinear (the runtime fuses the pair).
    dequantized = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    flags = {}
    for i, node in enumerate(g.node):
        if node.op_type not in _COMPUTE or not node.output or node.output[0] not in types:
            continue
        low_precision = types[node.output[0]] != 1 or (node.input and node.input[0] in dequantized)
        flags[node.name or f"{node.op_type}_{i}"] = 0 if low_precision else 1
    return _node_data(flags, "left in fp32")


def profile_ms(model, profile: dict, backend: str | None = None) -> dict | None:
    """Per-node ms from a profile report (the first profile of `backend`, or the first one)."""
    profiles = [p for p in profile.get("profiles", []) if backend in (None, p["backend"])]
    if not profiles:
        return None
    names = {n.name for n in model.graph.node}
    ms: dict = {}
    for layer in profiles[0]["layers"]:
        if layer.get("node") in names:
            ms[layer["node"]] = round(ms.get(layer["node"], 0.0) + layer["ms"], 5)
    if not ms:
        return None
    return _node_data(ms, f"ms on {profiles[0]['backend']}")


def overlays_for(model, dense=None, profile: dict | None = None) -> dict:
    """All overlays that apply to one graph: {overlay name: node data}."""
    out = {"out-channels": out_channels(model), "conv-groups": conv_groups(model)}
    if dense is not None:
        out["channels-kept"] = channels_kept(model, dense)
    fp32 = fp32_nodes(model)
    if fp32 is not None:
        out["fp32-nodes"] = fp32
    if profile is not None:
        prof = profile_ms(model, profile)
        if prof is not None:
            out["profile-ms"] = prof
    return {k: v for k, v in out.items() if v["results"]}
