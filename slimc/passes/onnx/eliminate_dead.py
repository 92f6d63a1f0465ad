"""`eliminate-dead`: drop nodes and initializers that no graph output depends on (onnx-graphsurgeon)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import fingerprint, from_gs, to_gs

__all__ = ["EliminateDead"]


@register_pass
@dataclass(frozen=True)
class EliminateDead(Pass):
    """Remove dead nodes and unused initializers; graph inputs are kept (the model's signature)."""

    name: ClassVar[str] = "eliminate-dead"
    level: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "remove nodes and weights no output depends on"

    def apply(self, program) -> PassResult:
        graph = to_gs(program.ir)
        before_nodes, before_inits = len(program.ir.graph.node), len(program.ir.graph.initializer)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model = from_gs(graph, program.ir)
        changed = fingerprint(model) != fingerprint(program.ir)
        return PassResult(program.with_ir(model) if changed else program, changed, {
            "nodes_removed": before_nodes - len(model.graph.node),
            "initializers_removed": before_inits - len(model.graph.initializer),
        })
