"""`dedupe-weights`: identical initializers become one shared tensor (parameter sharing in the graph).

Exported models often repeat a tensor (tied embeddings, copies of the same constant, layers
built from one weight). Keeping one copy shrinks the file and the memory the runtime needs.

A tied output head is repeated *transposed*: exporters and constant folding turn
`MatMul(h, Transpose(wte))` into a second initializer holding wte's transpose (GPT-2's lm_head:
+38.6 M parameters). `tied_transposes` finds them and `retie_transposed` puts the Transpose back on
the one shared matrix;
`simplify` calls it too, so a lossless pipeline does not grow the parameter count.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar

from ..registry import Pass, PassResult, register_pass
from ._graph import node_subgraphs

__all__ = ["DedupeWeights", "tied_transposes", "retie_transposed", "MIN_TIED_ELEMENTS"]

# Smaller matrices cost more as a node than they save as bytes.
MIN_TIED_ELEMENTS = 1024


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


def _digest(array) -> bytes:
    import numpy as np

    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()


def tied_transposes(model, min_size: int = MIN_TIED_ELEMENTS, exclude=()) -> list[tuple[str, str]]:
    """(copy, original) pairs: 2-D initializers equal to the transpose of an earlier one (read-only).

    Only shapes that have a mirrored partner are hashed, so models without one pay nothing.
    """
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    skip = {i.name for i in g.input} | {o.name for o in g.output} | set(exclude)
    mats = [t for t in g.initializer if len(t.dims) == 2 and math.prod(t.dims) >= min_size and t.name not in skip]
    shapes = {tuple(t.dims) for t in mats}
    mats = [t for t in mats if tuple(reversed(t.dims)) in shapes]
    seen: dict[tuple, tuple[str, object]] = {}  # (dtype, shape, digest) of a transpose -> (name, array)
    pairs = []
    for t in mats:
        data = numpy_helper.to_array(t)
        hit = seen.get((t.data_type, tuple(t.dims), _digest(data)))
        if hit is not None and np.array_equal(hit[1].T, data):  # the bytes, not only the digest
            pairs.append((t.name, hit[0]))
            continue
        seen.setdefault((t.data_type, tuple(reversed(t.dims)), _digest(data.T)), (t.name, data))
    return pairs


def retie_transposed(model, pairs: list[tuple[str, str]]) -> None:
    """In place: each (copy, original) initializer pair becomes `copy = Transpose(original)`."""
    from onnx import helper

    if not pairs:  # rebuilding the initializer list would copy every weight
        return
    g = model.graph
    dropped = {name for name, _ in pairs}
    kept = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept)
    for i, (name, original) in enumerate(pairs):
        g.node.insert(i, helper.make_node("Transpose", [original], [name], perm=[1, 0], name=f"retie/{name}"))


@register_pass
@dataclass(frozen=True)
class DedupeWeights(Pass):
    """Merge initializers with equal dtype, shape and bytes, and re-tie transposed copies of a matrix
    (as `Transpose` of the one kept); tensors under `min-size` elements are left alone.

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
        tied = tied_transposes(program.ir, max(self.min_size, MIN_TIED_ELEMENTS), exclude=mapping)
        if not mapping and not tied:
            return PassResult(program, False, {"merged": 0, "retied": 0})
        model = copy.deepcopy(program.ir)
        retie_transposed(model, tied)  # before the renaming, which also renames the Transposes' inputs
        saved += sum(t.ByteSize() for t in src.initializer if t.name in {name for name, _ in tied})
        _rename_inputs(model.graph, mapping)
        kept = [t for t in model.graph.initializer if t.name not in mapping]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        dead = set(mapping)
        vis = [v for v in model.graph.value_info if v.name not in dead]
        del model.graph.value_info[:]
        model.graph.value_info.extend(vis)
        return PassResult(program.with_ir(model), True, {"merged": len(mapping), "retied": len(tied),
                                                         "bytes_saved": saved})
