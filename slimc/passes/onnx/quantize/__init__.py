"""`quantize-int8`: post-training INT8 quantization to an explicit QDQ graph, with an accuracy guard.

The graph gets QuantizeLinear/DequantizeLinear pairs around its compute ops (int8 weights, per
output channel by default; uint8 activations, or int8 symmetric with `symmetric-activations=true`
for TensorRT). ONNX Runtime, OpenVINO and TensorRT all read this form and fuse each
DQ -> op -> Q group into an int8 kernel. Calibration (ranges of the activations) and Q/DQ placement
come from onnxruntime.quantization (`quantize_static`, QDQ format); the README says why that and not NNCF.

Options:
  calib=FILE.py:LOADER   a function returning an iterable of input batches (dicts name->array, or
                         tuples of arrays in input order; numpy or torch). calib=random: random
                         inputs, marked "calibration": "random" in the report (ranges unrelated to
                         real data: for trying a pipeline only). Required.
  samples=N              calibration samples drawn from the loader (default 64)
  method=                minmax | entropy | percentile (ORT's calibrators)
  per-channel=           one weight scale per output channel (default true)
  exclude=               op types or node names left in float
  mode=all|auto          auto: keep the layers that move the outputs most in float until the relative
                         L2 output error on the calibration inputs is <= tolerance (see _auto.py)
  symmetric-activations= int8 symmetric activations (TensorRT's form) instead of uint8 asymmetric
  bias-correction=       subtract each int8 layer's mean output shift from weight rounding, measured on the
                         calibration inputs (default true; see _bias.py)
  reduce-range=          7-bit weights (for x86 CPUs without VNNI, where u8*s8 sums can saturate)
  enabled=               false makes the pass do nothing: lets `slimc search` switch it with choice(true,false)

Example::

    slimc compile torchvision:resnet50 --pipeline 'fuse-bn,to-onnx,simplify,fuse,quantize-int8{calib=data.py:batches}'
    slimc opt model.onnx --pipeline 'quantize-int8{calib=data.py:batches mode=auto tolerance=0.02}'
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

from ....errors import SlimcError, closest
from ...registry import Pass, PassResult, register_pass
from ._auto import LAYER_OPS, auto_guard, guard_candidate_ops
from ._calib import load_calibration
from ._ort import QUANTIZED_OPS, OrtQuantizer, QuantSettings
from ._pools import spatial_means_to_global_pools

__all__ = ["QuantizeInt8", "int8_layers"]


def int8_layers(model) -> dict:
    """{'int8': [names], 'float': [names]} of the compute layers: int8 when a DequantizeLinear feeds its weight."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {"int8": [], "float": []}
    for n in model.graph.node:
        if n.op_type not in LAYER_OPS:
            continue
        w = producer.get(n.input[1]) if len(n.input) > 1 else None
        out["int8" if w is not None and w.op_type == "DequantizeLinear" else "float"].append(n.name)
    return out


@register_pass
@dataclass(frozen=True)
class QuantizeInt8(Pass):
    """Post-training int8 (QDQ) with calibration on real inputs; mode=auto keeps sensitive layers in float."""

    name: ClassVar[str] = "quantize-int8"
    level: ClassVar[str] = "onnx"
    lossless: ClassVar[bool] = False
    summary: ClassVar[str] = "post-training int8 QDQ graph from calibration data (mode=auto keeps sensitive layers float)"

    calib: str | None = None
    samples: int = 64
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    mode: Literal["all", "auto"] = "all"
    tolerance: float = 0.05
    auto_samples: int = 8
    symmetric_activations: bool = False
    reduce_range: bool = False
    bias_correction: bool = True
    enabled: bool = True

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.auto_samples < 1:
            raise ValueError("auto-samples must be at least 1")
        if self.tolerance <= 0:
            raise ValueError("tolerance must be > 0")

    def apply(self, program) -> PassResult:
        if not self.enabled:
            return PassResult(program, False, {"skipped": "enabled=false"})
        model = _named(program.ir)
        done = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
        if done:
            raise SlimcError(f"the model is already quantized (it has {', '.join(done)} nodes); quantize-int8 works on "
                             "a float graph. Give the float model, or drop quantize-int8 from the pipeline.")
        exclude = self._excluded_names(model)
        pools = spatial_means_to_global_pools(model)  # so they quantize too (QLinearGlobalAveragePool in ORT)
        calib = load_calibration(self.calib, model, self.samples,
                                 lambda seed: program.random_inputs(seed=7000 + seed))
        if calib.source == "random":
            warnings.warn("quantize-int8{calib=random}: int8 ranges come from random inputs, not real data; accuracy "
                          "on real inputs is unknown. Give calib=FILE.py:LOADER for a model you deploy.", stacklevel=2)
        settings = QuantSettings(self.method, self.per_channel, self.symmetric_activations, self.reduce_range,
                                 self.bias_correction)
        quantizer = OrtQuantizer(model, calib.feeds, settings)
        try:
            details = {"calibration": calib.source, "calib": self.calib, "samples": calib.samples,
                       **settings.describe(), "mode": self.mode, **({"global_pools": pools} if pools else {})}
            if self.mode == "auto":
                candidates = [n.name for n in quantizer.model.graph.node
                              if n.op_type in guard_candidate_ops() and n.name not in exclude]
                out, kept, auto = auto_guard(quantizer, candidates, tuple(exclude), calib.feeds[:self.auto_samples],
                                             self.tolerance)
                details["auto"] = auto
            else:
                out = quantizer.quantize(tuple(exclude))
            details["bias_corrected_layers"] = quantizer.bias_corrected_layers
        finally:
            quantizer.close()
        layers = int8_layers(out)
        if not layers["int8"] and not any(n.op_type == "QuantizeLinear" for n in out.graph.node):
            return PassResult(program, False, {**details, "note": "nothing was quantized (no quantizable op left)"})
        details.update(int8_layers=len(layers["int8"]), float_layers=layers["float"],
                       excluded=sorted(exclude), qdq_pairs=sum(n.op_type == "QuantizeLinear" for n in out.graph.node))
        return PassResult(program.with_ir(out), True, details)

    def _excluded_names(self, model) -> set[str]:
        ops = {n.op_type for n in model.graph.node}
        names = {n.name for n in model.graph.node}
        out = set()
        for item in self.exclude:
            if item in ops:
                out |= {n.name for n in model.graph.node if n.op_type == item}
            elif item in names:
                out.add(item)
            else:
                raise SlimcError(f"quantize-int8{{exclude=...}}: '{item}' is neither an op type nor a node name in this "
                                 f"graph{closest(item, ops | names)}. `slimc inspect MODEL` lists the nodes.")
        return out


def _named(model):
    """A copy of the model whose every node has a unique name (the quantizer addresses nodes by name)."""
    import copy

    model = copy.deepcopy(model)
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model
