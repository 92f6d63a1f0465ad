"""One trial: compile a concrete pipeline, measure score, latency, MACs and params, check constraints.

A `TrialTask` is self-contained (model spec, input shapes, backend, eval spec, and the text of any
`file.py` it names), so a Spark worker needs nothing but the slimc package to run a trial.
"""

from __future__ import annotations

import math
import multiprocessing
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import SlimcError
from ..compile_options import BackendSpec, InputOptions, ReportOptions

__all__ = ["TrialTask", "Budget", "Constraints", "run_trial", "measure", "load_callable", "score_of", "loss_of"]


# A trial measures latency itself (benchmark_iters) and scores fidelity on more samples than a compile.
TRIAL_REPORT = ReportOptions(fidelity_samples=16, benchmark_iters=20)


@dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs to compile and measure one pipeline: the compile's options objects,
    the scoring function and the limits.

    model:    a model spec ('torchvision:resnet50', 'file.py:factory', 'model.onnx') or an nn.Module
    inputs, backend, report: as for slimc.compile (report.benchmark_iters: timed runs per trial)
    eval:     'file.py:fn' or a callable fn(artifact) -> float; None scores fidelity to the original
    sources:  {path: text} of the .py files the specs name, rebuilt on workers that lack them
    """

    model: Any
    example_inputs: Any = None
    inputs: InputOptions = InputOptions()
    backend: BackendSpec = BackendSpec()
    report: ReportOptions = TRIAL_REPORT
    eval: Any = None
    timeout: float | None = None
    sources: dict = field(default_factory=dict)

    @classmethod
    def with_sources(cls, **kwargs) -> "TrialTask":
        """A task carrying the text of the .py files named by its model and eval specs."""
        task = cls(**kwargs)
        sources = {}
        for spec in (task.model, task.eval):
            path = _py_path(spec)
            if path and Path(path).is_file():
                sources[path] = Path(path).read_text()
        return replace(task, sources=sources)


def _py_path(spec) -> str | None:
    if isinstance(spec, str) and ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        return spec.rsplit(":", 1)[0]
    return None


def _localized(task: TrialTask) -> TrialTask:
    """On a worker without the user's files, write them from `sources` and point the specs there."""
    missing = {p: t for p, t in task.sources.items() if not Path(p).is_file()}
    if not missing:
        return task
    folder = Path(tempfile.mkdtemp(prefix="slimc-trial-"))
    moved = {}
    for i, (path, text) in enumerate(missing.items()):
        target = folder / f"{i}_{Path(path).name}"
        target.write_text(text)
        moved[path] = str(target)

    def fix(spec):
        path = _py_path(spec)
        return f"{moved[path]}:{spec.rsplit(':', 1)[1]}" if path in moved else spec

    return replace(task, model=fix(task.model), eval=fix(task.eval))


def load_callable(spec: str) -> Callable:
    """'path/to/file.py:fn' -> the function (the eval function of a search; imported once per process)."""
    from ..frontend.specs import load_callable as load_user_callable

    if _py_path(spec) is None:
        raise SlimcError(f"--eval '{spec}' is not file.py:function (e.g. evalfile.py:evaluate).")
    return load_user_callable(spec, "function", cached=True)


def score_of(fidelity: dict | None) -> tuple[float, str]:
    """Default score: top-1 agreement with the original for classifiers, cosine otherwise."""
    if not fidelity or "error" in fidelity:
        raise SlimcError(f"fidelity could not be measured: {(fidelity or {}).get('error', 'no samples')}")
    if fidelity.get("ok") is False:
        raise SlimcError(f"fidelity check failed: {fidelity['failure']}")
    if fidelity.get("top1_agreement") is not None:
        return float(fidelity["top1_agreement"]), "top1_agreement"
    return float(fidelity["cosine"]), "cosine"


def measure(task: TrialTask, pipeline: str) -> dict:
    """Compile `pipeline` and measure it; raises on any failure."""
    from ..compiler import compile

    task = _localized(task)
    t0 = time.perf_counter()
    # The trial times the artifact itself, after scoring it (a benchmark inside compile would come first).
    result = compile(task.model, task.example_inputs, pipeline=pipeline, backend=task.backend, inputs=task.inputs,
                     report=replace(task.report, benchmark_iters=0))
    compile_s = time.perf_counter() - t0
    report, artifact = result.report, result.artifact
    try:
        if task.eval is not None:
            fn = load_callable(task.eval) if isinstance(task.eval, str) else task.eval
            score, kind = float(fn(artifact)), "eval"
        else:
            score, kind = score_of(report["fidelity"])
        if not math.isfinite(score):
            raise SlimcError(f"the score is {score}")
        iters = task.report.benchmark_iters
        bench = artifact.benchmark(iters=iters) if iters > 0 else None
    finally:
        artifact.close()
    fid = report.get("fidelity") or {}
    return {
        "score": score,
        "score_kind": kind,
        "latency_ms": bench.median_ms if bench else None,
        "latency_p90_ms": bench.p90_ms if bench else None,
        "macs": report["after"]["macs"],
        "params": report["after"]["params"],
        "macs_before": report["before"]["macs"],
        "params_before": report["before"]["params"],
        "cosine": fid.get("cosine"),
        "top1_agreement": fid.get("top1_agreement"),
        "compile_seconds": round(compile_s, 3),
    }


def run_trial(task: TrialTask, pipeline: str) -> dict:
    """Measure one pipeline; never raises (except KeyboardInterrupt): failures come back as data.

    Returns {"metrics": {...} or None, "error": None or text, "seconds": float}.
    """
    t0 = time.perf_counter()
    try:
        metrics = _measure_with_timeout(task, pipeline) if task.timeout else measure(task, pipeline)
        error = None
    except KeyboardInterrupt:
        raise
    except TrialTimeout as exc:
        metrics, error = None, str(exc)
    except SlimcError as exc:
        metrics, error = None, str(exc)
    except Exception as exc:  # a trial that fails is recorded, and the search goes on
        last = traceback.extract_tb(exc.__traceback__)[-1:] or []
        where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        metrics, error = None, f"{type(exc).__name__}: {exc}{where}"
    return {"metrics": metrics, "error": error, "seconds": round(time.perf_counter() - t0, 3)}


class TrialTimeout(Exception):
    pass


def _child(task, pipeline, conn) -> None:
    try:
        conn.send(("ok", measure(task, pipeline)))
    except BaseException as exc:  # noqa: BLE001 - report everything to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}" if not isinstance(exc, SlimcError) else str(exc)))
    finally:
        conn.close()


def _measure_with_timeout(task: TrialTask, pipeline: str) -> dict:
    """Run the trial in a fresh process that is killed after `task.timeout` seconds."""
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools can deadlock
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(task, pipeline, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(task.timeout):
            raise TrialTimeout(f"timeout: the trial ran past --trial-timeout {task.timeout:g} s and was stopped")
        try:
            status, payload = parent.recv()
        except EOFError:
            raise RuntimeError(f"the trial process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent.close()
    if status != "ok":
        raise SlimcError(payload)
    return payload


# ---- constraints -----------------------------------------------------------------------------

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


@dataclass(frozen=True)
class Budget:
    """An upper bound, absolute or relative to the dense model ('0.5x')."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str | float | None, what: str) -> "Budget | None":
        if text is None or text == "":
            return None
        if isinstance(text, (int, float)):
            return cls(float(text))
        t = str(text).strip().lower()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x|ms|[kmgt])?", t)
        if not m:
            raise SlimcError(f"{what} '{text}' is neither a ratio of the dense model (0.5x) nor an absolute value "
                             f"({'12.5 or 12.5ms' if what == 'latency budget' else '300M, 1.2G or 300000000'}).")
        num, unit = float(m.group(1)), m.group(2)
        if unit == "x":
            return cls(num, relative=True)
        if unit in _SUFFIX and what != "latency budget":
            num *= _SUFFIX[unit]
        return cls(num)

    def limit(self, dense: float | None) -> float | None:
        if not self.relative:
            return self.value
        return None if dense is None else self.value * dense

    def describe(self) -> str:
        return f"{self.value:g}x dense" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class Constraints:
    latency: Budget | None = None
    macs: Budget | None = None
    min_score: float | None = None

    @classmethod
    def parse(cls, latency_budget=None, macs_budget=None, min_score=None) -> "Constraints":
        return cls(Budget.parse(latency_budget, "latency budget"), Budget.parse(macs_budget, "MACs budget"),
                   None if min_score is None else float(min_score))

    @property
    def needs_baseline(self) -> bool:
        return any(b is not None and b.relative for b in (self.latency, self.macs))

    def check(self, metrics: dict, baseline: dict | None) -> tuple[list[str], float]:
        """(violations as readable texts, total relative violation); empty list = feasible."""
        out, amount = [], 0.0
        base = baseline or {}
        checks = [("latency_ms", self.latency, base.get("latency_ms"), "latency {got:.3g} ms > budget {lim:.3g} ms"),
                  ("macs", self.macs, base.get("macs"), "MACs {got:.4g} > budget {lim:.4g}")]
        for key, budget, dense, message in checks:
            if budget is None:
                continue
            lim, got = budget.limit(dense), metrics.get(key)
            if lim is None or got is None:
                out.append(f"{key} cannot be checked (no {'dense ' if lim is None else ''}measurement)")
                amount += 1.0
            elif got > lim:
                out.append(message.format(got=got, lim=lim))
                amount += (got - lim) / max(lim, 1e-12)
        if self.min_score is not None and metrics.get("score", -math.inf) < self.min_score:
            out.append(f"score {metrics['score']:.4g} < min-score {self.min_score:g}")
            amount += (self.min_score - metrics["score"]) / max(abs(self.min_score), 1e-12)
        return out, amount

    def as_dict(self) -> dict:
        return {"latency_budget": self.latency.describe() if self.latency else None,
                "macs_budget": self.macs.describe() if self.macs else None, "min_score": self.min_score}


def loss_of(score: float, violation: float, feasible: bool) -> float:
    """Hyperopt minimises: any feasible trial ranks before any infeasible one; less violation is better."""
    return -score if feasible else 1e3 * (1.0 + violation) - score * 1e-3

