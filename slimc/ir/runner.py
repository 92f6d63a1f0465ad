"""Reference execution of either IR level on numpy inputs, and random inputs for checks."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["random_like", "run_ir", "run_torch", "run_onnx", "flatten_outputs"]


# Inputs this small are parameters of the graph more often than data: Squeeze/Unsqueeze axes, TopK's k,
# Reshape's shape, Resize's scales, NonMaxSuppression's thresholds. A random draw makes most of them
# invalid, so they keep the example's values.
_PARAMETER_LIKE_ELEMENTS = 16


def random_like(examples, seed: int = 0, batch: int | None = None) -> list[np.ndarray]:
    """Random arrays shaped like `examples` (tensors or arrays), valid where the examples are.

    Floats are standard normal. Integers are drawn from the examples' own range [min, max], so token
    ids stay inside the vocabulary. Scalars and short vectors (index-like inputs such as axes, k or
    a shape) keep the example's values.
    """
    rng = np.random.default_rng(seed)
    out = []
    for ex in examples:
        arr = ex.detach().cpu().numpy() if hasattr(ex, "detach") else np.asarray(ex)
        shape = list(arr.shape)
        if batch is not None and shape:
            shape[0] = batch
        if arr.ndim <= 1 and arr.size <= _PARAMETER_LIKE_ELEMENTS and list(arr.shape) == shape:
            out.append(arr.copy())
        elif np.issubdtype(arr.dtype, np.floating):
            out.append(rng.standard_normal(shape).astype(arr.dtype))
        elif arr.dtype == np.bool_:
            out.append(rng.integers(0, 2, shape).astype(np.bool_))
        elif arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            out.append(rng.integers(lo, hi, shape, endpoint=True).astype(arr.dtype))
        else:
            out.append(np.zeros(shape, dtype=arr.dtype))
    return out


def flatten_outputs(value) -> list:
    """Outputs of a torch module as a flat list (tuples, lists and dicts are walked in order)."""
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in flatten_outputs(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in flatten_outputs(v)]
    return [value]


def run_torch(module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        outs = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
    return [o.detach().cpu().numpy() for o in flatten_outputs(outs)]


def run_onnx(model, inputs: Sequence[np.ndarray], input_names: Sequence[str] | None = None) -> list[np.ndarray]:
    from .ort_session import session_for

    sess = session_for(model)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def run_ir(ir: Any, inputs: Sequence[np.ndarray], input_names=None) -> list[np.ndarray]:
    from .program import level_of

    if level_of(ir) == "fx":
        return run_torch(ir, inputs)
    return run_onnx(ir, inputs, input_names)
