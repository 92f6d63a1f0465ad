"""The base of every fusion rule: an onnxscript rewrite rule with a slimc rule name.

A rule is pattern + check + rewrite (onnxscript's `RewriteRuleClassBase`). Subclasses write
`verify` instead of `check`: the base records why a structural match was rejected, so the
`fuse` pass can report it next to the match counts.
"""

from __future__ import annotations

import collections
from typing import ClassVar

import numpy as np
from onnxscript import ir
from onnxscript.rewriter import _ir_utils
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

__all__ = ["FuseRule", "FLOAT_TYPES", "const", "weight", "attr_int", "attr_ints", "attr_float", "attr_str", "opset",
           "channel_vector", "new_initializer", "known_shape", "rank_of", "begin_session", "matches", "rejections"]

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16)

# Per apply() of the fuse pass: names already in the model (new initializers avoid them) and
# rejected matches {rule: {reason: {node names}}}. Reset by `begin_session`.
_taken: set[str] = set()
_rejected: dict = collections.defaultdict(lambda: collections.defaultdict(set))
_matched: collections.Counter = collections.Counter()


def begin_session(model: ir.Model) -> None:
    _taken.clear()
    _rejected.clear()
    _matched.clear()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        _taken.update(v.name for v in node.outputs if v.name)
        _taken.update(v.name for v in node.inputs if v is not None and v.name)
    _taken.update(model.graph.initializers)
    _taken.update(v.name for v in model.graph.inputs)


def matches() -> dict[str, int]:
    return dict(_matched)


def rejections() -> dict[str, dict[str, int]]:
    return {rule: {why: len(nodes) for why, nodes in reasons.items()} for rule, reasons in _rejected.items()}


class FuseRule(RewriteRuleClassBase):
    """A rule of the `fuse` pass; `rule_name` is what `fuse{disable=...}` and the report use."""

    rule_name: ClassVar[str] = ""

    def check(self, context, **bindings) -> MatchResult:
        result = self.verify(context, **bindings)
        if not result:
            root = context.root if context is not None else None
            where = (root.name or root.op_type) if root is not None else "?"
            _rejected[self.rule_name][result.reason or "rejected"].add(where)
        else:  # the condition is the matcher's last step: a passed check is an applied rewrite
            _matched[self.rule_name] += 1
        return result

    def verify(self, context, **bindings) -> MatchResult:  # pragma: no cover - abstract
        return MatchResult()


def const(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array when it is a constant (initializer or Constant node), else None.
    An initializer that is also a graph input is not a constant: the caller may feed another value."""
    if value is None or value.is_graph_input():
        return None
    return _ir_utils.get_numpy_value(value)


weight = const  # the name rules use for a Conv/Gemm parameter


def attr_int(node: ir.Node, name: str, default: int) -> int:
    a = node.attributes.get(name)
    return default if a is None else a.as_int()


def attr_float(node: ir.Node, name: str, default: float) -> float:
    a = node.attributes.get(name)
    return default if a is None else a.as_float()


def attr_ints(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else list(a.as_ints())


def attr_str(node: ir.Node, name: str, default: str) -> str:
    a = node.attributes.get(name)
    return default if a is None else a.as_string()


def opset(context) -> int:
    imports = context.model.opset_imports if context is not None and context.model is not None else {}
    return imports.get("", imports.get("ai.onnx", 1))


def channel_vector(c: np.ndarray, rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """`c` as a [channels] vector when it broadcasts against a rank-`rank` tensor only along `axis`
    (a scalar, [C,1,1], [1,C,1,1], ...) without growing that tensor; None otherwise."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1) if c.size > 1 else c.reshape(()), (channels,)).copy()


def new_initializer(op, array: np.ndarray, base: str) -> ir.Value:
    """A new initializer whose name is unused in the model (old weights may still be shared)."""
    base = base or "fused"
    name, n = f"{base}_fused", 1
    while name in _taken:
        n += 1
        name = f"{base}_fused{n}"
    _taken.add(name)
    return op.initializer(ir.tensor(np.ascontiguousarray(array)), name=name)


def known_shape(value: ir.Value | None) -> tuple | None:
    """The static shape of a value, or None when any dimension is unknown."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def rank_of(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)
