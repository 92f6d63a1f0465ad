"""Small helpers shared by ONNX passes."""

from __future__ import annotations

__all__ = ["fingerprint", "to_gs", "from_gs", "node_subgraphs"]


def fingerprint(model) -> tuple:
    """A cheap summary that changes when a pass changes the graph's structure or weights' shapes.

    Serialising a large model to compare bytes would cost more than many passes do. Order is
    ignored: re-emitting the same graph in another (topological) order is not a change.
    """
    g = model.graph
    return (
        tuple(sorted((n.op_type, tuple(n.input), tuple(n.output)) for n in g.node)),
        tuple(sorted((t.name, tuple(t.dims), t.data_type) for t in g.initializer)),
        tuple(o.name for o in g.output),
    )


def node_subgraphs(node) -> list:
    """The GraphProto bodies a node holds in its attributes (If branches, Loop and Scan bodies)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def to_gs(model):
    import onnx_graphsurgeon as gs

    return gs.import_onnx(model)


def from_gs(graph, like):
    """Export a graphsurgeon graph, keeping the original model's metadata (opset, producer, ir_version)."""
    import onnx_graphsurgeon as gs

    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = like.ir_version
    out.producer_name, out.producer_version = like.producer_name, like.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    return out
