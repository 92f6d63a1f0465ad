"""The `tensorrt` backend: the final ONNX → (cache or parse + build) → a TensorRTArtifact."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from ...errors import SlimcError
from ..base import Backend, register_backend
from .cache import EngineCache, cache_key, graph_hash
from .flavor import TrtFlavor, check_int8_graph, import_flavor, importable_flavors
from .options import TensorRTOptions
from .runner import TensorRTArtifact

__all__ = ["TensorRTBackend", "build_artifact"]


def _target(flavor: TrtFlavor, opts: TensorRTOptions) -> dict:
    """The GPUs an engine is for: RTX's chosen compute capabilities, or the full TensorRT's build GPU."""
    from .gpu_probe import probe_gpu

    if flavor.name == "rtx":
        # 'current' means this machine's GPU, so the key holds the capability it stands for.
        wanted = [(probe_gpu().capability or "current") if cc == "current" else cc for cc in opts.compute_capability]
        return {"compute_capability": sorted(wanted) or "rtx-default"}
    status = probe_gpu()
    return {"gpu": status.name, "compute_capability": status.capability}


def _example_shapes(program) -> list[list[int]]:
    return [[int(d) for d in t.shape] for t in program.example_inputs]


def build_artifact(model, example_shapes: list[list[int]], opts: TensorRTOptions) -> TensorRTArtifact:
    """Engine for an onnx.ModelProto: from the cache when a valid entry exists, else parsed and built."""
    from .build import build_engine
    from .parser_report import parse_network

    started = time.perf_counter()
    flavor = import_flavor(opts.flavor)
    check_int8_graph(flavor, model)  # before the cache and the parser: a clear refusal, not a parser error
    ghash = graph_hash(model)
    key = cache_key(ghash, flavor.as_dict(), opts.engine_affecting(), example_shapes, _target(flavor, opts))
    cache = EngineCache(opts.resolved_cache_dir()) if opts.cache else None
    info = {"options": opts.as_dict(), "example_shapes": example_shapes, "graph_hash": ghash, "cache_key": key}
    entry = cache.get(key) if cache else None
    if entry is not None:
        meta = entry.meta
        info.update(cache_hit=True, cache_entry=str(entry.path), inputs=meta["inputs"], outputs=meta["outputs"],
                    profile=meta.get("profile"), build_seconds=meta.get("build_seconds"),
                    backend_seconds=round(time.perf_counter() - started, 3))
        return TensorRTArtifact(flavor, entry.engine, info)
    parsed = parse_network(flavor, model)  # fails here, naming every rejected node, before any build
    built = build_engine(parsed, opts, example_shapes)
    info.update(cache_hit=False, inputs=built.signature["inputs"], outputs=built.signature["outputs"],
                profile=built.profile, build_seconds=round(built.seconds, 3), notes=built.notes)
    if cache is not None and cache.last_problem:
        info["cache_note"] = cache.last_problem
    if cache is not None:
        try:
            info["cache_entry"] = str(cache.put(key, built.engine, {
                **built.signature, "profile": built.profile, "build_seconds": round(built.seconds, 3),
                **flavor.as_dict(), "options": opts.engine_affecting(), "graph_hash": ghash,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        except SlimcError as exc:  # a finished engine is still good without the cache
            info["cache_note"] = str(exc)
    info["backend_seconds"] = round(time.perf_counter() - started, 3)
    return TensorRTArtifact(flavor, built.engine, info)


@register_backend
@dataclass(frozen=True)
class TensorRTBackend(Backend):
    """NVIDIA TensorRT. Builds on a CPU with TensorRT for RTX; running needs an NVIDIA GPU.

    Options (see TensorRTOptions): flavor=auto|full|rtx, dynamic-batch=MIN:OPT:MAX, optimization-level=N,
    workspace-mib=N, compute-capability=8.6,8.9, timing-cache=FILE, sparse-weights=true,
    profiling-verbosity=detailed, cache=false, cache-dir=DIR.

    Example::

        slimc.compile(model, x, backend="tensorrt", backend_options={"dynamic-batch": "1:8:32"})
    """

    name: ClassVar[str] = "tensorrt"
    consumes: ClassVar[str] = "onnx"
    extra: ClassVar[str | None] = "tensorrt"
    Options: ClassVar[type] = TensorRTOptions

    def available(self) -> bool:
        return bool(importable_flavors())

    def build(self, program) -> TensorRTArtifact:
        return build_artifact(program.ir, _example_shapes(program), self.options)
