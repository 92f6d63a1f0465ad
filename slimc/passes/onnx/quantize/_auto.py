"""`mode=auto`: keep the int8 layers that hurt the outputs most in float until the output error is within tolerance.

Per-layer sensitivity (Polygraphy's `debug precision` / NNCF accuracy-control idea, on the
calibration inputs): each quantizable node (compute layers such as Conv, MatMul, Gemm, and the other ops
ORT quantizes: Add, Concat, Reshape, pooling, ...) is quantized alone, with
its input and output Q/DQ, and the relative L2 change of the model outputs is its sensitivity.
Quantizing alone, rather than leaving one layer out of the all-int8 graph, also finds a tensor
whose range ruins int8 on both sides (producer and consumer each see it). Then, from the all-int8
graph, the most sensitive layers go back to float one by one until the output error is at most
`tolerance`; each step is measured, and `details` lists the layers with the error before and after.
"""

from __future__ import annotations

import numpy as np

__all__ = ["output_error", "auto_guard", "LAYER_OPS", "guard_candidate_ops"]

# The ops whose int8 kernels are the point of quantizing (and whose error dominates).
LAYER_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def guard_candidate_ops() -> set:
    """Every op type ORT's QDQ quantizer puts Q/DQ around, not only the compute layers: a residual Add between
    two float convs still round-trips its inputs and output through uint8 (on EfficientNet-Lite0 the Adds alone
    moved the outputs by 3 %, so with only convs as candidates no tolerance below that could be reached)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry) | LAYER_OPS  # the set quantize_static quantizes


def output_error(refs: list, got: list) -> float:
    """Relative L2 error over every output of every sample: ||got - ref|| / ||ref||."""
    num = den = 0.0
    for ref_outs, got_outs in zip(refs, got):
        for a, b in zip(ref_outs, got_outs):
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a64.shape != b64.shape:
                return float("inf")
            num += float(np.sum((a64 - b64) ** 2))
            den += float(np.sum(a64 ** 2))
    if not np.isfinite(num):
        return float("inf")
    return float(np.sqrt(num / max(den, 1e-30)))


def auto_guard(quantizer, layers: list, base_exclude: tuple, feeds: list, tolerance: float) -> tuple:
    """(the QDQ model, names left in float, details). `layers`: names of the quantizable nodes."""

    def run(model):
        from ....ir.ort_session import session_for  # one session for all feeds (ir.runner makes one per call)

        sess = session_for(model)
        return [sess.run(None, feed) for feed in feeds]

    refs = run(quantizer.model)

    def error_of(exclude=(), only=None):
        model = quantizer.quantize(tuple(base_exclude) + tuple(exclude), only=only)
        return model, output_error(refs, run(model))

    model, err_all = error_of()
    details = {"tolerance": tolerance, "metric": f"relative L2 error of the outputs on {len(feeds)} calibration "
               "call(s)", "error_all_int8": err_all, "layers": len(layers)}
    if err_all <= tolerance:
        return model, [], {**details, "kept_float": [], "output_error": err_all, "within_tolerance": True}
    alone = {name: error_of(only=(name,))[1] for name in layers}
    ranked = sorted(layers, key=lambda n: -alone[n])
    kept, reasons, err = [], [], err_all
    for name in ranked:
        if err <= tolerance:
            break
        kept.append(name)
        model, new_err = error_of(tuple(kept))
        reasons.append({"node": name, "error_int8_alone": alone[name], "error_before": err, "error_after": new_err,
                        "why": f"among the most sensitive layers (int8 alone moves the outputs by {alone[name]:.3g}); "
                               f"with it in float the error goes from {err:.4g} to {new_err:.4g}"})
        err = new_err
    return model, kept, {**details, "kept_float": reasons, "output_error": err, "within_tolerance": err <= tolerance,
                         "sensitivity": dict(sorted(alone.items(), key=lambda kv: -kv[1])[:20])}
