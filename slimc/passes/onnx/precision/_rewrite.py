"""Rewriting a graph so chosen nodes run in a lower float type, with Casts where types meet."""

from __future__ import annotations

import numpy as np

from .._graph import node_subgraphs
from ._slots import F32

__all__ = ["rewrite"]


def _subgraph_refs(graph) -> set[str]:
    """Names that If/Loop/Scan bodies read from enclosing scopes (they must keep name and type)."""
    refs: set[str] = set()

    def walk(g, local: set):
        local = local | {i.name for i in g.input} | {t.name for t in g.initializer}
        for n in g.node:
            refs.update(x for x in n.input if x and x not in local)
            for sub in node_subgraphs(n):
                walk(sub, local | set(n.output))
            local |= set(n.output)

    for node in graph.node:
        for sub in node_subgraphs(node):
            walk(sub, set())
    return refs


def _cast_array(array: np.ndarray, low: str) -> np.ndarray:
    if low == "float16":
        with np.errstate(over="ignore"):  # overflow shows up as inf: auto mode measures it
            return array.astype(np.float16)
    import ml_dtypes

    return array.astype(ml_dtypes.bfloat16)


def rewrite(model, plan: dict, types: dict, low_elem: int, low: str, keep_io: bool):
    """A copy of `model` where the nodes in `plan` ({index: (input slots, output slots)}) run in the
    low type, with Casts (or converted constant copies) wherever the types meet."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output
              and any(a.name == "value" and a.HasField("t") for a in n.attribute)}
    pinned = _subgraph_refs(g) | ({o.name for o in g.output} if keep_io else set())
    home: dict[str, int] = {}   # original float32 value -> the type it has under its own name now
    alias: dict[tuple, str] = {}  # (original name, type) -> name of that version
    new_nodes, new_inits, casts = [], [], 0
    taken = {x for n in g.node for x in list(n.input) + list(n.output)} | set(inits)

    def fresh(base):
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}{k}"
        taken.add(name)
        return name

    if not keep_io:
        for i in g.input:
            if i.name not in inits and i.type.tensor_type.elem_type == F32:
                i.type.tensor_type.elem_type = low_elem
                home[i.name] = low_elem

    def get(name: str, want: int) -> str:
        nonlocal casts
        have = home.get(name, F32)
        if have == want:
            return name
        if (name, want) in alias:
            return alias[(name, want)]
        source = inits.get(name)
        if source is None and name in consts:
            source = next(a.t for a in consts[name].attribute if a.name == "value")
        if source is not None and want == low_elem:
            arr = numpy_helper.to_array(source)
            new = numpy_helper.from_array(_cast_array(arr, low), fresh(f"{name}__{low}"))
            new_inits.append(new)
            alias[(name, want)] = new.name
            return new.name
        out = fresh(f"{name}__to_{'fp32' if want == F32 else low}")
        new_nodes.append(helper.make_node("Cast", [name], [out], to=want, name=out))
        casts += 1
        alias[(name, want)] = out
        return out

    for index, node in enumerate(g.node):
        if index in plan:
            in_slots, out_slots = plan[index]
            for k, name in enumerate(node.input):
                if name and types.get(name) == F32:
                    node.input[k] = get(name, low_elem if k in in_slots else F32)
            new_nodes.append(node)
            for k in out_slots:
                name = node.output[k]
                if name in pinned:
                    low_name = fresh(f"{name}__{low}")
                    node.output[k] = low_name
                    new_nodes.append(helper.make_node("Cast", [low_name], [name], to=F32, name=f"{name}__to_fp32"))
                    casts += 1
                    alias[(name, low_elem)] = low_name
                else:
                    home[name] = low_elem
        else:
            for k, name in enumerate(node.input):
                if name and types.get(name) == F32:
                    node.input[k] = get(name, F32)
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    for o in g.output:
        if home.get(o.name) == low_elem:
            o.type.tensor_type.elem_type = low_elem
    for v in g.value_info:
        if home.get(v.name) == low_elem:
            v.type.tensor_type.elem_type = low_elem
    _drop_unused_constants(g)
    return m, casts


def _drop_unused_constants(g) -> None:
    used = {o.name for o in g.output}

    def collect(graph):
        for n in graph.node:
            used.update(n.input)
            for sub in node_subgraphs(n):
                collect(sub)

    collect(g)
    graph_inputs = {i.name for i in g.input}
    kept = [t for t in g.initializer if t.name in used or t.name in graph_inputs]
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(nodes)

