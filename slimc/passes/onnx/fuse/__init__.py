"""`fuse`: pattern fusions on the ONNX graph, one rule family per file, each rule can be disabled.

Rules (names for `fuse{disable=...}`):

    conv-bn, gemm-bn          BatchNormalization into Conv / ConvTranspose / Gemm   (batchnorm.py)
    conv-add, matmul-add      bias Add into Conv; MatMul + Add -> Gemm              (bias.py)
    transpose, reshape        consecutive Transpose / Reshape collapse              (layout.py)
    pad-conv, pad-pool        constant Pad into Conv / AveragePool / MaxPool        (pad.py)
    layer-norm, gelu          decomposed LayerNormalization / GELU -> single ops    (norm.py)
    conv-mul, mul-conv, add-conv, gemm-mul, gemm-add
                              Mul / Add by constants into Conv / Gemm weights       (affine.py)

Rules are onnxscript rewrite rules (pattern + check + rewrite, on onnxscript's public rewriter
API); a check that rejects a match says why, and the pass reports matches per rule and
rejections per reason.

Example::

    slimc opt model.onnx --pipeline 'fold-constants,fuse{disable=gelu,layer-norm},eliminate-dead'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ....errors import closest
from ...registry import Pass, PassResult, register_pass
from . import affine, batchnorm, bias, layout, norm, pad

__all__ = ["Fuse", "RULES"]

RULES: dict[str, tuple] = {**batchnorm.RULES, **bias.RULES, **layout.RULES, **pad.RULES, **norm.RULES,
                           **affine.RULES}


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    """Apply every enabled fusion rule until none matches (at most `max-rounds` sweeps).

    disable:    rule names to skip (see the module docstring for the list)
    max_rounds: sweeps over all rules; one fusion can enable another (Pad -> Conv -> BN)
    """

    name: ClassVar[str] = "fuse"
    level: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = "pattern fusions: conv/gemm+bn, bias, pad, layout, layer-norm, gelu, affine"

    disable: tuple[str, ...] = ()
    max_rounds: int = 4

    def __post_init__(self):
        for rule in self.disable:
            if rule not in RULES:
                raise ValueError(f"'disable' names no rule '{rule}'{closest(rule, RULES)}; "
                                 f"the rules are: {', '.join(RULES)}")
        if self.max_rounds < 1:
            raise ValueError("max-rounds must be at least 1")

    def apply(self, program) -> PassResult:
        from ._apply import run_rules

        active = {name: rules for name, rules in RULES.items() if name not in self.disable}
        model, counts, rejected = run_rules(program.ir, active, self.max_rounds)
        details = {"matches": {k: v for k, v in counts.items() if v}, "rejected": rejected}
        if model is None:
            return PassResult(program, False, details)
        return PassResult(program.with_ir(model), True, details)
