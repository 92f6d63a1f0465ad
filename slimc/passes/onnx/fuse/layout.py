"""Consecutive layout ops collapse into one.

* transpose: Transpose(Transpose(x, p1), p2) -> Transpose(x, p1[p2]) (nothing at all when that is
  the identity permutation and the result is not a graph output)
* reshape:   Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) when s2 does not copy dims (0) from
  the intermediate tensor
"""

from __future__ import annotations

from typing import ClassVar

from onnxscript.rewriter import MatchResult

from ._rule import FuseRule, attr_int, attr_ints, const, rank_of

__all__ = ["RULES"]


def _perm(node, rank):
    perm = attr_ints(node, "perm")
    if perm is None:
        return None if rank is None else list(reversed(range(rank)))
    return perm


class TransposeTranspose(FuseRule):
    rule_name: ClassVar[str] = "transpose"

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, _allow_other_attributes=True, _outputs=["mid"]),
                            _allow_other_attributes=True, _outputs=["out"])

    def verify(self, context, x, mid, out) -> MatchResult:
        result = MatchResult()
        p1, p2 = _perm(mid.producer(), rank_of(x)), _perm(out.producer(), rank_of(mid))
        if p1 is None or p2 is None:
            return result.fail("a Transpose has no perm and the rank is unknown")
        if len(p1) != len(p2):
            return result.fail(f"permutations of different ranks {p1} and {p2}")
        return result

    def rewrite(self, op, x, mid, out):
        p1, p2 = _perm(mid.producer(), rank_of(x)), _perm(out.producer(), rank_of(mid))
        perm = [p1[i] for i in p2]
        if perm == list(range(len(perm))):
            return op.Identity(x)  # removed by the fuse pass's identity cleanup when possible
        return op.Transpose(x, perm=perm)


class ReshapeReshape(FuseRule):
    rule_name: ClassVar[str] = "reshape"

    def pattern(self, op, x, s1, s2):
        return op.Reshape(op.Reshape(x, s1, _allow_other_attributes=True, _outputs=["mid"]), s2,
                          _allow_other_attributes=True, _outputs=["out"])

    def verify(self, context, x, s1, s2, mid, out) -> MatchResult:
        result = MatchResult()
        shape = const(s2)
        if shape is None:
            return result.fail("the second Reshape's shape is not a constant")
        if (shape == 0).any() and not attr_int(out.producer(), "allowzero", 0):
            return result.fail("the second shape copies dimensions (0) from the intermediate tensor")
        if attr_int(mid.producer(), "allowzero", 0) and (const(s1) is None or (const(s1) == 0).any()):
            return result.fail("the first Reshape may make a zero-sized dimension (allowzero=1)")
        return result

    def rewrite(self, op, x, s1, s2, mid, out):
        return op.Reshape(x, s2, **out.producer().attributes)


RULES = {
    "transpose": (TransposeTranspose.rule(),),
    "reshape": (ReshapeReshape.rule(),),
}
