"""Lifting an ONNX model to the FX level (onnx2torch), so FX passes such as pruning apply to it.

Before conversion the graph is simplified (onnxsim: weights computed in the graph, as in ONNX's
own test models, become initializers) and inference-time no-ops (Dropout, Identity) are removed,
since onnx2torch has no converter for some of their old versions.
"""

from __future__ import annotations

import contextlib
import io

from ..errors import SlimcError

__all__ = ["lift_onnx"]

_NOOPS = ("Dropout", "Identity")


def _drop_noops(model):
    """Remove Dropout/Identity nodes whose output is not a graph output, rewiring their users."""
    import copy

    model = copy.deepcopy(model)
    g = model.graph
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    kept = []
    for node in g.node:
        if node.op_type in _NOOPS and node.output[0] not in outputs and node.input:
            # Dropout's optional mask output must be unused for it to be a no-op.
            if len(node.output) > 1 and any(node.output[1] in n.input for n in g.node):
                kept.append(node)
                continue
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
            continue
        kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del g.node[:]
    g.node.extend(kept)
    return model


def lift_onnx(model):
    """An equivalent torch.fx.GraphModule for `model`, or a SlimcError naming the op that cannot be lifted."""
    try:
        import onnx2torch
    except ImportError:
        raise SlimcError("lifting an ONNX model to the FX level needs onnx2torch: pip install onnx2torch") from None
    import onnxsim

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model)
        model = simplified if ok else model
    except Exception:  # simplification is a convenience here; the conversion below decides
        pass
    model = _drop_noops(model)
    try:
        return onnx2torch.convert(model)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        node = _failing_node(exc)
        which = f" at node '{node.name}' ({node.operation_type}, opset {_opset(model)})" if node is not None else ""
        if node is None and isinstance(exc, KeyError) and exc.args:
            # onnx2torch reports a missing value by its bare name ('_v_507'): say which node reads it
            which, reason = _value_reader(model, str(exc.args[0])), f"no value named '{exc.args[0]}'"
        raise SlimcError(
            f"cannot lift this ONNX model to torch.fx for FX-level passes{which}: onnx2torch says: {reason}. "
            "Run ONNX-level passes only (e.g. 'simplify,fold-constants'), or give the PyTorch model."
        ) from None


def _value_reader(model, value: str) -> str:
    """' at node NAME (OpType, opset N), which reads value V' for the first node that reads or writes `value`."""
    for node in model.graph.node:
        if value in node.input or value in node.output:
            role = "reads" if value in node.input else "writes"
            return f" at node '{node.name or '(unnamed)'}' ({node.op_type}, opset {_opset(model)}), which {role} '{value}'"
    return f" (value '{value}')"


def _failing_node(exc: Exception):
    """The onnx2torch node being converted when `exc` was raised (its converter loop's local)."""
    tb, node = exc.__traceback__, None
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("onnx_node")
        if candidate is not None and hasattr(candidate, "operation_type"):
            node = candidate
        tb = tb.tb_next
    return node


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
