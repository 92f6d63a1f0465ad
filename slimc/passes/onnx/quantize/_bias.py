"""Bias correction: cancel the mean output shift that rounding the weights to int8 causes.

Rounding a layer's weights moves its output by (W_q - W) * x. For most layers that is noise around
zero, but where a kernel has large weights that nearly cancel (edge detectors after batch norm is
folded into a depthwise conv; EfficientNet-Lite's first block has 3x3 kernels with weights up to 17
summing to about 0), the rounding errors no longer cancel and the output shifts by a constant that
is large next to the signal; on flat image regions every position gets it. Measured on
EfficientNet-Lite0: int8 weights alone (float activations) moved the logits by 7-15 % (relative L2);
with this correction about half of that.

The correction (Nagel et al., "Data-Free Quantization", 2019, empirical form; NNCF and AIMET ship
it as "bias correction") is E[(W_q - W) * x] per output channel over the calibration inputs,
subtracted from the layer's bias. `x` is the float input to the layer, so each correction only
undoes that layer's own weight error (no double counting of upstream errors), and it is computed
once, with ONNX Runtime itself: the float graph gets, for each layer, a twin node with the weight
error as its weights and no bias, and a ReduceMean that keeps only the channel axis.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CORRECTED_OPS", "weight_errors", "bias_shifts", "apply_bias_correction"]

CORRECTED_OPS = {"Conv", "Gemm"}


def _initializers(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _dequantized_weight(qdq_model, node, inits, producer):
    """The float weights ORT's int8 weights stand for (None when the weight is not DequantizeLinear of an initializer)."""
    from onnx import numpy_helper

    dq = producer.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return None
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    if scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return (q - zero) * scale


def weight_errors(float_model, qdq_model) -> dict:
    """{node name: W_q - W} for every Conv/Gemm whose weights are int8 in `qdq_model` and an initializer in `float_model`."""
    from onnx import numpy_helper

    f_inits = _initializers(float_model)
    q_inits = _initializers(qdq_model)
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    float_nodes = {n.name: n for n in float_model.graph.node if n.op_type in CORRECTED_OPS}
    out = {}
    for node in qdq_model.graph.node:
        f_node = float_nodes.get(node.name)
        if f_node is None or len(node.input) < 2 or f_node.input[1] not in f_inits:
            continue
        w_q = _dequantized_weight(qdq_model, node, q_inits, producer)
        w = numpy_helper.to_array(f_inits[f_node.input[1]]).astype(np.float64)
        if w_q is not None and w_q.shape == w.shape:
            out[node.name] = (w_q - w).astype(np.float32)
    return out


def bias_shifts(float_model, errors: dict, feeds: list) -> dict:
    """{node name: mean output shift per output channel} from the weight errors, averaged over `feeds`."""
    import onnx
    from onnx import helper, numpy_helper

    from ....ir.ort_session import session_for

    if not errors:
        return {}
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    del g.output[:]
    names = []
    for node in list(g.node):
        if node.name not in errors:
            continue
        err = errors[node.name]
        twin = f"{node.name}__slimc_bc"
        g.initializer.append(numpy_helper.from_array(err, twin + "_dw"))
        g.node.append(helper.make_node(node.op_type, [node.input[0], twin + "_dw"], [twin + "_y"], name=twin,
                                       domain=node.domain or None, **{a.name: helper.get_attribute_value(a)
                                                                      for a in node.attribute if a.name != "beta"}))
        rank = err.ndim if node.op_type == "Conv" else 2
        axes = [0] + list(range(2, rank))  # everything but the channel axis (Gemm: [N, M] -> axis 0)
        if opset >= 18:
            g.initializer.append(numpy_helper.from_array(np.asarray(axes, np.int64), twin + "_axes"))
            g.node.append(helper.make_node("ReduceMean", [twin + "_y", twin + "_axes"], [twin + "_mean"], keepdims=0))
        else:
            g.node.append(helper.make_node("ReduceMean", [twin + "_y"], [twin + "_mean"], axes=axes, keepdims=0))
        g.output.append(helper.make_tensor_value_info(twin + "_mean", onnx.TensorProto.FLOAT, None))
        names.append(node.name)
    sess = session_for(model, optimization="basic")
    sums = {n: 0.0 for n in names}
    for feed in feeds:
        for name, mean in zip(names, sess.run(None, feed)):
            sums[name] = sums[name] + np.asarray(mean, np.float64)
    return {n: (s / max(len(feeds), 1)).astype(np.float32) for n, s in sums.items()}


def apply_bias_correction(qdq_model, float_model, shifts: dict) -> int:
    """Subtract `shifts` from the biases of the int8 layers of `qdq_model` (in place); returns how many were corrected.

    A quantized bias (int32, DequantizeLinear with scale input_scale*weight_scale) is requantized at its
    own scale; a float bias is rewritten; a layer without bias gets one."""
    from onnx import numpy_helper

    q_inits = _initializers(qdq_model)
    f_inits = _initializers(float_model)
    float_bias = {n.name: (n.input[2] if len(n.input) > 2 else "") for n in float_model.graph.node}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    users: dict = {}
    for n in qdq_model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    done, new_bias_nodes = 0, {}
    for node in qdq_model.graph.node:
        shift = shifts.get(node.name)
        if shift is None or _dequantized_weight(qdq_model, node, q_inits, producer) is None:
            continue  # a layer left in float keeps its own bias
        f_bias_name = float_bias.get(node.name, "")
        f_bias = (numpy_helper.to_array(f_inits[f_bias_name]).astype(np.float64) if f_bias_name in f_inits
                  else np.zeros(shift.shape, np.float64))
        if f_bias.shape != shift.shape:
            continue
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0) if node.op_type == "Gemm" else 1.0
        if beta == 0:
            continue
        corrected = f_bias - shift / beta  # Gemm adds beta * C
        bias_in = node.input[2] if len(node.input) > 2 else ""
        dq = producer.get(bias_in)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in q_inits and users.get(dq.input[0]) == 1:
            scale = numpy_helper.to_array(q_inits[dq.input[1]]).astype(np.float64)
            q = np.clip(np.round(corrected / scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            q_inits[dq.input[0]].CopyFrom(numpy_helper.from_array(q, dq.input[0]))
        elif bias_in in q_inits and users.get(bias_in) == 1:
            q_inits[bias_in].CopyFrom(numpy_helper.from_array(corrected.astype(np.float32), bias_in))
        elif not bias_in:
            dq = _int32_bias(qdq_model, node, corrected, q_inits, producer)
            if dq is None:
                continue
            new_bias_nodes[node.name] = dq
            node.input.append(dq.output[0])
        else:
            continue
        done += 1
    if new_bias_nodes:  # each new DequantizeLinear right before its layer (nodes stay in topological order)
        nodes = []
        for n in qdq_model.graph.node:
            if n.name in new_bias_nodes:
                nodes.append(new_bias_nodes[n.name])
            nodes.append(n)
        nodes = [type(n).FromString(n.SerializeToString()) for n in nodes]
        del qdq_model.graph.node[:]
        qdq_model.graph.node.extend(nodes)
    return done


def _int32_bias(model, node, bias, inits, producer):
    """A DequantizeLinear (its initializers added to `model`) giving a bias-less int8 layer the bias `bias` in the
    form the int8 kernels fuse: int32 at scale input_scale * weight_scale (a float bias would keep the layer float)."""
    from onnx import helper, numpy_helper

    x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
    if x_dq is None or x_dq.op_type != "DequantizeLinear" or x_dq.input[1] not in inits or w_dq.input[1] not in inits:
        return None
    x_scale = numpy_helper.to_array(inits[x_dq.input[1]]).astype(np.float64)
    w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64)
    if x_scale.size != 1 or w_scale.size not in (1, bias.size):
        return None
    scale = (x_scale.reshape(()) * np.broadcast_to(w_scale.reshape(-1), bias.shape)).astype(np.float32)
    q = np.clip(np.round(bias / np.maximum(scale, 1e-30)), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    name = f"{node.name}__slimc_bias"
    model.graph.initializer.extend([numpy_helper.from_array(q, name + "_quantized"),
                                    numpy_helper.from_array(scale, name + "_scale"),
                                    numpy_helper.from_array(np.zeros(bias.shape, np.int32), name + "_zero_point")])
    return helper.make_node("DequantizeLinear", [name + "_quantized", name + "_scale", name + "_zero_point"], [name],
                            name=name + "_DequantizeLinear", axis=0)
