"""`simplify`: onnxsim's constant folding, shape inference and graph optimizations.

onnxsim can check its own result against ONNX Runtime on random inputs (`check-n` times); a
failed check is an error here, not a silent fallback, since the pass claims to be lossless. It is
off by default: it costs two extra ORT sessions (~1 s on resnet50), and slimc already checks the
final artifact against the original model (the report's fidelity) and each pass under --verify-each.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import ClassVar

from ...errors import SlimcError, first_line
from ...ir.onnx_io import fits_protobuf
from ..registry import Pass, PassResult, register_pass
from ._graph import fingerprint
from .dedupe_weights import retie_transposed, tied_transposes

__all__ = ["Simplify"]


@register_pass
@dataclass(frozen=True)
class Simplify(Pass):
    """Run onnxsim.simplify; `check-n` random-input comparisons against the input graph (0 disables)."""

    name: ClassVar[str] = "simplify"
    level: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "onnxsim: fold constants, infer shapes, fuse simple patterns"

    check_n: int = 0
    skip_fuse_bn: bool = False

    def apply(self, program) -> PassResult:
        import onnxsim

        model = program.ir
        if not fits_protobuf(model):
            # onnxsim serialises the model into one protobuf, which cannot hold more than 2 GiB.
            return PassResult(program, False, {"skipped": "model over 2 GiB; onnxsim cannot serialise it"})
        if model.ir_version < 4:
            # Before IR 4 every initializer must also be a graph input; onnxsim adds initializers
            # (folded constants) without inputs and then rejects its own graph. IR 4 drops that rule
            # and changes nothing else, so the graph is handed over (and returned) as IR 4.
            import onnx

            bumped = onnx.ModelProto()
            bumped.CopyFrom(model)
            bumped.ir_version = 4
            model = bumped
        skipped = ["fuse_bn_into_conv"] if self.skip_fuse_bn else None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                simplified, ok = onnxsim.simplify(model, check_n=self.check_n, skipped_optimizers=skipped)
        except Exception as exc:
            # onnxsim cannot take every graph the ONNX checker accepts; leaving such a graph as it is
            # keeps the pass lossless, and the report says why nothing happened.
            return PassResult(program, False, {"skipped": f"onnxsim failed: {first_line(exc)[:200]}"})
        if not ok:
            raise SlimcError("onnxsim's own check found the simplified graph differs from its input; "
                             "drop 'simplify' from the pipeline or report the model.")
        # onnxsim records its settings as metadata; they say nothing about the model, so drop them.
        kept = [p for p in simplified.metadata_props if not p.key.startswith("onnxsim.")]
        del simplified.metadata_props[:]
        simplified.metadata_props.extend(kept)
        # Constant folding turns Transpose(tied embedding) into a second, transposed copy of the matrix
        # (GPT-2's lm_head: 53.5 M -> 91.4 M parameters); a lossless pass must not grow the model.
        tied = tied_transposes(simplified)
        retie_transposed(simplified, tied)
        changed = fingerprint(simplified) != fingerprint(model)
        details = {"nodes_removed": len(model.graph.node) - len(simplified.graph.node)}
        if tied:
            details["retied"] = len(tied)
        return PassResult(program.with_ir(simplified) if changed else program, changed, details)
