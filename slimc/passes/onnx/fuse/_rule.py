"""The base of every fusion rule: an onnxscript rewrite rule with a slimc rule name.

A rule is pattern + check + rewrite (onnxscript's public `RewriteRuleClassBase`). Subclasses write
`verify` instead of `check`: the base records why a structural match was rejected, and counts the
matches that pass, in the `FuseSession` of the run in progress, so the `fuse` pass can report both.

Only onnxscript's public API is used (`onnxscript.rewriter`: RewriteRule, RewriteRuleClassBase,
MatchResult; `onnxscript.optimizer.basic_constant_propagation`; onnx-ir): the rules keep working
across onnxscript releases.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import inspect
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from onnxscript import ir
from onnxscript.optimizer import basic_constant_propagation
from onnxscript.rewriter import MatchResult, RewriteRule, RewriteRuleClassBase

__all__ = ["FuseRule", "FuseSession", "FLOAT_TYPES", "const", "weight", "attr_int", "attr_ints", "attr_float",
           "attr_str", "opset", "channel_vector", "new_initializer", "known_shape", "rank_of", "fuse_session",
           "const_value", "pattern_ops"]

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16)


@dataclass
class FuseSession:
    """What one run of the `fuse` pass records: names in use (new initializers avoid them), matches
    per rule, and rejected matches {rule: {reason: {node names}}}."""

    taken: set[str] = field(default_factory=set)
    matched: collections.Counter = field(default_factory=collections.Counter)
    rejected: dict = field(default_factory=lambda: collections.defaultdict(lambda: collections.defaultdict(set)))

    @classmethod
    def of_model(cls, model: ir.Model) -> "FuseSession":
        session = cls()
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            session.taken.update(v.name for v in node.outputs if v.name)
            session.taken.update(v.name for v in node.inputs if v is not None and v.name)
        session.taken.update(model.graph.initializers)
        session.taken.update(v.name for v in model.graph.inputs)
        return session

    def matches(self) -> dict[str, int]:
        return dict(self.matched)

    def rejections(self) -> dict[str, dict[str, int]]:
        return {rule: {why: len(nodes) for why, nodes in reasons.items()} for rule, reasons in self.rejected.items()}


# The session of the run in progress. onnxscript calls check and rewrite functions with no channel
# back to the caller; a context variable keeps concurrent runs (threads) apart without a lock.
_SESSION: contextvars.ContextVar[FuseSession | None] = contextvars.ContextVar("slimc_fuse_session", default=None)


@contextlib.contextmanager
def fuse_session(model: ir.Model):
    """Record matches, rejections and new names for the rules applied inside the block."""
    session = FuseSession.of_model(model)
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def _session() -> FuseSession:
    return _SESSION.get() or FuseSession()  # outside a run (a rule applied by hand): record nowhere


class _Traced:
    """A stand-in value while tracing a pattern function: remembers the op type that produced it."""

    def __init__(self, op_type: str | None = None):
        self.op_type = op_type


class _OpRecorder:
    """The `op` a pattern function is traced with: records every op type it builds."""

    def __init__(self):
        self.op_types: list[str] = []

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def build(*args, _outputs=None, **kwargs):
            self.op_types.append(op_type)
            if isinstance(_outputs, (list, tuple)) and len(_outputs) > 1:
                return tuple(_Traced(op_type) for _ in _outputs)
            return _Traced(op_type)

        return build


def pattern_ops(rule: "FuseRule") -> tuple[str | None, frozenset[str]]:
    """(the op type at the root of the rule's pattern, every op type in it), read by running the pattern
    function on stand-ins; (None, {}) when it cannot be traced (the rule is then tried on every node)."""
    recorder = _OpRecorder()
    params = [p for p in inspect.signature(rule.pattern).parameters if p != "op"]
    try:
        out = rule.pattern(recorder, *(_Traced() for _ in params))
    except Exception:
        return None, frozenset()
    root = out.op_type if isinstance(out, _Traced) else None
    return root, frozenset(recorder.op_types) if root else frozenset()


class FuseRewriteRule(RewriteRule):
    """A RewriteRule that knows its pattern's root op type and skips other nodes before matching:
    the rewriter tries every rule on every node, which costs ~8x more time on a 1,000-node graph."""

    def __init__(self, *args, root_op: str | None, op_types: frozenset[str], rule_name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.root_op, self.op_types, self.rule_name = root_op, op_types, rule_name

    def applicable(self, present: set[str]) -> bool:
        """Whether every op type of the pattern occurs in a graph holding `present` op types."""
        return self.op_types <= present

    def try_rewrite(self, model, graph_or_function, node, **kwargs):
        if self.root_op is not None and node.op_type != self.root_op:
            return None
        return super().try_rewrite(model, graph_or_function, node, **kwargs)


class FuseRule(RewriteRuleClassBase):
    """A rule of the `fuse` pass; `rule_name` is what `fuse{disable=...}` and the report use."""

    rule_name: ClassVar[str] = ""

    @classmethod
    def rule(cls, *args, **kwargs) -> FuseRewriteRule:
        instance = cls(*args, **kwargs)
        root, ops = pattern_ops(instance)
        return FuseRewriteRule(instance.pattern, instance.rewrite, instance.check, name=instance.name,
                               remove_nodes=instance.remove_nodes, graph_pre_visitor=instance.setup,
                               graph_post_visitor=instance.cleanup, as_function=instance.as_function,
                               root_op=root, op_types=ops, rule_name=cls.rule_name)

    def check(self, context, **bindings) -> MatchResult:
        result = self.verify(context, **bindings)
        session = _session()
        if not result:
            root = context.root if context is not None else None
            where = (root.name or root.op_type) if root is not None else "?"
            session.rejected[self.rule_name][result.reason or "rejected"].add(where)
        else:  # the condition is the matcher's last step: a passed check is an applied rewrite
            session.matched[self.rule_name] += 1
        return result

    def verify(self, context, **bindings) -> MatchResult:  # pragma: no cover - abstract
        return MatchResult()


def const_value(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor of a value when it is constant (initializer or Constant node output), else None."""
    if value is None:
        return None
    producer = value.producer()
    if producer is not None and value.const_value is None:
        basic_constant_propagation([producer])  # a Constant node made by an earlier rewrite
    return value.const_value


def const(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array when it is a constant (initializer or Constant node), else None.
    An initializer that is also a graph input is not a constant: the caller may feed another value."""
    if value is None or value.is_graph_input():
        return None
    tensor = const_value(value)
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except FileNotFoundError:  # external data that is not there
        return None


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
    taken = _session().taken
    name, n = f"{base}_fused", 1
    while name in taken:
        n += 1
        name = f"{base}_fused{n}"
    taken.add(name)
    return op.initializer(ir.tensor(np.ascontiguousarray(array)), name=name)


def known_shape(value: ir.Value | None) -> tuple | None:
    """The static shape of a value, or None when any dimension is unknown."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def rank_of(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)
