"""The TensorRT backend's options: a frozen dataclass read through slimc's option machinery.

Values come from Python (`backend_options={...}`) or from the command line
(`--backend-option key=value`), so every field accepts its natural Python type and the text
spelling pipeline options use; names are kebab-case (snake_case is accepted too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


__all__ = ["TensorRTOptions", "parse_options", "default_cache_dir", "FLAVORS", "PROFILING_VERBOSITY"]

FLAVORS = ("auto", "full", "rtx")
PROFILING_VERBOSITY = ("none", "layer_names_only", "detailed")


def default_cache_dir() -> Path:
    """$SLIMC_CACHE_DIR, else ~/.cache/slimc/tensorrt."""
    env = os.environ.get("SLIMC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slimc" / "tensorrt"


@dataclass(frozen=True)
class TensorRTOptions:
    """What the `tensorrt` backend accepts.

    flavor:              auto (full TensorRT when importable and a GPU is usable, else TensorRT for RTX) | full | rtx
    dynamic_batch:       (min, opt, max) batch of the optimization profile, from "1:8:32"; the ONNX graph needs a
                         symbolic batch axis (compile with dynamic_batch=True / --dynamic-batch)
    optimization_level:  builder optimization level (TensorRT's default when None)
    workspace_mib:       workspace memory pool limit in MiB (TensorRT's default when None)
    compute_capability:  target GPUs for TensorRT for RTX, e.g. ("8.6", "8.9"), or ("current",); RTX's default
                         (Ampere and later) when empty
    timing_cache:        file loaded before the build (when present) and saved back, updated, after it
    sparse_weights:      allow sparse (2:4) weight tactics
    profiling_verbosity: none | layer_names_only | detailed (what the engine inspector can show)
    cache:               use the engine cache
    cache_dir:           where engines are cached (default: $SLIMC_CACHE_DIR or ~/.cache/slimc/tensorrt)
    """

    flavor: Literal["auto", "full", "rtx"] = "auto"
    dynamic_batch: tuple[int, int, int] | None = field(
        default=None, metadata={"parse": lambda text: _batch_range(text), "type": "MIN:OPT:MAX or none"})
    optimization_level: int | None = None
    workspace_mib: int | None = None
    compute_capability: tuple[str, ...] = ()
    timing_cache: str | None = None
    sparse_weights: bool = False
    profiling_verbosity: Literal["none", "layer_names_only", "detailed"] = "layer_names_only"
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self):
        if self.dynamic_batch is not None:
            object.__setattr__(self, "dynamic_batch", _batch_range(self.dynamic_batch))
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization-level={self.optimization_level} must be between 0 and 5")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ValueError(f"workspace-mib={self.workspace_mib} must be at least 1")
        object.__setattr__(self, "compute_capability", _capabilities(self.compute_capability))
        if self.timing_cache:
            object.__setattr__(self, "timing_cache", str(Path(self.timing_cache).expanduser()))

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def engine_affecting(self) -> dict:
        """The options that change the built engine (the cache key uses these; paths do not)."""
        return {"dynamic_batch": list(self.dynamic_batch) if self.dynamic_batch else None,
                "optimization_level": self.optimization_level, "workspace_mib": self.workspace_mib,
                "compute_capability": list(self.compute_capability), "sparse_weights": self.sparse_weights,
                "profiling_verbosity": self.profiling_verbosity}

    def as_dict(self) -> dict:
        return {**self.engine_affecting(), "flavor": self.flavor, "timing_cache": self.timing_cache,
                "cache": self.cache, "cache_dir": str(self.resolved_cache_dir())}


def _batch_range(value) -> tuple[int, int, int]:
    """(min, opt, max) from "1:8:32", "1,8,32" or a sequence; ValueError unless 1 <= min <= opt <= max."""
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).replace(",", ":").split(":")
    try:
        lo, opt, hi = (int(str(p).strip()) for p in parts)
    except ValueError:
        lo = opt = hi = -1
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"dynamic-batch={value!r} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, "
                         "e.g. dynamic-batch=1:8:32")
    return lo, opt, hi


def _capabilities(value) -> tuple[str, ...]:
    """Compute capabilities normalised to "8.6" (from 8.6, 86, sm86, sm_86) or "current"."""
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        text = str(item).strip().lower().removeprefix("sm_").removeprefix("sm")
        if not text:
            continue
        if text == "current":
            out.append("current")
        elif "." in text:
            out.append(text)
        elif text.isdigit() and len(text) >= 2:  # "86" -> "8.6", "120" -> "12.0"
            out.append(f"{text[:-1]}.{text[-1]}")
        else:
            raise ValueError(f"compute-capability: '{item}' is not a compute capability; "
                             "write e.g. 8.6,8.9 (or sm86,sm89, or current)")
    return tuple(dict.fromkeys(out))


def parse_options(raw: dict | None) -> TensorRTOptions:
    """Check and convert a dict of options; unknown names fail with the nearest known one."""
    from ..base import parse_backend_options
    from .backend import TensorRTBackend

    return parse_backend_options(TensorRTBackend, raw)
