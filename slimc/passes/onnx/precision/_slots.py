"""Which nodes of a graph can run in a lower float type: op schemas, ORT kernels, value types."""

from __future__ import annotations

from .._graph import node_subgraphs

__all__ = ["SENSITIVE_OPS", "COMPUTE_OPS", "F32", "convertible_slots", "OrtProbe", "value_types"]

SENSITIVE_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
                 "RMSNormalization", "SkipLayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare",
                 "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "CumSum", "Exp", "Log",
                 "Pow", "Softplus", "LpNormalization", "MeanVarianceNormalization")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN", "Attention")
# The output type is an attribute, or the op is about types: converting them means rewriting that.
_TYPED_OPS = {"Cast", "CastLike", "ConstantOfShape", "Constant", "RandomNormal", "RandomUniform",
              "RandomNormalLike", "RandomUniformLike", "EyeLike", "Multinomial", "Bernoulli", "QuantizeLinear",
              "DequantizeLinear", "DynamicQuantizeLinear", "Range", "BitCast"}

F32 = 1  # onnx.TensorProto.FLOAT


# ---- which nodes can change type --------------------------------------------------------

def _schema(node, opset: int):
    import onnx

    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain)
    except Exception:
        return None


def _slot_params(params, count: int) -> list:
    """The formal parameter of each of `count` actual slots (the last one repeats when variadic)."""
    import onnx

    out = []
    for i in range(count):
        if i < len(params):
            out.append(params[i])
        elif params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            out.append(params[-1])
        else:
            out.append(None)
    return out


def convertible_slots(node, opset: int, types: dict, low: str):
    """(input slots, output slots) of float32 tensors the node can take in `low` type, or a reason
    string when the node cannot be converted at all."""
    if node.domain not in ("", "ai.onnx"):
        return f"op of domain '{node.domain}'"
    if node.op_type in _TYPED_OPS:
        return "op whose types are set by attributes"
    if node_subgraphs(node):
        return "op with a subgraph body"
    if node.op_type in ("ScatterND", "ScatterElements") and any(
            a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute):
        return "scatter with a reduction (ONNX Runtime has kernels but fails at run time in low precision)"
    schema = _schema(node, opset)
    if schema is None:
        return "op without a schema"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    want = f"tensor({low})"

    def slots(names, params):
        ok = []
        for k, (name, p) in enumerate(zip(names, _slot_params(params, len(names)))):
            if not name:
                continue
            if name not in types:
                return f"type of '{name}' unknown"
            if types[name] != F32:
                continue
            if p is not None and want in allowed.get(p.type_str, ()):
                ok.append(k)
        return ok

    ins, outs = slots(list(node.input), schema.inputs), slots(list(node.output), schema.outputs)
    if isinstance(ins, str) or isinstance(outs, str):
        return ins if isinstance(ins, str) else outs
    float_outs = [k for k, name in enumerate(node.output) if name and types.get(name) == F32]
    if set(float_outs) - set(outs):
        return f"an output cannot be {low}"
    if not ins and not outs:
        return None  # no float32 tensors: nothing to convert
    return ins, outs


class OrtProbe:
    """Whether ONNX Runtime's CPU provider has a kernel for a node with the given types."""

    def __init__(self):
        self.cache: dict = {}

    def supports(self, node, opset: int, in_types: list, out_types: list) -> bool:
        key = (node.op_type, opset, tuple(in_types), tuple(out_types),
               tuple(sorted((a.name, a.type) for a in node.attribute)))
        if key not in self.cache:
            self.cache[key] = self._probe(node, opset, in_types, out_types)
        return self.cache[key]

    @staticmethod
    def _probe(node, opset, in_types, out_types) -> bool:
        import onnxruntime as ort
        from onnx import helper

        inputs = [helper.make_tensor_value_info(f"i{k}", t, None) for k, t in enumerate(in_types) if t]
        names = [f"i{k}" if t else "" for k, t in enumerate(in_types)]
        outs = [helper.make_tensor_value_info(f"o{k}", t, None) for k, t in enumerate(out_types)]
        probe = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(out_types))], domain=node.domain)
        probe.attribute.extend(node.attribute)
        graph = helper.make_graph([probe], "probe", inputs, outs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return True
        except Exception:
            # No kernel, or a function body (SoftmaxCrossEntropyLoss, Attention) that does not
            # type-check in the low type: either way the node stays float32.
            return False



def value_types(model) -> dict:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    types[node.output[0]] = a.t.data_type
    return types


