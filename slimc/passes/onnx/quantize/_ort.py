"""QDQ graphs from onnxruntime.quantization: calibrate once, then place Q/DQ pairs for any exclusion set.

`OrtQuantizer` holds the shape-inferred float graph and the calibration ranges (ONNX Runtime's
calibration cache file), so the auto guard can rebuild the QDQ graph with different nodes left in
float without calibrating again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass

from ....errors import SlimcError, first_line
from ._bias import apply_bias_correction, bias_shifts, weight_errors

__all__ = ["QuantSettings", "OrtQuantizer", "QUANTIZED_OPS", "ENTROPY_BINS"]

ENTROPY_BINS = 512  # histogram bins for method=entropy (see OrtQuantizer._calibrate)

# Ops that mark a graph as already quantized (QDQ or QOperator form).
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QGemm", "MatMulNBits"}


@dataclass(frozen=True)
class QuantSettings:
    method: str  # minmax | entropy | percentile
    per_channel: bool
    symmetric_activations: bool
    reduce_range: bool
    bias_correction: bool = True

    def describe(self) -> dict:
        act = "int8 symmetric" if self.symmetric_activations else "uint8 asymmetric"
        return {"method": self.method, "per_channel": self.per_channel, "activations": act,
                "weights": "int8 symmetric" + (" (7-bit range)" if self.reduce_range else ""),
                "bias_correction": self.bias_correction, "format": "QDQ (QuantizeLinear/DequantizeLinear pairs)"}


class OrtQuantizer:
    """Calibrate with `feeds` (ONNX Runtime's calibrator), then `quantize(exclude)` as often as needed."""

    def __init__(self, model, feeds: list, settings: QuantSettings):
        self.settings = settings
        self._tmp = tempfile.TemporaryDirectory(prefix="slimc-int8-")
        self.model = self._pre_process(model)
        # quantize_static is given a file: from a ModelProto it writes external data it then cannot read back.
        self._path = os.path.join(self._tmp.name, "float_for_quantizer.onnx")
        import onnx

        onnx.save(self.model, self._path)
        self._cache = os.path.join(self._tmp.name, "calibration.json")
        self._calibrate(feeds)
        self.bias_corrected_layers = 0
        self._shifts: dict = {}
        if settings.bias_correction:
            self._shifts = bias_shifts(self.model, weight_errors(self.model, self._quantize(())), feeds)

    def close(self) -> None:
        self._tmp.cleanup()

    def quantize(self, exclude, only=None) -> object:
        """The QDQ graph with the nodes named in `exclude` left in float (or only the nodes in `only` in int8);
        the int8 layers' biases corrected for their weight rounding (see _bias.py) unless bias-correction=false."""
        model = self._quantize(exclude, only=only)
        self.bias_corrected_layers = apply_bias_correction(model, self.model, self._shifts) if self._shifts else 0
        return model

    def _pre_process(self, model):
        """Shape inference (symbolic, then ONNX's) so every activation has a type to quantize.
        ORT's graph optimization step is skipped: node names must stay those the user sees (exclude=)."""
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src = os.path.join(self._tmp.name, "float.onnx")
        dst = os.path.join(self._tmp.name, "float_inferred.onnx")
        onnx.save(model, src)
        try:
            with _quiet():
                quant_pre_process(src, dst, skip_optimization=True)
            return onnx.load(dst)
        except Exception:  # symbolic inference gives up on some graphs; ONNX's own inference is enough then
            try:
                return onnx.shape_inference.infer_shapes(model)
            except Exception:
                return model

    def _calibrate(self, feeds: list) -> None:
        """Run ONNX Runtime's calibrator and write its cache, which every `quantize` call then reads.

        Called directly rather than through quantize_static because quantize_static cannot pass the
        histogram size: ORT's entropy calibrator defaults to 128 histogram bins and 128 quantized bins,
        which leaves its KL search a single candidate (the full range), so method=entropy gave exactly
        the minmax ranges. Entropy gets a 512-bin histogram here, i.e. candidate thresholds from a
        quarter of the range to all of it (TensorRT uses 2048; the KL search is quadratic in the bins)."""
        from pathlib import Path

        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        options = {"entropy": {"num_bins": ENTROPY_BINS, "num_quantized_bins": 128}}.get(self.settings.method, {})
        try:
            with _quiet():
                calibrator = create_calibrator(Path(self._path), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                               augmented_model_path=os.path.join(self._tmp.name, "augmented.onnx"),
                                               calibrate_method=_methods()[self.settings.method], extra_options=options)
                calibrator.collect_data(_Reader(feeds))
                save_tensors_data(calibrator.compute_data(), self._cache)
        except SlimcError:
            raise
        except Exception as exc:
            raise SlimcError(f"ONNX Runtime's calibrator failed on this graph: {type(exc).__name__}: {first_line(exc)}. "
                             "Check the calibration batches, or run `simplify` first.") from None

    def _quantize(self, exclude, only=None):
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        s = self.settings
        method = _methods()[s.method]
        out = os.path.join(self._tmp.name, "int8.onnx")
        extra = {"ActivationSymmetric": s.symmetric_activations, "WeightSymmetric": True}
        try:
            with _quiet():
                quantize_static(self._path, out, None, quant_format=QuantFormat.QDQ, per_channel=s.per_channel,
                                reduce_range=s.reduce_range,
                                activation_type=QuantType.QInt8 if s.symmetric_activations else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                                nodes_to_quantize=list(only) if only else None,
                                calibrate_method=method, extra_options=extra, calibration_cache_path=self._cache)
        except SlimcError:
            raise
        except Exception as exc:
            raise SlimcError(f"ONNX Runtime's quantizer failed on this graph: {type(exc).__name__}: {first_line(exc)}. "
                             "Leave the failing op type out with exclude=OP, or run `simplify` first.") from None
        return onnx.load(out)


def _methods() -> dict:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over prepared feeds (duck-typed: get_next/rewind)."""

    def __init__(self, feeds: list):
        self._feeds = feeds
        self._pos = 0

    def get_next(self):
        if self._pos >= len(self._feeds):
            return None
        self._pos += 1
        return self._feeds[self._pos - 1]

    def rewind(self):
        self._pos = 0

    def __len__(self):
        return len(self._feeds)

    def __iter__(self):
        self.rewind()
        return iter(self.get_next, None)

    def set_range(self, start_index: int, end_index: int):
        self._feeds = self._feeds[start_index:end_index]
        self._pos = 0


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs advice (pre-processing hints) and prints progress; keep the user's console clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
