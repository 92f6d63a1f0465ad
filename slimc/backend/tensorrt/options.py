"""The TensorRT backend's options: parsed once from the backend options dict into a frozen dataclass.

Values come from Python (`backend_options={...}`) or from the command line
(`--backend-option key=value`, where digits arrive as ints and everything else as strings),
so every field accepts its natural Python type and a string spelling of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from ...errors import SlimcError, closest

__all__ = ["TensorRTOptions", "parse_options", "default_cache_dir", "FLAVORS", "PROFILING_VERBOSITY"]

FLAVORS = ("auto", "full", "rtx")
PROFILING_VERBOSITY = ("none", "layer_names_only", "detailed")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


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

    flavor: str = "auto"
    dynamic_batch: tuple[int, int, int] | None = None
    optimization_level: int | None = None
    workspace_mib: int | None = None
    compute_capability: tuple[str, ...] = ()
    timing_cache: str | None = None
    sparse_weights: bool = False
    profiling_verbosity: str = "layer_names_only"
    cache: bool = True
    cache_dir: str | None = None

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


def _bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SlimcError(f"tensorrt option {key}={value!r} is not a boolean; use true or false.")


def _int(key: str, value, low: int = 0, high: int | None = None) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SlimcError(f"tensorrt option {key}={value!r} must be an integer {bound}.")
    return number


def _batch_range(value) -> tuple[int, int, int]:
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).replace(",", ":").split(":")
    try:
        lo, opt, hi = (int(str(p).strip()) for p in parts)
    except ValueError:
        lo = opt = hi = -1
    if not 1 <= lo <= opt <= hi:
        raise SlimcError(f"tensorrt option dynamic_batch={value!r} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, "
                         "e.g. dynamic_batch=1:8:32.")
    return lo, opt, hi


def _capabilities(value) -> tuple[str, ...]:
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
            raise SlimcError(f"tensorrt option compute_capability={value!r}: '{item}' is not a compute capability; "
                             "write e.g. 8.6,8.9 (or sm86,sm89, or current).")
    return tuple(dict.fromkeys(out))


def parse_options(raw: dict) -> TensorRTOptions:
    """Check and convert the backend options dict; unknown keys fail with the nearest known one."""
    known = [f.name for f in fields(TensorRTOptions)]
    aliases = {"builder_optimization_level": "optimization_level", "workspace": "workspace_mib",
               "compute_capabilities": "compute_capability", "sparse": "sparse_weights"}
    values: dict = {}
    for key, value in raw.items():
        name = aliases.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in known:
            raise SlimcError(f"unknown tensorrt option '{key}'{closest(name, known)}; known: {', '.join(known)}.")
        values[name] = value
    out: dict = {}
    if "flavor" in values:
        flavor = str(values["flavor"]).strip().lower()
        if flavor not in FLAVORS:
            raise SlimcError(f"tensorrt option flavor={values['flavor']!r} is not one of {', '.join(FLAVORS)}.")
        out["flavor"] = flavor
    if values.get("dynamic_batch") not in (None, ""):
        out["dynamic_batch"] = _batch_range(values["dynamic_batch"])
    if values.get("optimization_level") is not None:
        out["optimization_level"] = _int("optimization_level", values["optimization_level"], 0, 5)
    if values.get("workspace_mib") is not None:
        out["workspace_mib"] = _int("workspace_mib", values["workspace_mib"], 1)
    if values.get("compute_capability") not in (None, ""):
        out["compute_capability"] = _capabilities(values["compute_capability"])
    if values.get("timing_cache") not in (None, ""):
        out["timing_cache"] = str(Path(str(values["timing_cache"])).expanduser())
    for flag in ("sparse_weights", "cache"):
        if flag in values:
            out[flag] = _bool(flag, values[flag])
    if "profiling_verbosity" in values:
        verbosity = str(values["profiling_verbosity"]).strip().lower()
        if verbosity not in PROFILING_VERBOSITY:
            raise SlimcError(f"tensorrt option profiling_verbosity={values['profiling_verbosity']!r} is not one of "
                             f"{', '.join(PROFILING_VERBOSITY)}.")
        out["profiling_verbosity"] = verbosity
    if values.get("cache_dir") not in (None, ""):
        out["cache_dir"] = str(values["cache_dir"])
    return TensorRTOptions(**out)
