"""`torch.export` capture: the ATen graph slimc's FX-level passes analyse.

Analysis runs on the exported graph (ATen ops, a closed set, with `nn_module_stack` and the
parameter each node reads); rewrites happen on the user's own module, which is re-exported
when the next pass needs a graph. Export is non-strict (Python runs as Python), so Hugging
Face models, timm models and subclasses of built-in layers export as their ATen calls.

Example::

    ep = export_module(model.eval(), (torch.randn(1, 3, 224, 224),))
    owner = parameter_owners(ep)          # {"p_layer1_0_conv1_weight": "layer1.0.conv1.weight", ...}
"""

from __future__ import annotations

import os
import traceback
import warnings
from typing import Sequence

from ..errors import SlimcError

__all__ = ["export_module", "parameter_owners", "user_frame"]


def export_module(module, example_inputs: Sequence, *, dynamic_batch: bool = False, strict: bool = False,
                  example_kwargs: dict | None = None):
    """`torch.export.export(module, inputs)` with an error a user can act on.

    The module is exported as it is (train/eval mode included); slimc's frontend puts its private
    copy in eval mode. `dynamic_batch` marks axis 0 of every tensor input symbolic.
    """
    import torch

    args = tuple(example_inputs)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, args, kwargs=example_kwargs or None, dynamic_shapes=dynamic,
                                       strict=strict)
    except Exception as exc:
        raise export_error(module, exc) from None


def export_error(module, exc: Exception) -> SlimcError:
    """One paragraph: what torch.export refused, where in the user's code, and what to try."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = user_frame(exc)
    hint = "If the model returns a KV cache or other non-tensor outputs, build it with use_cache=False"
    return SlimcError(f"torch.export could not capture {type(module).__name__}{where}: {first}. {hint}; "
                      "if it branches on tensor values, move that branch out of forward().")


def user_frame(exc: BaseException) -> str:
    """' at file.py:12 (`code`)' for the innermost frame outside torch and slimc, or ''."""
    import torch

    torch_dir = os.path.dirname(torch.__file__)
    slimc_dir = os.path.dirname(os.path.dirname(__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not (f.filename.startswith(torch_dir) or f.filename.startswith(slimc_dir) or "<" in f.filename)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} (`{(f.line or '').strip()}`)"


def parameter_owners(exported) -> dict[str, str]:
    """Placeholder name -> the parameter or buffer's qualified name in the module ('layer1.0.conv1.weight')."""
    sig = exported.graph_signature
    return {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
