"""`mode=auto`: layers whose lower precision moves the outputs too much stay in float32."""

from __future__ import annotations

import numpy as np

from ._slots import COMPUTE_OPS

__all__ = ["segments", "relative_error"]


def segments(model, plan: dict) -> dict[int, list[int]]:
    """Layers for auto mode: each compute node with the converted nodes that follow it up to the
    next compute node (its bias, activation, scale: an overflow there belongs to that layer).
    Nodes before any compute node form segment -1."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    seg_of: dict[int, int] = {}
    segments: dict[int, list[int]] = {}
    for i, node in enumerate(model.graph.node):
        if i not in plan:
            continue
        if node.op_type in COMPUTE_OPS:
            seg = i
        else:
            parents = [seg_of[producer[x]] for x in node.input if x in producer and producer[x] in seg_of]
            seg = max(parents) if parents else -1
        seg_of[i] = seg
        segments.setdefault(seg, []).append(i)
    return segments


def relative_error(ref: list, got: list) -> float:
    worst = 0.0
    for a, b in zip(ref, got):
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            return float("inf")
        if not a64.size:
            continue
        err = float(np.max(np.abs(a64 - b64)))
        if not np.isfinite(err):
            return float("inf")
        worst = max(worst, err / max(float(np.max(np.abs(a64))), 1e-6))
    return worst

