"""Input signatures: `--input-shape 1x3x224x224` (repeatable), optional dtype, or example tensors."""

from __future__ import annotations

import os
from typing import Sequence

from ..errors import SlimcError

__all__ = ["parse_input_shape", "example_inputs_from", "check_tensor_fits", "available_memory_bytes"]

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")


def available_memory_bytes() -> int:
    """Memory the system can give without swapping (MemAvailable), or the free physical pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _gib(n: float) -> str:
    return f"{n / 2**30:,.3g} GiB" if n < 2**50 else f"{n / 2**30:.3g} GiB"


def check_tensor_fits(dims, itemsize: int, what: str) -> None:
    """Refuse, before allocating, a tensor larger than the memory this machine has available."""
    elements = 1
    for d in dims:
        elements *= int(d)  # Python ints: no overflow, however absurd the shape
    need = elements * itemsize
    have = available_memory_bytes()
    if need > have:
        raise SlimcError(f"{what} would take {_gib(need)} ({elements:,} elements x {itemsize} bytes), more than the "
                         f"{_gib(have)} of memory available here; check the dimensions (e.g. 1x3x224x224).")


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
    dtype = getattr(torch, dtype_text)
    check_tensor_fits(dims, dtype.itemsize, f"input shape '{text}'")
    return torch.zeros(dims, dtype=dtype)


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
