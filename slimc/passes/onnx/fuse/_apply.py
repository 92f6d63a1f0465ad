"""Running rule tables over an onnx.ModelProto with onnxscript's rewriter, counting per rule."""

from __future__ import annotations

__all__ = ["run_rules"]


def _with_shapes(model):
    """A copy with inferred shapes: rank and shape checks need them; the model is kept on failure."""
    import onnx

    from ....ir.onnx_io import fits_protobuf

    if not fits_protobuf(model):  # shape inference serialises the model: not past 2 GiB
        return model
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return model


def _remove_identities(graph) -> None:
    """Drop Identity nodes a rule left behind, unless their output is a graph output."""
    from onnxscript import ir
    from onnxscript.rewriter import RULE_NAME_TAG

    outputs = set(id(v) for v in graph.outputs)
    for node in list(graph):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            continue
        src, out = node.inputs[0], node.outputs[0]
        if src is None or id(out) in outputs:
            continue
        if not node.metadata_props.get(RULE_NAME_TAG):
            continue  # only our own: the user's Identities are not this pass's business
        ir.convenience.replace_all_uses_with(out, src)
        graph.remove(node, safe=True)


def _constants_to_the_right(graph) -> None:
    """Add(c, x) -> Add(x, c), Mul likewise: rules then need one operand order for constants.
    Only the in-memory copy changes; when no rule matches, the pass returns its input untouched."""
    from ._rule import const_value

    for node in graph:
        if node.op_type in ("Add", "Mul") and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
            a, b = node.inputs
            if a is not None and b is not None and const_value(a) is not None and const_value(b) is None:
                node.replace_input_with(0, b)
                node.replace_input_with(1, a)


def run_rules(proto, rules: dict[str, tuple], max_rounds: int):
    """(rewritten ModelProto or None when nothing matched, {rule name: matches}, {rule: {reason: count}})."""
    from onnxscript import ir
    from onnxscript.optimizer import basic_constant_propagation
    from onnxscript.rewriter import RewriteRuleSet

    from ._rule import fuse_session

    if not rules:
        return None, {}, {}
    model = ir.serde.deserialize_model(_with_shapes(proto))
    basic_constant_propagation(model.graph)
    _constants_to_the_right(model.graph)
    present = {n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)}
    candidates = [r for rs in rules.values() for r in rs if r.applicable(present)]
    if not candidates:
        return None, {}, {}
    rule_set = RewriteRuleSet(candidates)
    with fuse_session(model) as session:
        for _ in range(max_rounds):
            if not rule_set.apply_to_model(model):
                break
    counts, rejected = session.matches(), session.rejections()
    if not any(counts.values()):
        return None, counts, rejected
    _remove_identities(model.graph)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    out = ir.serde.serialize_model(model)
    # Shapes inferred for the checks are not the pass's output: keep only what the input had.
    kept = {v.name for v in proto.graph.value_info}
    vis = [v for v in out.graph.value_info if v.name in kept]
    del out.graph.value_info[:]
    out.graph.value_info.extend(vis)
    out.ir_version = max(proto.ir_version, 4)  # new initializers need not be inputs from IR 4 on
    return out, counts, rejected
