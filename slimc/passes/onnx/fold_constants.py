"""`fold-constants`: evaluate subgraphs whose inputs are all constants (onnx-graphsurgeon)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import fingerprint, from_gs, to_gs

__all__ = ["FoldConstants"]


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Replace constant subgraphs by their values; `fold-shapes` also folds Shape ops of static tensors."""

    name: ClassVar[str] = "fold-constants"
    level: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "evaluate constant subgraphs once, at compile time"

    fold_shapes: bool = True
    size_threshold_mb: float = 64.0

    def apply(self, program) -> PassResult:
        graph = to_gs(program.ir)
        before = len(graph.nodes)
        graph.fold_constants(fold_shapes=self.fold_shapes, size_threshold=int(self.size_threshold_mb * 2**20),
                             error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
        model = from_gs(graph, program.ir)
        changed = fingerprint(model) != fingerprint(program.ir)
        return PassResult(program.with_ir(model) if changed else program, changed,
                          {"nodes_removed": before - len(model.graph.node)})
