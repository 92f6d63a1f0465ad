"""Build a serialized engine from a parsed network: optimization profile, builder config, timing cache."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SlimcError
from ...ir.onnx_io import atomic_write
from .options import TensorRTOptions
from .parser_report import ParsedNetwork, network_signature

__all__ = ["BuildResult", "build_engine", "profile_shapes"]


@dataclass
class BuildResult:
    engine: bytes
    signature: dict
    profile: dict | None
    seconds: float
    notes: list = field(default_factory=list)


def profile_shapes(signature: dict, example_shapes: list[list[int]], batch: tuple[int, int, int] | None) -> dict | None:
    """min/opt/max shape per input with a dynamic axis, or None when every input is static.

    Axis 0 follows `batch` (default: the example's batch for all three); other dynamic axes
    are fixed to the example input's size.
    """
    inputs = signature["inputs"]
    dynamic = any(d < 0 for i in inputs for d in i["shape"])
    if not dynamic:
        if batch is not None:
            raise SlimcError("tensorrt option dynamic_batch needs an ONNX graph with a symbolic batch axis, but every "
                             "input shape is fixed; compile with dynamic_batch=True (--dynamic-batch) or drop the "
                             "option.")
        return None
    if batch is not None and not all(i["shape"] and i["shape"][0] < 0 for i in inputs):
        fixed = [i["name"] for i in inputs if not i["shape"] or i["shape"][0] >= 0]
        raise SlimcError(f"tensorrt option dynamic_batch needs a symbolic axis 0 on every input; "
                         f"{', '.join(fixed)} has a fixed batch. Export with dynamic_batch=True.")
    profile = {}
    for n, spec in enumerate(inputs):
        example = list(example_shapes[n]) if n < len(example_shapes) else []
        shapes = []
        for which in range(3):
            dims = []
            for axis, d in enumerate(spec["shape"]):
                if d >= 0:
                    dims.append(d)
                elif axis == 0 and batch is not None:
                    dims.append(batch[which])
                elif axis < len(example):
                    dims.append(int(example[axis]))
                else:
                    raise SlimcError(f"input '{spec['name']}' has a dynamic axis {axis} and no example size for it; "
                                     "give example inputs (or --input-shape) with that many dimensions.")
            shapes.append(dims)
        profile[spec["name"]] = {"min": shapes[0], "opt": shapes[1], "max": shapes[2]}
    return profile


def _compute_capabilities(trt, config, wanted: tuple[str, ...], flavor: str) -> None:
    if not wanted:
        return
    if flavor != "rtx" or not hasattr(config, "set_compute_capability"):
        raise SlimcError("tensorrt option compute_capability works with TensorRT for RTX only (flavor=rtx); the full "
                         "TensorRT builds for the GPU it runs on.")
    if "current" in wanted:
        from .gpu_probe import probe_gpu

        status = probe_gpu()
        if not status.usable:
            raise SlimcError(f"tensorrt option compute_capability=current asks the GPU of this machine, and none is "
                             f"usable ({status.reason}); name the targets instead, e.g. compute_capability=8.6,8.9.")
    enum = trt.ComputeCapability
    known = {"current": "CURRENT", **{f"{n[2:-1]}.{n[-1]}": n for n in enum.__members__ if n.startswith("SM")}}
    values = []
    for cc in wanted:
        if cc not in known:
            raise SlimcError(f"TensorRT for RTX cannot target compute capability {cc}; it knows "
                             f"{', '.join(sorted(known))}.")
        values.append(getattr(enum, known[cc]))
    config.num_compute_capabilities = len(values)
    for i, v in enumerate(values):
        config.set_compute_capability(v, i)


# Every serialized TensorRT timing cache starts with this tag (TensorRT's serialized-object header).
TIMING_CACHE_MAGIC = b"ptrt"


def _read_timing_cache(path: str) -> bytes:
    """The bytes of an existing timing cache, b"" for a new (absent or empty) one; anything else is refused.

    The file is read and later replaced, so it must really be a timing cache: a model, an engine or any
    other file named by mistake stays untouched and the build stops with an error.
    """
    from ...ir.files import check_replaceable

    check_replaceable(path, "tensorrt option timing_cache")
    p = Path(path)
    if not p.exists():
        return b""
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SlimcError(f"cannot read the timing cache '{path}': {exc.strerror}.") from None
    if data and not data.startswith(TIMING_CACHE_MAGIC):
        raise SlimcError(f"tensorrt option timing_cache='{path}' names a file that is not a TensorRT timing cache "
                         f"(it does not start with {TIMING_CACHE_MAGIC!r}); slimc neither reads nor overwrites it. "
                         "Name a new file or an existing timing cache.")
    return data


def _load_timing_cache(config, path: str | None, notes: list):
    if not path:
        return None
    data = _read_timing_cache(path)
    with warnings.catch_warnings():  # RTX deprecates timing caches (they do not change its engines)
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.create_timing_cache(data)
        if cache is None and data:
            raise SlimcError(f"TensorRT could not read the timing cache '{path}' (another TensorRT version, or "
                             "damaged); it was left unchanged. Delete it or name a new file.")
        if cache is None or not config.set_timing_cache(cache, False):
            notes.append(f"timing cache '{path}' was not accepted by TensorRT; built without it")
            return None
    return cache


def _save_timing_cache(cache, path: str, notes: list) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = bytes(cache.serialize())
    if not data.startswith(TIMING_CACHE_MAGIC):  # never write something a later run would refuse to read
        notes.append(f"timing cache not saved to '{path}': TensorRT serialized it in an unknown format")
        return
    try:
        _read_timing_cache(path)  # still a cache (or absent) now that the build is done
        atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    except SlimcError as exc:
        notes.append(f"timing cache not saved to '{path}': {exc}")


def _config(parsed: ParsedNetwork, opts: TensorRTOptions, profile: dict | None, notes: list):
    trt, builder = parsed.flavor.module, parsed.builder
    config = builder.create_builder_config()
    if profile:
        prof = builder.create_optimization_profile()
        for name, s in profile.items():
            prof.set_shape(name, s["min"], s["opt"], s["max"])
        config.add_optimization_profile(prof)
    if opts.optimization_level is not None:
        config.builder_optimization_level = opts.optimization_level
    if opts.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
    if opts.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, opts.profiling_verbosity.upper())
    _compute_capabilities(trt, config, opts.compute_capability, parsed.flavor.name)
    return config


def build_engine(parsed: ParsedNetwork, opts: TensorRTOptions, example_shapes: list[list[int]]) -> BuildResult:
    """Build and serialize the engine for a parsed network, or fail with TensorRT's last errors."""
    signature = network_signature(parsed.network)
    profile = profile_shapes(signature, example_shapes, opts.dynamic_batch)
    notes: list[str] = []
    config = _config(parsed, opts, profile, notes)
    timing = _load_timing_cache(config, opts.timing_cache, notes)
    started = time.perf_counter()
    try:
        serialized = parsed.builder.build_serialized_network(parsed.network, config)
    except Exception as exc:  # the bindings raise for some invalid configs instead of returning None
        serialized, notes = None, notes + [str(exc).strip()]
    seconds = time.perf_counter() - started
    if serialized is None:
        errors = parsed.logger.errors()[-3:] or notes[-1:] or ["no reason given"]
        raise SlimcError(f"{parsed.flavor.label} parsed the model but could not build an engine: "
                         f"{' | '.join(e.strip() for e in errors)}. Try a lower optimization_level, a larger "
                         "workspace_mib, or check the ONNX model's shapes with `slimc inspect`.")
    if timing is not None:
        _save_timing_cache(timing, opts.timing_cache, notes)
    return BuildResult(bytes(serialized), signature, profile, seconds, notes)
