"""`dedupe-weights`: identical initializers become one shared tensor (parameter sharing in the graph).

Exported models often repeat a tensor (tied embeddings, copies of the same constant, layers
built from one weight). Keeping one copy shrinks the file and the memory the runtime needs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import node_subgraphs

__all__ = ["DedupeWeights"]


def _key(tensor) -> tuple:
    from onnx import numpy_helper

    data = numpy_helper.to_array(tensor)
    return tensor.data_type, tuple(tensor.dims), hashlib.blake2b(data.tobytes(), digest_size=16).digest()


def _rename_inputs(graph, mapping: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for sub in node_subgraphs(node):  # If/Loop/Scan bodies see the outer graph's tensors
            _rename_inputs(sub, mapping)


@register_pass
@dataclass(frozen=True)
class DedupeWeights(Pass):
    """Merge initializers with equal dtype, shape and bytes; tensors under `min-size` elements are left alone.

    Graph inputs and outputs keep their own tensors: they are part of the model's signature.
    """

    name: ClassVar[str] = "dedupe-weights"
    level: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "share identical initializers"

    min_size: int = 1

    def apply(self, program) -> PassResult:
        import copy

        src = program.ir.graph
        protected = {i.name for i in src.input} | {o.name for o in src.output}
        first: dict[tuple, str] = {}
        mapping: dict[str, str] = {}
        saved = 0
        for t in src.initializer:
            if t.name in protected or math.prod(t.dims) < self.min_size:
                continue
            k = _key(t)
            if k in first:
                mapping[t.name] = first[k]
                saved += t.ByteSize()
            else:
                first[k] = t.name
        if not mapping:
            return PassResult(program, False, {"merged": 0})
        model = copy.deepcopy(program.ir)
        _rename_inputs(model.graph, mapping)
        kept = [t for t in model.graph.initializer if t.name not in mapping]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        dead = set(mapping)
        vis = [v for v in model.graph.value_info if v.name not in dead]
        del model.graph.value_info[:]
        model.graph.value_info.extend(vis)
        return PassResult(program.with_ir(model), True, {"merged": len(mapping), "bytes_saved": saved})
