"""`fold-constants`: evaluate subgraphs whose inputs are all constants (onnx-graphsurgeon)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import fingerprint, from_gs, node_subgraphs, to_gs

__all__ = ["FoldConstants"]

_HIDDEN_SHAPE = "Shape__slimc_sliced"


def _fold_sliced_shapes(graph, fold_shapes: bool) -> list:
    """Shape nodes with start/end attributes (opset 15+): graphsurgeon's shape folding ignores
    those attributes and would fold the whole shape. Fold them here, correctly, when the input's
    shape is static; hide the others from graphsurgeon (returned, to be renamed back after)."""
    import numpy as np

    hidden = []
    graphs = [graph, *graph.subgraphs(recursive=True)]
    for node in (n for g in graphs for n in g.nodes):
        if node.op != "Shape" or not ({"start", "end"} & set(node.attrs)):
            continue
        shape = node.inputs[0].shape
        static = shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)
        if fold_shapes and static:
            start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
            out = node.outputs[0]
            out.to_constant(np.array(list(shape)[start:end], dtype=np.int64))
            node.outputs.clear()
        else:
            node.op = _HIDDEN_SHAPE
            hidden.append(node)
    return hidden


# Ops whose outputs are sequences or optionals: graphsurgeon can only fold tensors (it crashes
# on the list ORT returns for a sequence), so they are never folded.
_NOT_TENSOR_OPS = {"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SplitToSequence",
                   "Optional", "OptionalGetElement"}


def _broken_reference(model) -> str | None:
    """The first node input that nothing defines (in its graph or an enclosing one), a Constant
    without output, or None: graphsurgeon's folding has broken graphs with If/Loop bodies."""
    def walk(graph, scope: set) -> str | None:
        scope = scope | {i.name for i in graph.input} | {t.name for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.output) != 1:
                return f"Constant node '{node.name}' lost its output"
            for name in node.input:
                if name and name not in scope:
                    return f"'{name}' used by {node.op_type} '{node.name}' is never defined"
            for sub in node_subgraphs(node):
                why = walk(sub, scope)
                if why:
                    return why
            scope |= set(node.output)
        for out in graph.output:
            if out.name not in scope:
                return f"output '{out.name}' is never defined"
        return None

    return walk(model.graph, set())


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
        before = len(program.ir.graph.node)
        for recurse in (True, False):
            try:
                model = self._fold(program.ir, recurse)
            except Exception as exc:  # graphsurgeon cannot import or fold some graphs (optional types, ...)
                broken = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                continue
            broken = _broken_reference(model)
            if broken is None:
                break
        else:
            return PassResult(program, False, {"nodes_removed": 0,
                                               "skipped": f"graphsurgeon's folding broke the graph: {broken}"})
        changed = fingerprint(model) != fingerprint(program.ir)
        return PassResult(program.with_ir(model) if changed else program, changed,
                          {"nodes_removed": before - len(model.graph.node)})

    def _fold(self, model, recurse_subgraphs: bool):
        graph = to_gs(model)
        hidden = _fold_sliced_shapes(graph, self.fold_shapes)
        graph.fold_constants(fold_shapes=self.fold_shapes, size_threshold=int(self.size_threshold_mb * 2**20),
                             error_ok=True, recurse_subgraphs=recurse_subgraphs,
                             should_exclude_node=lambda node: node.op in _NOT_TENSOR_OPS)
        for node in hidden:
            node.op = "Shape"
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return from_gs(graph, model)
