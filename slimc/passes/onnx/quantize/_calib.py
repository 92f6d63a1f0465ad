"""Calibration data for `quantize-int8`: the user's loader (`calib=FILE.py:LOADER`) or random inputs.

A loader is a callable with no arguments that returns an iterable of batches. A batch is a dict
{input name: array}, a tuple/list of arrays in the model's input order, or one array for a model
with one input; arrays may be numpy arrays or torch tensors. Every batch is checked against the
ONNX graph's inputs (count, dtype, rank, fixed dimensions) before any calibration runs, so a wrong
loader fails with a SlimcError that names the batch and the input, not deep inside ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ....errors import SlimcError

__all__ = ["GraphInput", "graph_inputs", "CalibrationSet", "load_calibration"]


@dataclass(frozen=True)
class GraphInput:
    """A graph input: its name, numpy dtype and shape (an int for a fixed dimension, None for a symbolic one)."""

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"'{self.name}' {self.dtype.name}[{dims}]"


@dataclass(frozen=True)
class CalibrationSet:
    """Validated feeds (one dict per model call), where they came from and how many samples they hold."""

    feeds: list
    source: str  # "loader" or "random"
    samples: int


def graph_inputs(model) -> list[GraphInput]:
    import onnx

    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        out.append(GraphInput(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return out


def load_calibration(spec: str | None, model, samples: int, random_batches) -> CalibrationSet:
    """The calibration feeds for `calib=spec`; `random_batches(seed)` gives one random batch (calib=random)."""
    inputs = graph_inputs(model)
    if not spec:
        raise SlimcError(
            "quantize-int8 needs calibration data to choose its int8 ranges: give calib=FILE.py:LOADER, a function "
            "returning an iterable of input batches (dicts name->array, or tuples of arrays in input order; numpy or "
            "torch), e.g. quantize-int8{calib=calib.py:batches}. calib=random runs on random inputs, which gives "
            "ranges unrelated to real data: use it only to try the pipeline."
        )
    if spec == "random":
        feeds, total, seed = [], 0, 0
        while total < samples:
            feed = _check(random_batches(seed), inputs, f"random batch {seed}")
            feeds.extend(_split(feed, inputs))
            total += _batch_size(feed, inputs)
            seed += 1
        return CalibrationSet(feeds, "random", total)
    from ....frontend.specs import load_callable

    loader = load_callable(spec, "loader")
    try:
        batches = loader()
        iterator = iter(batches)
    except Exception as exc:
        raise SlimcError(f"calibration loader '{spec}' raised {type(exc).__name__}: {exc}. It must be a function "
                         "with no arguments returning an iterable of input batches.") from None
    feeds, total, index = [], 0, 0
    while total < samples:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except Exception as exc:
            raise SlimcError(f"calibration loader '{spec}' raised {type(exc).__name__} at batch {index}: {exc}") from None
        feed = _check(batch, inputs, f"calibration batch {index} from '{spec}'")
        feeds.extend(_split(feed, inputs))
        total += _batch_size(feed, inputs)
        index += 1
    if not feeds:
        raise SlimcError(f"calibration loader '{spec}' yielded no batches; it must yield at least one batch of "
                         f"inputs ({', '.join(i.describe() for i in inputs)}).")
    return CalibrationSet(feeds, "loader", total)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check(batch: Any, inputs: list[GraphInput], where: str) -> dict:
    """The batch as {input name: array}, after checking it fits the graph inputs."""
    expected = ", ".join(i.describe() for i in inputs)
    if isinstance(batch, dict):
        missing = [i.name for i in inputs if i.name not in batch]
        if missing:
            raise SlimcError(f"{where} has no value for input(s) {', '.join(missing)} (it has keys "
                             f"{', '.join(map(str, batch))}); the model's inputs are {expected}.")
        arrays = [batch[i.name] for i in inputs]
    elif isinstance(batch, (tuple, list)):
        arrays = list(batch)
    else:
        arrays = [batch]
    if len(arrays) != len(inputs):
        raise SlimcError(f"{where} holds {len(arrays)} array(s) but the model has {len(inputs)} input(s): {expected}. "
                         "Yield a tuple in input order or a dict keyed by input name.")
    feed = {}
    for spec, value in zip(inputs, arrays):
        try:
            arr = _to_numpy(value)
        except Exception as exc:
            raise SlimcError(f"{where}: the value for input '{spec.name}' is a {type(value).__name__}, not an array "
                             f"({exc}).") from None
        if arr.dtype != spec.dtype:
            raise SlimcError(f"{where}: input '{spec.name}' is {arr.dtype.name} but the model expects "
                             f"{spec.dtype.name}; convert it in the loader (e.g. .astype(np.{spec.dtype.name})).")
        if arr.ndim != len(spec.shape) or any(d is not None and d != a and k > 0
                                              for k, (d, a) in enumerate(zip(spec.shape, arr.shape))):
            raise SlimcError(f"{where}: input '{spec.name}' has shape {list(arr.shape)} but the model expects "
                             f"{spec.describe()} (? = any size).")
        batch0 = spec.shape[0] if spec.shape else None
        if batch0 is not None and arr.shape[0] % batch0:
            raise SlimcError(f"{where}: input '{spec.name}' has {arr.shape[0]} samples on axis 0 but the model's batch "
                             f"is fixed at {batch0}; yield a multiple of {batch0}.")
        feed[spec.name] = np.ascontiguousarray(arr)
    sizes = {a.shape[0] for a in feed.values() if a.ndim}
    if len(sizes) > 1:
        raise SlimcError(f"{where}: the inputs have different batch sizes {sorted(sizes)} on axis 0.")
    return feed


def _batch_size(feed: dict, inputs: list[GraphInput]) -> int:
    arr = feed[inputs[0].name]
    return int(arr.shape[0]) if arr.ndim else 1


def _split(feed: dict, inputs: list[GraphInput]) -> list[dict]:
    """A batch larger than a fixed model batch becomes several model calls."""
    fixed = inputs[0].shape[0] if inputs[0].shape else None
    n = _batch_size(feed, inputs)
    if fixed is None or fixed == n:
        return [feed]
    return [{k: v[s:s + fixed] for k, v in feed.items()} for s in range(0, n, fixed)]
