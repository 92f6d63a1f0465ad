"""`slimc.search`: Hyperopt over the options of a pipeline, measured on the real backend.

Example::

    result = slimc.search("torchvision:resnet18", "fuse-bn,prune-channels{ratio=uniform(0.1,0.7)},to-onnx,simplify",
                          input_shapes=["1x3x224x224"], latency_budget="0.5x", trials=30, store="runs/r18")
    print(result.best_pipeline)      # also in runs/r18/best.txt
"""

from __future__ import annotations

import functools
import socket
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from ..errors import SlimcError, closest
from ..compile_options import BackendSpec, InputOptions, ReportOptions, with_shorthands
from ..preflight import check_search_run
from .objective import TRIAL_REPORT, Constraints, TrialTask, loss_of, run_trial
from .report import best_record, write_reports
from .space import SearchSpace
from .store import TrialStore, rebuild_trials, utc_now

__all__ = ["search", "SearchResult", "build_space", "ALGORITHMS"]

ALGORITHMS = ("tpe", "rand", "anneal", "atpe", "grid")


@dataclass
class SearchResult:
    """What `search` returns; the same data is in the store folder.

    records:  every trial (dicts as in trials.jsonl), in id order
    best:     the best feasible record, or None
    baseline: the dense model's metrics measured in this run (or read back on --resume)
    """

    store: Path
    space: SearchSpace
    records: list[dict]
    best: dict | None
    baseline: dict | None
    notes: list[str] = field(default_factory=list)

    @property
    def best_pipeline(self) -> str | None:
        return self.best["pipeline"] if self.best else None


def _prune_groups(task: TrialTask, specs) -> Callable:
    """The channel groups `per-group(...)` expands to, found on the model after the passes before it."""

    def provide(spec, index):
        if spec.name != "prune-channels":
            raise SlimcError(f"per-group(...) is available on prune-channels ratios=..., not on '{spec.name}'.")
        from ..compiler import load_program, seeded
        from ..passes.manager import Instrumentation, PassManager
        from ..passes.fx.prune import channel_groups
        from ..passes.pipeline import Pipeline
        from ..passes.registry import get_pass, parse_value
        from .space import is_distribution

        opts = task.inputs
        with seeded(opts.seed):
            program = load_program(task.model, task.example_inputs, input_shapes=opts.shapes,
                                   dynamic_batch=opts.dynamic_batch, leaf_modules=opts.leaf_modules)
        if program.level != "fx":
            raise SlimcError("per-group(...) needs a PyTorch model (channel groups are found on the FX graph).")
        before = []
        for s in specs[:index]:  # searched options before the pruning pass keep their defaults here
            kept = {k: v for k, v in s.options.items() if not is_distribution(v)}
            before.append(get_pass(s.name).from_options(kept))
        if before:
            program, _ = PassManager(Pipeline(before), Instrumentation()).run(program)
        ignore_text = spec.options.get("ignore")
        ignore = parse_value(ignore_text, tuple[str, ...]) if ignore_text and not is_distribution(ignore_text) else ()
        return [(g.name, g.size) for g in channel_groups(program.ir, program.example_inputs, ignore=ignore)
                if g.prunable]

    return provide


def build_space(pipeline: str, task: TrialTask | None = None) -> SearchSpace:
    """The search space of a pipeline text; `task` (the model) is needed for per-group(...)."""
    from ..passes.pipeline import parse_pipeline_text

    provider = _prune_groups(task, parse_pipeline_text(pipeline)) if task is not None else None
    return SearchSpace.parse(pipeline, provider)


def _suggest(algo: str, space: SearchSpace, trials: int):
    if algo == "tpe":
        from hyperopt import tpe

        # Hyperopt's default is 20 random trials first; short searches would be all random.
        return functools.partial(tpe.suggest, n_startup_jobs=max(3, min(20, trials // 3)))
    if algo == "rand":
        from hyperopt import rand

        return rand.suggest
    if algo == "anneal":
        from hyperopt import anneal

        return anneal.suggest
    if algo == "atpe":
        try:
            import lightgbm  # noqa: F401
            from hyperopt import atpe
        except ImportError as exc:
            raise SlimcError(f"--algo atpe needs Hyperopt's ATPE with lightgbm and scikit-learn ({exc}); "
                             "pip install lightgbm scikit-learn, or use --algo tpe.") from None
        return atpe.suggest
    if algo == "grid":
        return _grid_suggest(space)
    raise SlimcError(f"unknown search algorithm '{algo}'{closest(algo, ALGORITHMS)}. Known: {', '.join(ALGORITHMS)}.")


def _vals_key(vals: dict) -> tuple:
    return tuple(sorted((k, round(float(v[0] if isinstance(v, list) else v), 9)) for k, v in vals.items()
                        if not isinstance(v, list) or v))


def _grid_suggest(space: SearchSpace):
    """A Hyperopt algorithm that proposes each grid point once, in order, then stops."""
    points = space.grid()

    def suggest(new_ids, domain, trials, seed):
        taken = {_vals_key(t["misc"]["vals"]) for t in trials._dynamic_trials}
        todo = (p for p in points if _vals_key(p) not in taken)
        docs = []
        for new_id, point in zip(new_ids, todo):
            misc = {"tid": new_id, "cmd": domain.cmd, "workdir": domain.workdir,
                    "idxs": {k: [new_id] for k in point}, "vals": {k: [v] for k, v in point.items()}}
            docs.extend(trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc]))
        return docs

    return suggest


class _Objective:
    """What Hyperopt calls (on this machine or a Spark worker): point in, result with the record out."""

    def __init__(self, task: TrialTask, space: SearchSpace, constraints: Constraints, baseline: dict | None):
        self.task, self.space, self.constraints, self.baseline = task, space, constraints, baseline

    def __call__(self, point: dict) -> dict:
        from hyperopt import STATUS_FAIL, STATUS_OK

        options = {k: (v if isinstance(v, str) else float(v)) for k, v in point.items()}
        record = {"pipeline": None, "options": options, "metrics": None, "violations": [], "loss": None,
                  "host": socket.gethostname()}
        try:
            record["pipeline"] = self.space.pipeline_for(options)
        except SlimcError as exc:
            return {"status": STATUS_FAIL, "slimc": {**record, "status": "failed", "error": str(exc), "seconds": 0.0,
                                                     "finished": utc_now()}}
        out = run_trial(self.task, record["pipeline"])
        record.update(seconds=out["seconds"], error=out["error"], metrics=out["metrics"], finished=utc_now())
        if out["metrics"] is None:
            return {"status": STATUS_FAIL, "slimc": {**record, "status": "failed"}}
        violations, amount = self.constraints.check(out["metrics"], self.baseline)
        loss = loss_of(out["metrics"]["score"], amount, not violations)
        record.update(status="ok" if not violations else "infeasible", violations=violations, loss=loss)
        return {"status": STATUS_OK, "loss": loss, "slimc": record}


class _Recorder:
    """Driver side, after each poll: append newly finished trials to the store and move the bar."""

    def __init__(self, store: TrialStore, records: list[dict], bar):
        self.store, self.records, self.bar = store, records, bar
        self.written = {r["id"] for r in records}
        self._lock = threading.Lock()
        self._show_best()

    def __call__(self, trials, *args):
        from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR

        with self._lock:
            for t in sorted(trials._dynamic_trials, key=lambda t: t["tid"]):
                if t["tid"] in self.written or t["state"] not in (JOB_STATE_DONE, JOB_STATE_ERROR):
                    continue
                rec = dict((t.get("result") or {}).get("slimc") or {})
                if not rec:  # the objective itself could not run (e.g. a Spark task failed)
                    err = t["misc"].get("error")
                    rec = {"status": "failed", "pipeline": None, "options": {}, "metrics": None, "violations": [],
                           "loss": None, "seconds": None, "finished": utc_now(),
                           "error": " ".join(map(str, err)) if err else "the trial ended without a result"}
                vals = {k: v[0] for k, v in t["misc"].get("vals", {}).items() if v}
                rec = {"id": int(t["tid"]), **rec, "vals": vals}
                self.store.append(rec)
                self.records.append(rec)
                self.written.add(rec["id"])
                self.bar.update(1)
            self._show_best()
        return False, args

    def _show_best(self) -> None:
        best = best_record(self.records)
        failed = sum(r["status"] == "failed" for r in self.records)
        text = f"best {best['metrics']['score']:.4g} (#{best['id']})" if best else "best -"
        self.bar.set_postfix_str(text + (f", {failed} failed" if failed else ""))


class _Poller(threading.Thread):
    def __init__(self, recorder: _Recorder, trials, every: float = 1.0):
        super().__init__(daemon=True, name="slimc-search-store")
        self.recorder, self.trials, self.every = recorder, trials, every
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            try:
                self.recorder(self.trials)
            except Exception:  # a racing update of the trial list: the next poll or the final flush stores it
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _baseline(task: TrialTask, space: SearchSpace, store: TrialStore, resume: bool, needed: bool) -> dict | None:
    old = store.load_baseline() if resume else None
    if old is not None:
        return old
    text = space.lossless_text()
    # Relative budgets hang on this one measurement: time it longer than a trial.
    longer = replace(task.report, benchmark_iters=max(3 * task.report.benchmark_iters, 30))
    out = run_trial(replace(task, report=longer), text or [])
    if out["metrics"] is None:
        if needed:
            raise SlimcError(f"the dense model (pipeline '{text}') failed, so a relative budget cannot be "
                             f"resolved: {out['error']}")
        return None
    baseline = {"pipeline": text, **out["metrics"], "measured": utc_now(), "host": socket.gethostname()}
    store.save_baseline(baseline)
    return baseline


def search(model, pipeline: str, example_inputs=None, *, inputs: InputOptions | None = None,
           backend: BackendSpec | str = "onnxruntime", report: ReportOptions | None = None,
           eval: str | Callable | None = None, latency_budget: str | float | None = None,
           macs_budget: str | float | None = None, min_score: float | None = None, trials: int | None = None,
           algo: str = "tpe", store: str | Path | None = None, resume: bool = False, spark: str | None = None,
           parallelism: int | None = None, trial_timeout: float | None = None, seed: int = 0,
           progress: bool = True, input_shapes: Sequence[str] | None = None,
           fidelity_samples: int | None = None, benchmark_iters: int | None = None) -> SearchResult:
    """Search the distributions written in `pipeline` (see slimc.search.space) with Hyperopt.

    inputs, backend, report: the options objects of every trial's compile (slimc.InputOptions,
                     slimc.BackendSpec or a backend name, slimc.ReportOptions: fidelity_samples for the
                     score, benchmark_iters timed runs per trial; default 16 and 20). Shorthands:
                     input_shapes -> inputs; fidelity_samples, benchmark_iters -> report.
    eval:            'file.py:fn' or fn(artifact) -> float (higher is better); default: fidelity to
                     the original model (top-1 agreement for classifiers, cosine otherwise)
    latency_budget:  ms ('12.5') or a ratio of the dense model ('0.5x'); macs_budget likewise ('300M', '0.5x')
    min_score:       trials scoring below are infeasible (kept in the store, marked)
    trials:          trials in all, stored ones included (default 50, or on resume the stored search's count)
    algo:            tpe | rand | anneal | atpe | grid (grid: choice/quniform spaces only)
    store:           run folder (trials.jsonl, best.txt, pareto.png, summary.md); resume=True continues it
    spark:           a Spark master ('local[2]', 'spark://host:7077') to run trials through SparkTrials
    trial_timeout:   seconds; a trial running longer is stopped (it runs in its own process) and recorded
    seed:            Hyperopt's seed; also the trials' model-creation seed unless `inputs` sets one
    """
    inputs = with_shorthands(inputs or InputOptions(seed=seed), shapes=input_shapes)
    report = with_shorthands(report or TRIAL_REPORT, fidelity_samples=fidelity_samples, benchmark_iters=benchmark_iters)
    backend = BackendSpec.coerce(backend)
    stamp = datetime.now(timezone.utc).strftime("search-%Y%m%d-%H%M%S")
    folder = Path(store) if store is not None else Path("runs") / stamp
    check_search_run(model, folder, inputs=[("--eval", eval)] if isinstance(eval, str) else ())
    st = TrialStore(folder)
    if trials is None:
        stored = (st.load_meta() or {}).get("trials") if resume else None
        trials = stored if isinstance(stored, int) and not isinstance(stored, bool) else 50
    if trials < 1:
        raise SlimcError("--trials must be at least 1.")
    _check_numbers(0, trial_timeout=trial_timeout, parallelism=parallelism)
    _check_numbers(-1, benchmark_iters=benchmark_iters, fidelity_samples=fidelity_samples)
    from ..backend.base import get_backend

    if backend.name:
        get_backend(backend.name, **dict(backend.options))  # a bad option fails once now, not in every trial
    if algo not in ALGORITHMS:
        raise SlimcError(f"unknown search algorithm '{algo}'{closest(algo, ALGORITHMS)}. "
                         f"Known: {', '.join(ALGORITHMS)}.")
    constraints = Constraints.parse(latency_budget, macs_budget, min_score)
    task = TrialTask.with_sources(model=model, example_inputs=example_inputs, inputs=inputs, backend=backend,
                                  report=report, eval=eval, timeout=trial_timeout)
    if isinstance(eval, str):
        from .objective import load_callable

        load_callable(eval)  # fail now on a wrong spec, not once per trial
    space = build_space(pipeline, task)
    if not space.dimensions:
        raise SlimcError("the pipeline has nothing to search: write an option as a distribution, e.g. "
                         "prune-channels{ratio=uniform(0.1,0.7)} or criterion=choice(l2,taylor).")
    if algo == "grid":
        trials = min(trials, space.grid_size())
    suggest = _suggest(algo, space, trials)
    meta = {"model": model if isinstance(model, str) else type(model).__name__, "pipeline": pipeline,
            "dimensions": [d.label for d in space.dimensions], "input_shapes": list(inputs.shapes or []),
            "backend": backend.name, "objective": f"eval {eval}" if isinstance(eval, str) else
            ("eval (Python callable)" if eval else "fidelity to the original model"),
            "constraints": constraints.as_dict(), "algo": algo, "trials": trials, "seed": seed,
            "spark": spark, "started": utc_now()}
    records = sorted(st.open(meta, resume), key=lambda r: r["id"])
    try:  # the store is locked from open to here: one search writes it at a time
        baseline = _baseline(task, space, st, resume, constraints.needs_baseline)
        hyper_trials = _make_trials(spark, parallelism)
        rebuild_trials(records, hyper_trials)
        remaining = trials - len(records)
        from tqdm.auto import tqdm

        bar = tqdm(total=max(trials, len(records)), initial=len(records), unit="trial", desc="search",
                   disable=not progress, dynamic_ncols=True)
        recorder = _Recorder(st, records, bar)
        # SparkTrials calls the hook only when a trial succeeds: poll too, so failures are stored at once.
        poller = _Poller(recorder, hyper_trials) if spark else None
        try:
            if remaining > 0:
                _run_fmin(_Objective(task, space, constraints, baseline), space, suggest, trials, hyper_trials,
                          recorder, seed + len(records), spark is not None)
        finally:
            if poller:
                poller.stop()
            recorder(hyper_trials)
            bar.close()
            records.sort(key=lambda r: r["id"])
            notes = write_reports(folder, records, meta, baseline)
        notes = st.notes + notes
    finally:
        st.close()
    return SearchResult(folder, space, records, best_record(records), baseline, notes)


def _check_numbers(above: int, **values) -> None:
    """Counts and times must be greater than `above` (None: not given); checked before any work."""
    for name, value in values.items():
        if value is not None and not value > above:  # `not >` also catches NaN
            flag = "--" + name.replace("_", "-")
            raise SlimcError(f"{flag} {value} must be {'greater than 0' if above == 0 else 'at least 0'}.")


def _make_trials(spark: str | None, parallelism: int | None):
    if spark:
        from .spark import spark_trials

        return spark_trials(spark, parallelism)
    from hyperopt import Trials

    return Trials()


def _run_fmin(objective, space, suggest, max_evals, trials, recorder, seed, distributed) -> None:
    import logging

    import numpy as np
    from hyperopt import fmin
    from hyperopt.exceptions import AllTrialsFailed

    quiet = [logging.getLogger(n) for n in ("hyperopt", "hyperopt.tpe", "hyperopt.fmin", "hyperopt.spark", "py4j")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        fmin(objective, space.hyperopt(), algo=suggest, max_evals=max_evals, trials=trials,
             rstate=np.random.default_rng(seed), show_progressbar=False, early_stop_fn=recorder,
             return_argmin=False, verbose=False,
             max_queue_len=getattr(trials, "parallelism", 1) if distributed else 1)
    except AllTrialsFailed:  # fmin's closing argmin; every failure is already in the store
        pass
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)

