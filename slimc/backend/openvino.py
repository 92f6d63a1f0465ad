"""OpenVINO: the final ONNX converted to an OpenVINO model and compiled for an Intel device (CPU by default).

Options (all optional; `--backend-option key=value` on the command line, kebab- or snake_case names):

    device            OpenVINO device name, default 'CPU'
    hint              performance hint: LATENCY (default) | THROUGHPUT | CUMULATIVE_THROUGHPUT
    threads           inference threads, 0 = OpenVINO's default
    streams           execution streams, 0 = what the hint picks
    precision         inference precision: auto (default) | f32 | f16 | bf16; 'auto' keeps an fp32 graph
                      in f32 (OpenVINO's CPU default may be bf16 on AMX/AVX512-BF16 machines, which is lossy)
    cache-dir         OpenVINO model cache directory (compiled blobs are reused across runs)
    compress-to-fp16  store weights as fp16 in the saved IR (default false: lossless)

Example::

    result = slimc.compile(model, x, backend="openvino", backend_options={"hint": "LATENCY", "threads": 4})
    result.artifact.save("out/")          # out/model.xml, out/model.bin, out/model.json
    art = OpenVinoArtifact.load("out/model.xml")
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from ..errors import SlimcError, first_line
from ..ir.onnx_io import save_onnx
from .base import Artifact, Backend, as_numpy, parse_backend_options, register_backend, sample_arrays

__all__ = ["OpenVinoBackend", "OpenVinoArtifact", "OpenVinoOptions", "KNOWN_OPTIONS"]

@dataclass(frozen=True)
class OpenVinoOptions:
    """What the `openvino` backend accepts (see the module docstring)."""

    device: str = "CPU"
    hint: Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"] = "LATENCY"
    threads: int = 0
    streams: int = 0
    precision: Literal["auto", "f32", "f16", "bf16"] = "auto"
    cache_dir: str | None = None
    compress_to_fp16: bool = False

    def __post_init__(self):
        for key in ("threads", "streams"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)} must be 0 (OpenVINO's choice) or more")
        if not self.device.strip():
            raise ValueError("device must name an OpenVINO device, e.g. CPU")

    @classmethod
    def parse(cls, options: dict) -> "OpenVinoOptions":
        """Check and convert a dict of options (texts or values; kebab- or snake_case names)."""
        return parse_backend_options(OpenVinoBackend, options)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


KNOWN_OPTIONS = tuple(f.name for f in fields(OpenVinoOptions))


def _onnx_float_types(model) -> set[str]:
    """Float element types of the graph's inputs, outputs and initializers ('float32', 'float16', ...)."""
    from onnx import TensorProto

    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
             TensorProto.DOUBLE: "float64"}
    g = model.graph
    types = {names.get(t.data_type) for t in g.initializer}
    types |= {names.get(v.type.tensor_type.elem_type) for v in list(g.input) + list(g.output)}
    types |= {names.get(n.attribute[0].t.data_type) for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == n.attribute[0].TENSOR}
    return {t for t in types if t}


def _ov_float_types(model) -> set[str]:
    """Float element types seen in an ov.Model's parameters and constants."""
    names = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}
    types = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Constant"):
            types.add(names.get(op.get_output_element_type(0).get_type_name()))
    return {t for t in types if t}


def _resolve_precision(requested: str, float_types: set[str], core, device: str) -> tuple[str | None, list[str]]:
    """The INFERENCE_PRECISION_HINT to set (None: the device default) and notes for the report."""
    notes = []
    if requested != "auto":
        return requested, notes
    if "float16" in float_types or "bfloat16" in float_types:
        try:
            caps = [str(c).upper() for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
        except Exception:  # some devices do not report capabilities
            caps = []
        low = "float16" if "float16" in float_types else "bfloat16"
        if low == "float16" and "FP16" in caps:
            notes.append("the graph holds float16 tensors; inference precision hint set to f16")
            return "f16", notes
        if low == "bfloat16" and "BF16" in caps:
            notes.append("the graph holds bfloat16 tensors; inference precision hint set to bf16")
            return "bf16", notes
        # bf16 keeps fewer mantissa bits than fp16, so it would be lossier than the graph itself asks for.
        notes.append(f"the graph holds {low} tensors but {device} has no native {low} compute; it runs in f32 "
                     "(weights upcast when loaded); precision=bf16 trades accuracy for speed where supported")
        return "f32", notes
    # An fp32 graph stays fp32: OpenVINO's CPU plugin would otherwise pick bf16 on AVX512-BF16/AMX machines.
    return "f32", notes


class OpenVinoArtifact(Artifact):
    """An ov.Model compiled for one device, with one infer request ready to run."""

    backend: ClassVar[str] = "openvino"

    def __init__(self, model, options: OpenVinoOptions | None = None, float_types: set[str] | None = None):
        import openvino as ov

        self.options = options or OpenVinoOptions()
        self.model = model
        self.core = ov.Core()
        if self.options.cache_dir:
            Path(self.options.cache_dir).mkdir(parents=True, exist_ok=True)
        types = float_types if float_types is not None else _ov_float_types(model)
        self.precision, self.notes = _resolve_precision(self.options.precision, types, self.core, self.options.device)
        self.config = self._config()
        try:
            self.compiled = self.core.compile_model(model, self.options.device, self.config)
        except Exception as exc:
            raise SlimcError(f"OpenVINO cannot compile this model for {self.options.device}: {first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]

    def _config(self) -> dict:
        import openvino.properties as props
        import openvino.properties.hint as hints

        o = self.options
        config = {hints.performance_mode: getattr(hints.PerformanceMode, o.hint)}
        if o.threads:
            config[props.inference_num_threads] = o.threads
        if o.streams:
            config[props.num_streams] = o.streams
        if self.precision:
            config[hints.inference_precision] = self.precision
        if o.cache_dir:
            config[props.cache_dir] = o.cache_dir
        return config

    @classmethod
    def load(cls, path, **options) -> "OpenVinoArtifact":
        """Read a saved IR (`model.xml` + `.bin`); options default to the ones in its `.json` sidecar."""
        import openvino as ov

        path = Path(path)
        if path.is_dir():
            path = path / "model.xml"
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise SlimcError(f"OpenVINO IR '{path}' (with its .bin) does not exist.")
        from ..ir.files import verify_unit

        saved = verify_unit(path).get("options", {})  # also checks the .xml/.bin match the sidecar
        merged = {k: v for k, v in {**saved, **options}.items() if k in KNOWN_OPTIONS and v is not None}
        model = ov.Core().read_model(str(path))
        artifact = cls(model, OpenVinoOptions.parse(merged))
        artifact.path = str(path)
        return artifact

    def _run(self, inputs: list) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise SlimcError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}.")
        feeds = {i: np.ascontiguousarray(as_numpy(a)) for i, a in enumerate(inputs)}
        result = self.request.infer(feeds, share_inputs=True)
        return [np.array(result[out]) for out in self.compiled.outputs]

    def sample_inputs(self, batch: int = 1) -> list[np.ndarray]:
        return sample_arrays([([d.get_length() if d.is_static else batch for d in p.get_partial_shape()],
                               p.get_element_type().to_dtype()) for p in self.compiled.inputs])

    def signature(self) -> dict:
        def sig(ports):
            return [{"name": p.get_any_name(), "shape": str(p.get_partial_shape()),
                     "type": str(p.get_element_type().to_dtype())} for p in ports]

        return {"inputs": sig(self.compiled.inputs), "outputs": sig(self.compiled.outputs)}

    def property(self, name: str):
        """A property of the compiled model, e.g. 'PERFORMANCE_HINT' or 'INFERENCE_NUM_THREADS'."""
        return self.compiled.get_property(name)

    def describe(self) -> dict:
        import openvino as ov

        applied = {}
        for key in ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT"):
            try:
                value = self.compiled.get_property(key)
                applied[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
            except Exception:  # not every device reports every property
                pass
        return {"backend": self.backend, "openvino": ov.__version__, "options": self.options.as_dict(),
                "compiled_properties": applied, "notes": list(self.notes)}

    def save(self, path, compress_to_fp16: bool | None = None) -> str:
        """`path` (.xml) + `.bin` beside it + `.json` sidecar; a directory gets `model.xml`.

        The files are written as one unit (slimc.ir.files.write_unit): staged in a temporary folder beside
        the target, renamed into place under a lock, the sidecar last with every file's SHA-256.
        """
        import openvino as ov

        from ..ir.files import write_unit
        from .files import artifact_main_path

        path = artifact_main_path(self.backend, path)
        compress = self.options.compress_to_fp16 if compress_to_fp16 is None else bool(compress_to_fp16)
        sidecar = {**self.describe(), **self.signature(), "compress_to_fp16": compress}
        write_unit(path, lambda folder: ov.save_model(self.model, str(folder / path.name), compress_to_fp16=compress),
                   sidecar)
        self.path = str(path)
        return self.path

    def close(self) -> None:
        self.request = None
        self.compiled = None


def convert_onnx(model):
    """An ov.Model from an onnx.ModelProto (through a temp file, external data when over 2 GiB)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="slimc-ov-") as tmp:
        path = save_onnx(model, os.path.join(tmp, "model.onnx"))
        try:
            # convert_model prints progress when '--verbose' is anywhere in sys.argv; keep stdout clean.
            with contextlib.redirect_stdout(io.StringIO()):
                return ov.convert_model(str(path))
        except Exception as exc:
            raise SlimcError(f"OpenVINO cannot convert this ONNX model: {first_line(exc)}") from None


@register_backend
@dataclass(frozen=True)
class OpenVinoBackend(Backend):
    """Options: device, hint, threads, streams, precision, cache-dir, compress-to-fp16 (see OpenVinoOptions)."""

    name: ClassVar[str] = "openvino"
    consumes: ClassVar[str] = "onnx"
    extra: ClassVar[str | None] = "openvino"
    Options: ClassVar[type] = OpenVinoOptions

    def available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("openvino") is not None

    def build(self, program) -> OpenVinoArtifact:
        self.require("openvino")
        return OpenVinoArtifact(convert_onnx(program.ir), self.options, float_types=_onnx_float_types(program.ir))
