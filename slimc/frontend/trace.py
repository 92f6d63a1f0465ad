"""Tracing a torch module into a `torch.fx.GraphModule`, with errors a user can act on.

`symbolic_trace` fails on data-dependent Python control flow. When it does, the error says
which submodule was being traced and which line of the user's code did it, and suggests
marking that submodule a leaf (kept whole, called as a black box).
"""

from __future__ import annotations

import linecache
import os
import traceback
from typing import Sequence

from ..errors import SlimcError, first_line

__all__ = ["trace_module", "check_inputs_fit"]

_TORCH_DIR = None


def _is_library_frame(filename: str) -> bool:
    global _TORCH_DIR
    if _TORCH_DIR is None:
        import torch

        _TORCH_DIR = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.dirname(__file__))
    return filename.startswith(_TORCH_DIR) or filename.startswith(here) or "<" in filename


def _make_tracer(leaf_modules: Sequence):
    import torch.fx

    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(m for m in leaf_modules if isinstance(m, type))

    class _Tracer(torch.fx.Tracer):
        def __init__(self):
            super().__init__()
            self.stack: list[tuple[str, str]] = []
            self.failed_in: tuple[str, str] | None = None

        def is_leaf_module(self, m, qualname):
            if qualname in names or (types and isinstance(m, types)) or type(m).__name__ in names:
                return True
            return super().is_leaf_module(m, qualname)

        def call_module(self, m, forward, args, kwargs):
            self.stack.append((self.path_of_module(m), type(m).__name__))
            try:
                return super().call_module(m, forward, args, kwargs)
            except Exception:
                if self.failed_in is None:
                    self.failed_in = self.stack[-1]
                raise
            finally:
                self.stack.pop()

    return _Tracer()


def trace_module(module, leaf_modules: Sequence = ()):
    """Symbolically trace `module` (already a private copy) into a GraphModule.

    leaf_modules: qualified submodule names ('layer1.0'), class names ('MyBlock') or classes,
    traced as single calls instead of being traced through.
    """
    import torch.fx

    tracer = _make_tracer(leaf_modules)
    try:
        graph = tracer.trace(module)
    except Exception as exc:
        raise _trace_error(module, tracer, exc) from None
    return torch.fx.GraphModule(tracer.root, graph, type(module).__name__)


def _trace_error(module, tracer, exc: Exception) -> SlimcError:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_library_frame(f.filename)]
    where = ""
    if frames:
        f = frames[-1]
        code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
        where = f" at {f.filename}:{f.lineno} (`{code}`)"
    qual, cls = tracer.failed_in or ("", type(module).__name__)
    inside = f"submodule '{qual}' ({cls})" if qual else f"the top-level module ({cls})"
    hint = (
        f"mark it a leaf so it is kept whole: leaf_modules=['{qual}'] in Python or --leaf-module {qual} on the command line"
        if qual
        else "rewrite the data-dependent control flow in forward(), or move it into a submodule and mark that a leaf "
        "(leaf_modules=[...] / --leaf-module NAME)"
    )
    first = first_line(exc)
    return SlimcError(f"torch.fx could not trace {inside}{where}: {first}. To go on, {hint}.")


def check_inputs_fit(module, example_inputs) -> list:
    """Run the model once on the example inputs; a failure means the inputs do not fit the model."""
    import torch

    from ..ir.runner import flatten_outputs

    shapes = ", ".join("x".join(map(str, t.shape)) + f":{str(t.dtype).replace('torch.', '')}" for t in example_inputs)
    try:
        with torch.no_grad():
            out = module(*example_inputs)
    except Exception as exc:
        first = first_line(exc)
        raise SlimcError(
            f"the model does not run on inputs of shape {shapes}: {first}. "
            "Give the shapes the model expects with --input-shape (once per input), e.g. --input-shape 1x3x224x224."
        ) from None
    outs = flatten_outputs(out)
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise SlimcError("the model's outputs must be tensors (or tuples/lists/dicts of tensors).")
    return outs
