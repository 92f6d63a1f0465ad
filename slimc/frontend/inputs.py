"""Input signatures: `--input-shape 1x3x224x224` (repeatable), optional dtype, or example tensors."""

from __future__ import annotations

from typing import Sequence

from ..errors import SlimcError

__all__ = ["parse_input_shape", "example_inputs_from"]

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")


def parse_input_shape(text: str):
    """'1x3x224x224' or '1x128:int64' -> a zero-filled example tensor of that shape and dtype."""
    import torch

    shape_text, _, dtype_text = text.partition(":")
    dtype_text = dtype_text or "float32"
    if dtype_text not in _DTYPES:
        raise SlimcError(f"input shape '{text}': unknown dtype '{dtype_text}'; use one of {', '.join(_DTYPES)}.")
    try:
        dims = [int(d) for d in shape_text.lower().split("x")]
    except ValueError:
        dims = []
    if not dims or any(d <= 0 for d in dims):
        raise SlimcError(
            f"input shape '{text}' is not dimensions separated by 'x' (e.g. 1x3x224x224, or 1x128:int64)."
        )
    return torch.zeros(dims, dtype=getattr(torch, dtype_text))


def example_inputs_from(example_inputs=None, input_shapes: Sequence[str] | None = None) -> tuple:
    """Example tensors from tensors/arrays given in Python, or from shape texts. Floats get random values."""
    import numpy as np
    import torch

    if example_inputs is not None and input_shapes:
        raise SlimcError("give example inputs or input shapes, not both.")
    if example_inputs is None and not input_shapes:
        return ()
    if input_shapes:
        tensors = [parse_input_shape(s) for s in input_shapes]
    else:
        if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
            example_inputs = (example_inputs,)
        tensors = []
        for x in example_inputs:
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x)
            if not isinstance(x, torch.Tensor):
                raise SlimcError(f"example inputs must be tensors or numpy arrays, got {type(x).__name__}.")
            tensors.append(x.detach().clone())
    gen = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype) if t.is_floating_point() and not t.any() else t
        for t in tensors
    )
