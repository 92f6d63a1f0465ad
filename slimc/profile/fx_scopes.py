"""Module paths for TorchScript-exported FX GraphModules, whose node names lost them.

A GraphModule calls its leaf modules straight from the generated forward(), so the TorchScript
exporter names each node after a short scope plus a counter: `layer1.1.conv1` becomes
`/conv1_3/Conv` (the fourth call whose scope is `conv1`). Given the GraphModule that was
exported, the k-th call of a module whose path ends in that scope is the k-th candidate in call
order. The mapping is kept only when every Conv and Gemm it resolves has the weight shape of the
module it names, so a wrong guess falls back to the short names rather than mislabelling time.
"""

from __future__ import annotations

import re

__all__ = ["resolve_flat_scopes"]

_NO_NODES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity")


def _candidates(calls: list[str], base: str) -> list[str]:
    return [t for t in calls if t == base or t.endswith("." + base)]


def _nth_call(calls: list[str], scope: str) -> str | None:
    """The call a flat scope stands for: 'conv1_3' -> the 4th call ending in 'conv1'."""
    readings = []
    numbered = re.fullmatch(r"(.+)_(\d+)", scope)
    if numbered:
        readings.append((numbered.group(1), int(numbered.group(2))))
    readings.append((scope, 0))
    for base, k in readings:
        found = _candidates(calls, base)
        if k < len(found):
            return found[k]
    return None


def _weight_fits(node, module, shapes: dict) -> bool:
    weight = getattr(module, "weight", None)
    if weight is None or len(node.input) < 2 or node.input[1] not in shapes:
        return True  # nothing to check against
    return tuple(shapes[node.input[1]]) in (tuple(weight.shape), tuple(weight.shape[::-1]))


def resolve_flat_scopes(model, graph_module) -> dict[str, str]:
    """{ONNX node name: module path} for the flat TorchScript names of an exported GraphModule ({} if none)."""
    import torch.fx

    if not isinstance(graph_module, torch.fx.GraphModule):
        return {}
    calls = [n.target for n in graph_module.graph.nodes if n.op == "call_module"
             and type(graph_module.get_submodule(n.target)).__name__ not in _NO_NODES]
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    resolved = {}
    for node in model.graph.node:
        parts = node.name.strip("/").split("/") if node.name.startswith("/") else []
        if len(parts) != 2:  # only '/scope/Op': deeper names carry their path already
            continue
        target = _nth_call(calls, parts[0])
        if target is None:
            continue
        if node.op_type in ("Conv", "Gemm", "MatMul") and \
                not _weight_fits(node, graph_module.get_submodule(target), shapes):
            return {}  # the call order does not line up: keep the short names
        resolved[node.name] = target
    return resolved
