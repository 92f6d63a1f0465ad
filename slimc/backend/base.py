"""What every backend provides: build an `Artifact` from a Program, then run, save, benchmark it.

Backends register by name; heavy runtimes are imported lazily inside `build`, so a missing
one fails only when it is asked for, with the extra to install.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from ..errors import SlimcError, closest

__all__ = [
    "Artifact",
    "CannotRunHere",
    "Backend",
    "BenchmarkResult",
    "register_backend",
    "get_backend",
    "backend_names",
    "time_calls",
]


class CannotRunHere(SlimcError):
    """The artifact was built (ahead of time) but this machine cannot run it, e.g. no GPU.

    `slimc.compile` still returns and saves the artifact; the report says why it was not checked.
    """


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency of one inference call, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    iters: int

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "mean_ms": self.mean_ms, "iters": self.iters}


def time_calls(fn: Callable[[], Any], warmup: int = 5, iters: int = 30) -> BenchmarkResult:
    """Time `fn` after `warmup` calls; median and p90 of `iters` timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return BenchmarkResult(statistics.median(times), p90, statistics.fmean(times), iters)


class Artifact:
    """A compiled model: run it, save it, time it. Also a context manager that frees the runtime."""

    backend: ClassVar[str] = ""
    path: str | None = None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path) -> str:  # pragma: no cover - abstract
        """Write the artifact (atomically) to `path`; returns the main file's path."""
        raise NotImplementedError

    def benchmark(self, inputs: Sequence[np.ndarray] | None = None, warmup: int = 5, iters: int = 30) -> BenchmarkResult:
        if inputs is None:
            inputs = self.sample_inputs()
        return time_calls(lambda: self.run(inputs), warmup, iters)

    def sample_inputs(self) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """Backend details for the report (options, versions, cache hits)."""
        return {"backend": self.backend}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class Backend:
    """A named way to turn the final program into an Artifact.

    consumes: the IR level the backend needs ('onnx' or 'fx'); the pipeline is lowered to it.
    extra:    the pip extra that installs its runtime, named in the error when it is missing.
    """

    name: ClassVar[str] = ""
    consumes: ClassVar[str] = "onnx"
    extra: ClassVar[str | None] = None
    options: dict = field(default_factory=dict)

    def available(self) -> bool:
        return True

    def build(self, program) -> Artifact:  # pragma: no cover - abstract
        raise NotImplementedError

    def require(self, module: str):
        """Import the runtime, or explain which extra installs it."""
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as exc:
            hint = f"pip install 'slimc[{self.extra}]'" if self.extra else f"pip install {module}"
            raise SlimcError(
                f"backend '{self.name}' needs the Python package '{module}', which is not importable here "
                f"({exc}). Install it with: {hint}"
            ) from None


_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _BACKENDS[cls.name] = cls
    return cls


def _load_builtin_backends() -> None:
    from . import builtin  # noqa: F401


def backend_names() -> list[str]:
    _load_builtin_backends()
    return sorted(_BACKENDS)


def get_backend(name: str, **options) -> Backend:
    """The backend called `name`, configured with `options` (backend-specific keys)."""
    _load_builtin_backends()
    if name not in _BACKENDS:
        raise SlimcError(
            f"unknown backend '{name}'{closest(name, _BACKENDS)}. Known backends: {', '.join(sorted(_BACKENDS))}."
        )
    return _BACKENDS[name](options=dict(options))
