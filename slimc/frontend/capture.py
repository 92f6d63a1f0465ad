"""The torch frontend: check a private module with torch.export, fall back to symbolic_trace.

torch.export (non-strict) is the frontend: its graph is what passes analyse, and the FX-level IR
stays the user's own module. Exporting also checks that the example inputs fit, without a
separate forward run; only when export fails is the model run eagerly, to tell "the inputs do
not fit" from "the model cannot be exported". `torch.fx.symbolic_trace` (with leaf modules) is
the named fallback for models export refuses; the IR is then the traced GraphModule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import SlimcError
from .export import exported_program_of, output_names

__all__ = ["Captured", "capture"]


@dataclass(frozen=True)
class Captured:
    module: Any                    # the FX-level IR: the module itself, or a GraphModule (fallback)
    frontend: str                  # 'torch.export' or 'symbolic_trace'
    output_names: tuple[str, ...]


def capture(module, examples: Sequence, *, dynamic_batch: bool = False, leaf_modules: Sequence = ()) -> Captured:
    """Export `module` (a private copy in eval mode) on `examples`; fall back to symbolic_trace."""
    try:
        ep = exported_program_of(module, examples, dynamic_batch=dynamic_batch)
    except SlimcError as export_failed:
        return _fallback(module, examples, export_failed, leaf_modules)
    _check_tensor_outputs(ep)
    return Captured(module, "torch.export", output_names(ep))


def _check_tensor_outputs(ep) -> None:
    import torch

    outs = [n for n in ep.graph.nodes if n.op == "output"][0].args[0]
    vals = [getattr(o, "meta", {}).get("val") for o in outs]
    if not vals or not all(isinstance(v, torch.Tensor) for v in vals):
        raise SlimcError("the model's outputs must be tensors (or tuples/lists/dicts/ModelOutputs of tensors); "
                         "if it returns a KV cache, pass use_cache=False.")


def _fallback(module, examples, export_failed: SlimcError, leaf_modules) -> Captured:
    from .trace import check_inputs_fit, trace_module

    try:
        outputs = check_inputs_fit(module, examples)  # wrong shapes: say so, not "export failed"
    except SlimcError as eager_failed:
        if str(eager_failed).startswith("the model does not run"):
            raise
        raise export_failed from None  # non-tensor outputs (a KV cache): export's message names the fix
    try:
        gm = trace_module(module, leaf_modules)
    except SlimcError as trace_failed:
        raise SlimcError(f"{export_failed} The symbolic_trace fallback failed too: {trace_failed}") from None
    names = ("output",) if len(outputs) == 1 else tuple(f"output{i}" for i in range(len(outputs)))
    return Captured(gm, "symbolic_trace", names)
