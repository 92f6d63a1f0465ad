"""What every backend provides: build an `Artifact` from a Program, then run, save, benchmark it.

Backends register by name; heavy runtimes are imported lazily inside `build`, so a missing
one fails only when it is asked for, with the extra to install.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import SlimcError, closest
from ..options import build_options, describe_options

__all__ = [
    "Artifact",
    "CannotRunHere",
    "Backend",
    "BenchmarkResult",
    "register_backend",
    "get_backend",
    "backend_names",
    "backend_options",
    "parse_backend_options",
    "NoOptions",
    "input_list",
    "as_numpy",
    "sample_arrays",
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


def _is_tensor(x) -> bool:
    # Duck-typed so that numpy-only callers never import torch.
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def input_list(inputs) -> list:
    """The model inputs as a list: one array or tensor becomes a one-element list.

    Accepted: a numpy array or torch tensor (a model with one input), or a list/tuple of them
    (one per model input, in the model's input order). Elements stay what they were.
    """
    if isinstance(inputs, np.ndarray) or _is_tensor(inputs):
        return [inputs]
    if isinstance(inputs, (list, tuple)):
        bad = [type(x).__name__ for x in inputs if not (isinstance(x, (np.ndarray, np.generic)) or _is_tensor(x))]
        if not bad:
            return list(inputs)
        what = f"a list holding {', '.join(sorted(set(bad)))}"
    else:
        what = type(inputs).__name__
    raise SlimcError(f"artifact.run takes a numpy array or torch tensor, or a list of them (one per model input, "
                     f"in the model's input order); got {what}.")


def as_numpy(x) -> np.ndarray:
    """A numpy array of an array or a torch tensor (any device; bfloat16 as float32, numpy has none)."""
    if _is_tensor(x):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def sample_arrays(specs, seed: int = 0) -> list[np.ndarray]:
    """Arrays for `benchmark` and smoke runs from (shape, dtype) pairs: standard normal floats, zeros
    otherwise (zeros are a valid index, id or mask for any integer input)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in specs:
        dt = np.dtype(dtype)
        out.append(rng.standard_normal(shape).astype(dt) if np.issubdtype(dt, np.floating) else np.zeros(shape, dt))
    return out


class Artifact:
    """A compiled model: run it, save it, time it. Also a context manager that frees the runtime.

    Example::

        outputs = artifact.run(torch.randn(1, 3, 224, 224))     # or [array], or (ids, mask)
        # -> [np.ndarray, ...], one per model output
    """

    backend: ClassVar[str] = ""
    path: str | None = None

    def run(self, inputs) -> list[np.ndarray]:
        """Run the model once. `inputs`: a numpy array or torch tensor (one-input models), or a list or
        tuple of them, one per model input. Returns a list of numpy arrays, one per model output."""
        return [np.asarray(o) for o in self._run(input_list(inputs))]

    def _run(self, inputs: list) -> list:  # pragma: no cover - abstract
        """Backends run here: `inputs` is a list of numpy arrays or torch tensors (`as_numpy` converts)."""
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
class NoOptions:
    """The options of a backend that takes none."""


@dataclass(frozen=True)
class Backend:
    """A named way to turn the final program into an Artifact.

    consumes: the IR level the backend needs ('onnx' or 'fx'); the pipeline is lowered to it.
    extra:    the pip extra that installs its runtime, named in the error when it is missing.
    Options:  the frozen dataclass of its options; `options` (a dict of texts or Python values, names
              in kebab- or snake_case, or an Options instance) is checked and converted when the
              backend is made, so a bad option fails before any pass runs.
    """

    name: ClassVar[str] = ""
    consumes: ClassVar[str] = "onnx"
    extra: ClassVar[str | None] = None
    Options: ClassVar[type] = NoOptions
    options: Any = None

    def __post_init__(self):
        if not isinstance(self.options, self.Options):
            object.__setattr__(self, "options", parse_backend_options(type(self), self.options))

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


def _backend_class(name: str) -> type[Backend]:
    _load_builtin_backends()
    if name not in _BACKENDS:
        raise SlimcError(
            f"unknown backend '{name}'{closest(name, _BACKENDS)}. Known backends: {', '.join(sorted(_BACKENDS))}."
        )
    return _BACKENDS[name]


def parse_backend_options(cls: type[Backend], raw) -> Any:
    """`raw` (a dict of texts or values, or None) as the backend's Options; SlimcError on any bad option."""
    return build_options(cls.Options, raw or {}, f"backend '{cls.name}'", with_types=True)


def get_backend(name: str, options=None, /, **more) -> Backend:
    """The backend called `name` with its options checked (kebab- or snake_case keys, texts or values).

    `options` is a dict or the backend's Options instance; keyword options are added to it. Every
    option is validated here, so `compile` fails on a bad one before any pass runs::

        get_backend("onnxruntime", threads=2, optimization="basic")
        get_backend("tensorrt", {"dynamic-batch": "1:8:32"})
        get_backend("onnxruntime", OnnxRuntimeOptions(threads=2))
    """
    cls = _backend_class(name)
    if isinstance(options, cls.Options) and not more:
        return cls(options=options)
    if isinstance(options, cls.Options):
        options = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    elif options is not None and not isinstance(options, Mapping):
        raise SlimcError(f"options of backend '{name}' must be a dict of option values or "
                         f"{cls.Options.__name__}, not {type(options).__name__}.")
    return cls(options={**(options or {}), **more})


def backend_options(name: str | None = None) -> dict[str, list[dict]]:
    """{backend: [{name, type, default}]} for listings (`slimc passes`-style), of one backend or all."""
    names = [name] if name else backend_names()
    return {n: describe_options(_backend_class(n).Options) for n in names}
