"""`torch.export` capture: the ATen graph slimc's FX-level passes analyse (`Program.exported()`).

Analysis runs on the exported graph (ATen ops, a closed set, with `nn_module_stack` and the
parameter each node reads); rewrites happen on the user's own module, which is re-exported
when the next pass needs a graph. Export is non-strict (Python runs as Python), so Hugging
Face models, timm models and subclasses of built-in layers export as their ATen calls.

Example::

    ep = export_module(model.eval(), (torch.randn(1, 3, 224, 224),))
    owner = parameter_owners(ep)          # {"p_layer1_0_conv1_weight": "layer1.0.conv1.weight", ...}
    module_of = parameter_modules(ep)     # {"p_layer1_0_conv1_weight": "layer1.0.conv1", ...}
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import traceback
import warnings
import weakref
from typing import Sequence

from ..errors import SlimcError, first_line

__all__ = ["export_module", "exported_program_of", "parameter_owners", "parameter_modules", "output_names",
           "user_frame", "export_error"]

# module -> {(input ids, dynamic): ExportedProgram}. Passes replace the module object when they
# rewrite it (never mutate it), so the object is the cache key; weak, so dropped programs free it.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _export_args(args: tuple, dynamic_batch: bool):
    """(args, dynamic_shapes) for torch.export. A dynamic batch needs an example batch of 2 or more:
    export specialises a size-1 dimension to the constant 1, so batch-1 examples are repeated to 2."""
    import torch

    if not dynamic_batch:
        return args, None
    batch = torch.export.Dim("batch", min=1)
    dynamic, widened = [], []
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            dynamic.append({0: batch})
            widened.append(a.expand(2, *a.shape[1:]).contiguous() if a.shape[0] == 1 else a)
        else:
            dynamic.append(None)
            widened.append(a)
    return tuple(widened), tuple(dynamic)


def export_module(module, example_inputs: Sequence, *, dynamic_batch: bool = False, strict: bool = False,
                  example_kwargs: dict | None = None):
    """`torch.export.export(module, inputs)` with an error a user can act on.

    The module is exported as it is (train/eval mode included); slimc's frontend puts its private
    copy in eval mode. `dynamic_batch` marks axis 0 of every tensor input symbolic ('batch').
    """
    import torch

    args, dynamic = _export_args(tuple(example_inputs), dynamic_batch)
    try:
        with warnings.catch_warnings(), _quiet_logging():
            warnings.simplefilter("ignore")
            return torch.export.export(module, args, kwargs=example_kwargs or None, dynamic_shapes=dynamic,
                                       strict=strict)
    except Exception as exc:
        raise export_error(module, exc) from None


@contextlib.contextmanager
def _quiet_logging():
    """torch.export logs and prints graphs and guard warnings on failure; slimc's error says what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def exported_program_of(module, example_inputs: Sequence, *, dynamic_batch: bool | None = None):
    """The ExportedProgram of `module` on these inputs, exported once per module object and reused.

    dynamic_batch None takes whichever export is cached (analysis does not care), else exports static.
    """
    key_inputs = tuple(id(t) for t in example_inputs)
    try:
        per_module = _CACHE.setdefault(module, {})
    except TypeError:  # not weak-referenceable: no caching
        per_module = {}
    wanted = [dynamic_batch] if dynamic_batch is not None else [False, True]
    for dyn in wanted:
        hit = per_module.get((key_inputs, dyn))
        if hit is not None:
            return hit
    dyn = bool(dynamic_batch)
    ep = export_module(module, example_inputs, dynamic_batch=dyn)
    per_module[(key_inputs, dyn)] = ep
    return ep


def export_error(module, exc: Exception) -> SlimcError:
    """One paragraph: what torch.export refused, where in the user's code, and what to try."""
    first = first_line(exc)
    where = user_frame(exc)
    if "Cache" in first and "in output" in first:
        hint = ("the model returns a KV cache (" + first.split("'")[1].rsplit(".", 1)[-1] + "): build or call it "
                "with use_cache=False (e.g. config.use_cache = False) so it returns tensors only"
                if first.count("'") >= 2 else "the model returns a KV cache: pass use_cache=False")
    else:
        hint = ("if it branches on tensor values, move that branch out of forward(); if it returns a KV cache or "
                "other non-tensor outputs, build it with use_cache=False")
    return SlimcError(f"torch.export could not capture {type(module).__name__}{where}: {first}. Fix: {hint}.")


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


def parameter_modules(exported) -> dict[str, str]:
    """Placeholder name -> the qualified name of the module that owns it ('layer1.0.conv1'; '' for the root)."""
    return {node: qual.rpartition(".")[0] for node, qual in parameter_owners(exported).items()}


def output_names(exported) -> tuple[str, ...]:
    """Names for the flattened outputs: 'output' / 'output0..N' for tensors and tuples, the keys of dict
    and ModelOutput outputs ('logits', 'last_hidden_state')."""
    from torch.utils import _pytree as pytree

    spec = exported.call_spec.out_spec
    n = spec.num_leaves if spec is not None else 1
    if spec is None:
        return ("output",) if n == 1 else tuple(f"output{i}" for i in range(n))
    paths = [p for p, _ in pytree.tree_flatten_with_path(pytree.tree_unflatten(list(range(n)), spec))[0]]
    names = []
    for path in paths:
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", "")))) for k in path]
        if all(isinstance(k, pytree.SequenceKey) for k in path):
            parts = []
        names.append(".".join(parts))
    if not any(names):
        return ("output",) if n == 1 else tuple(f"output{i}" for i in range(n))
    taken: set[str] = set()
    out = []
    for i, name in enumerate(names):
        name = name or f"output{i}"
        if name in taken:
            name = f"{name}_{i}"
        taken.add(name)
        out.append(name)
    return tuple(out)
