"""`to-fp16` / `to-bf16`: lower float32 weights and activations, keeping sensitive ops in float32.

Strongly typed backends (TensorRT 10.12+, TensorRT for RTX) take the precision from the types
in the graph, so the graph itself carries it: converted nodes read and write float16 (bfloat16),
kept nodes stay float32, and explicit Cast nodes sit where the two meet.

Kept in float32 by default: the numerically sensitive ops (softmax, normalisations, reductions,
exp/log/pow, cumulative sums), the graph inputs and outputs (`keep-io`), ops whose types are set
by attributes (Cast, random ops, quantisation), nodes with If/Loop bodies, the ops named in
`keep-fp32` (op types or node names), and, with `ort-cpu=true` (the default), ops ONNX Runtime's
CPU provider cannot run at the lower precision (probed once per op signature; set it to false for
TensorRT, which has low-precision kernels for what the op schemas allow).

`mode=auto` measures, layer by layer, how much converting each layer (a compute op such as Conv,
Gemm, MatMul with the converted ops after it up to the next one) alone moves the outputs on calibration inputs (`program.random_inputs()`), keeps in
float32 the layers that move it more than `tolerance`, and then keeps the worst remaining layers
until the whole converted graph is within `tolerance` (Polygraphy's `debug precision`, as a pass).

Example::

    slimc opt model.onnx --pipeline 'fuse,to-fp16{keep-fp32=Resize,/head/Gemm}'
    slimc opt model.onnx --pipeline 'to-fp16{mode=auto tolerance=0.01}'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


from ....errors import SlimcError
from ...registry import Pass, PassResult, register_pass
from ._auto import relative_error, segments
from ._rewrite import rewrite
from ._slots import COMPUTE_OPS, F32, SENSITIVE_OPS, OrtProbe, convertible_slots, value_types

__all__ = ["ToFP16", "ToBF16", "SENSITIVE_OPS", "COMPUTE_OPS"]


# Ops that only move or select data: in low precision they save nothing unless a neighbour is low too.
_MOVERS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
           "GatherElements", "GatherND", "Identity", "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth"}


def _isolated_movers(model, plan: dict, types: dict, keep_io: bool) -> set[int]:
    """Movers in `plan` not connected (through float tensors and other movers in `plan`) to a
    converted op that computes, or to a low-precision graph input: converting them buys only Casts."""
    nodes = model.graph.node
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in n.input:
            consumers.setdefault(x, []).append(i)

    def neighbours(i):
        for x in nodes[i].input:
            if x and types.get(x) == F32 and x in producer:
                yield producer[x]
        for x in nodes[i].output:
            if x and types.get(x) == F32:
                yield from consumers.get(x, ())

    movers = {i for i in plan if nodes[i].op_type in _MOVERS}
    alive = set(plan) - movers
    if not keep_io:
        graph_inputs = {g.name for g in model.graph.input}
        alive |= {i for i in movers if any(x in graph_inputs for x in nodes[i].input)}
    frontier = list(alive)
    while frontier:
        for j in neighbours(frontier.pop()):
            if j in movers and j not in alive:
                alive.add(j)
                frontier.append(j)
    return movers - alive


# ---- the passes --------------------------------------------------------------------------

@dataclass(frozen=True)
class _LowerPrecision(Pass):
    """Shared by to-fp16 and to-bf16 (see the module docstring)."""

    level: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = False
    low: ClassVar[str] = ""
    low_elem: ClassVar[int] = 0

    mode: Literal["all", "auto"] = "all"
    keep_fp32: tuple[str, ...] = ()
    keep_sensitive: bool = True
    keep_io: bool = True
    ort_cpu: bool = True
    tolerance: float = 1e-2
    calibration_samples: int = 2

    def __post_init__(self):
        if self.tolerance <= 0:
            raise ValueError("tolerance must be > 0")
        if self.calibration_samples < 1:
            raise ValueError("calibration-samples must be at least 1")

    def _plan(self, model, types):
        """({node index: (input slots, output slots)} to convert, {reason: count} of kept nodes)."""
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        keep = set(self.keep_fp32)
        probe = OrtProbe() if self.ort_cpu else None
        plan, kept = {}, {}
        for index, node in enumerate(model.graph.node):
            if node.op_type == "Constant":
                continue  # its value is converted where a low-precision node reads it
            if node.op_type in keep or (node.name and node.name in keep):
                reason = "keep-fp32"
            elif self.keep_sensitive and node.op_type in SENSITIVE_OPS:
                reason = "numerically sensitive"
            else:
                slots = convertible_slots(node, opset, types, self.low)
                if slots is None:
                    continue  # no float32 tensor in or out: nothing to decide
                if isinstance(slots, str):
                    reason = slots
                else:
                    ins, outs = slots
                    if probe is not None and not probe.supports(
                            node, opset,
                            [0 if not n else (self.low_elem if k in ins else types.get(n, F32))
                             for k, n in enumerate(node.input)],
                            [self.low_elem if k in outs else types.get(n, F32) for k, n in enumerate(node.output)]):
                        reason = f"ONNX Runtime CPU cannot run it in {self.low}"
                    else:
                        plan[index] = slots
                        continue
            if any(types.get(n) == F32 for n in list(node.input) + list(node.output) if n):
                kept[f"{node.op_type}: {reason}"] = kept.get(f"{node.op_type}: {reason}", 0) + 1
        for index in _isolated_movers(model, plan, types, self.keep_io):
            del plan[index]
            key = f"{model.graph.node[index].op_type}: moves data between float32 ops (Casts would cost more)"
            kept[key] = kept.get(key, 0) + 1
        return plan, kept

    def apply(self, program) -> PassResult:
        model = program.ir
        types = value_types(model)
        plan, kept = self._plan(model, types)
        if not plan:
            return PassResult(program, False, {"converted": 0, "kept_fp32": kept})
        details: dict = {}
        if self.mode == "auto":
            plan, details = self._auto(program, model, plan, types)
            if not plan:
                return PassResult(program, False, {"converted": 0, "kept_fp32": kept, **details})
        out, casts = rewrite(model, plan, types, self.low_elem, self.low, self.keep_io)
        details = {"converted": len(plan), "casts": casts, "kept_fp32": kept, **details}
        examples = program.example_inputs
        if not self.keep_io:
            examples = tuple(self._lower_example(t) for t in examples)
        return PassResult(program.with_ir(out, example_inputs=examples), True, details)

    def _lower_example(self, t):
        import torch

        if hasattr(t, "dtype") and t.dtype == torch.float32:
            return t.to(torch.float16 if self.low == "float16" else torch.bfloat16)
        return t

    def _auto(self, program, model, plan, types):
        from ....ir.runner import run_onnx

        inputs = [program.random_inputs(seed=9000 + i) for i in range(self.calibration_samples)]
        try:
            refs = [run_onnx(model, x) for x in inputs]
        except SlimcError as exc:
            raise SlimcError(f"{self.name}{{mode=auto}} cannot run the float32 graph: {exc}") from None

        def error(sub: dict) -> float:
            m, _ = rewrite(model, sub, types, self.low_elem, self.low, keep_io=True)
            try:
                return max(relative_error(r, run_onnx(m, x)) for r, x in zip(refs, inputs))
            except SlimcError:
                return float("inf")

        groups = segments(model, plan)
        alone = {seg: error({i: plan[i] for i in members}) for seg, members in groups.items()}
        sensitive = {seg for seg, e in alone.items() if e > self.tolerance}

        def without(segs):
            dropped = {i for seg in segs for i in groups[seg]}
            return {i: s for i, s in plan.items() if i not in dropped}

        current = without(sensitive)
        total = error(current) if current else 0.0
        for worst in sorted((seg for seg in groups if seg not in sensitive), key=lambda seg: -alone[seg]):
            if total <= self.tolerance:
                break
            sensitive.add(worst)
            current = without(sensitive)
            total = error(current) if current else 0.0
        layers = list(groups)

        def name(seg):
            if seg < 0:
                return "(ops before the first compute layer)"
            return model.graph.node[seg].name or f"{model.graph.node[seg].op_type}#{seg}"

        return current, {"auto": {"tolerance": self.tolerance, "layers_tried": len(layers),
                                  "kept_fp32": sorted(name(i) for i in sensitive),
                                  "layer_errors": {name(i): alone[i] for i in layers},
                                  "output_error": total,
                                  "within_tolerance": total <= self.tolerance}}


@register_pass
@dataclass(frozen=True)
class ToFP16(_LowerPrecision):
    """Float32 -> float16 weights and activations; sensitive ops, keep-fp32 ops and the I/O stay float32."""

    name: ClassVar[str] = "to-fp16"
    summary: ClassVar[str] = "float16 weights and activations, sensitive ops kept in float32 with Casts"
    low: ClassVar[str] = "float16"
    low_elem: ClassVar[int] = 10  # onnx.TensorProto.FLOAT16


@register_pass
@dataclass(frozen=True)
class ToBF16(_LowerPrecision):
    """Float32 -> bfloat16 weights and activations; sensitive ops, keep-fp32 ops and the I/O stay float32."""

    name: ClassVar[str] = "to-bf16"
    summary: ClassVar[str] = "bfloat16 weights and activations, sensitive ops kept in float32 with Casts"
    low: ClassVar[str] = "bfloat16"
    low_elem: ClassVar[int] = 16  # onnx.TensorProto.BFLOAT16
