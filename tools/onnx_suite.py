"""Run slimc's lossless ONNX pipeline over ONNX's own backend test suite and check nothing breaks.

Every case of `onnx.backend.test.case.node.collect_testcases(None)` (about 1,900 operator models
with inputs and expected outputs) and the model directories under onnx/backend/test/data
(pytorch-converted, pytorch-operator, simple) is:

1. run with ONNX Runtime as given: when ORT cannot load or run it, or its outputs already differ
   from the expected ones, the case is *skipped* (it says nothing about our passes);
2. turned into a Program and run through the pipeline with slimc's PassManager;
3. run again with ORT: the outputs must still match the expected ones (the case's rtol/atol).

Usage::

    python tools/onnx_suite.py                       # the whole suite, default lossless pipeline
    python tools/onnx_suite.py --filter conv --verbose
    python tools/onnx_suite.py --pipeline fuse --json /tmp/suite.json

Prints the counts (run, passed, failed with reasons grouped, skipped with reasons grouped).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import io
import json
import os
import re
import signal
import sys
import time
import warnings

import numpy as np

DEFAULT_PIPELINE = "fold-constants,simplify,fuse,eliminate-dead,dedupe-weights"
FILE_KINDS = ("pytorch-converted", "pytorch-operator", "simple")


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def _load_tensor_file(path: str):
    import onnx
    from onnx import numpy_helper

    with open(path, "rb") as f:
        data = f.read()
    t = onnx.TensorProto()
    t.ParseFromString(data)
    return numpy_helper.to_array(t)


def iter_cases(kinds: tuple[str, ...], name_filter: str | None):
    """(name, kind, model, [(inputs, outputs)], rtol, atol) for every case, lazily."""
    import onnx
    from onnx.backend.test import loader

    pattern = re.compile(name_filter) if name_filter else None
    if "node" in kinds:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            cases = collect_testcases(None)
        for c in cases:
            if pattern and not pattern.search(c.name):
                continue
            yield c.name, "node", c.model, [([_as_array(a) for a in i], [_as_array(a) for a in o])
                                            for i, o in c.data_sets], c.rtol, c.atol
    for kind in kinds:
        if kind == "node":
            continue
        for c in loader.load_model_tests(kind=kind):
            if pattern and not pattern.search(c.name):
                continue
            model_file = os.path.join(c.model_dir, "model.onnx")
            if not os.path.exists(model_file):
                continue
            try:
                model = onnx.load(model_file)
                sets = []
                for d in sorted(glob.glob(os.path.join(c.model_dir, "test_data_set_*"))):
                    ins = [_load_tensor_file(p) for p in sorted(glob.glob(os.path.join(d, "input_*.pb")),
                                                                key=_index)]
                    outs = [_load_tensor_file(p) for p in sorted(glob.glob(os.path.join(d, "output_*.pb")),
                                                                 key=_index)]
                    sets.append((ins, outs))
            except Exception as exc:  # unreadable data: not our business
                yield c.name, kind, None, str(exc), c.rtol, c.atol
                continue
            yield c.name, kind, model, sets, c.rtol, c.atol


def _as_array(value):
    """Case data as numpy: numpy scalars become 0-d arrays, TensorProtos are decoded; others stay."""
    import onnx
    from onnx import numpy_helper

    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return value


def _index(path: str) -> int:
    return int(re.search(r"_(\d+)\.pb$", path).group(1))


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(model, inputs):
    sess = _session(model)
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"model takes {len(names)} inputs, case gives {len(inputs)}")
    return sess.run(None, dict(zip(names, inputs)))


def _mismatch(expected, got, rtol, atol) -> str | None:
    """None when the outputs match like ONNX's backend runner checks them, else why not."""
    if len(expected) != len(got):
        return f"{len(expected)} outputs expected, got {len(got)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        e, g = np.asarray(e), np.asarray(g)
        if e.shape != g.shape:
            return f"output {i}: shape {e.shape} != {g.shape}"
        if e.dtype != g.dtype and not (e.dtype.kind in "OUS" and g.dtype.kind in "OUS"):
            return f"output {i}: dtype {e.dtype} != {g.dtype}"
        try:
            if e.dtype.kind in "OUSb" or e.dtype.kind in "iu":
                np.testing.assert_array_equal(e, g)
            else:
                np.testing.assert_allclose(e.astype(np.float64) if e.dtype.kind == "f" else e,
                                           g.astype(np.float64) if g.dtype.kind == "f" else g,
                                           rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            return f"output {i}: values differ ({lines[1] if len(lines) > 1 else 'mismatch'})"
    return None


def _program(model, inputs):
    import torch

    from slimc.ir.program import Program

    init = {t.name for t in model.graph.initializer}
    names = tuple(i.name for i in model.graph.input if i.name not in init)
    examples = []
    for a in inputs:
        try:
            examples.append(torch.from_numpy(np.ascontiguousarray(a)))
        except TypeError:  # strings and other dtypes torch cannot hold: numpy is enough here
            examples.append(np.asarray(a))
    outs = tuple(o.name for o in model.graph.output)
    return Program(model, tuple(examples), names, outs, False, original=model, source="onnx-suite")


def check_case(model, data_sets, rtol, atol, pipeline_text: str, rewrites: dict | None = None,
               runs_only: bool = False) -> tuple[str, str]:
    """('passed'|'failed'|'skipped', reason); `rewrites` collects {pass: changed count, rule: matches}."""
    from slimc.passes.manager import Instrumentation, PassManager
    from slimc.passes.pipeline import Pipeline

    if model is None:
        return "skipped", f"case data unreadable: {data_sets}"
    for ins, outs in data_sets:
        if not all(isinstance(a, np.ndarray) for a in list(ins) + list(outs)):
            return "skipped", "non-tensor inputs or outputs (sequences/optionals)"
    try:
        for ins, outs in data_sets:
            why = _mismatch(outs, _run(model, ins), rtol, atol)
            if why:
                return "skipped", "ORT's result on the original differs from the expected one"
    except _Timeout:
        raise
    except Exception as exc:
        return "skipped", "ORT cannot run the original: " + _first_line(exc)
    try:
        program = _program(model, data_sets[0][0] if data_sets else [])
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized, records = PassManager(Pipeline.parse(pipeline_text),
                                             Instrumentation(reproducer_dir=_REPRO_DIR)).run(program)
        if rewrites is not None:
            for r in records:
                if r.changed:
                    rewrites[r.name] = rewrites.get(r.name, 0) + 1
                for rule, n in (r.details.get("matches") or {}).items():
                    rewrites[f"{r.name}:{rule}"] = rewrites.get(f"{r.name}:{rule}", 0) + n
    except _Timeout:
        raise
    except Exception as exc:
        return "failed", "pipeline raised: " + _first_line(exc)
    try:
        for ins, outs in data_sets:
            got = _run(optimized.ir, ins)
            if runs_only:  # lossy pipelines (to-fp16): the graph must run and keep its signature
                why = _mismatch([np.zeros(0)] * len(outs), [np.zeros(0)] * len(got), rtol, atol) or next(
                    (f"output {i}: {np.asarray(e).dtype}{np.shape(e)} became {np.asarray(g).dtype}{np.shape(g)}"
                     for i, (e, g) in enumerate(zip(outs, got))
                     if np.shape(e) != np.shape(g) or np.asarray(e).dtype != np.asarray(g).dtype), None)
            else:
                why = _mismatch(outs, got, rtol, atol)
            if why:
                return "failed", "optimized model: " + why
    except _Timeout:
        raise
    except Exception as exc:
        return "failed", "ORT cannot run the optimized model: " + _first_line(exc)
    return "passed", ""


_REPRO_DIR = None


def _first_line(exc) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


def _group(reason: str) -> str:
    reason = re.sub(r"slimc-repro-[^ ]*", "slimc-repro-*", reason)
    reason = re.sub(r"'[^']*'", "'…'", reason)
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", reason)[:160]


def main(argv=None) -> int:
    global _REPRO_DIR
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", default=DEFAULT_PIPELINE)
    ap.add_argument("--kinds", default="node," + ",".join(FILE_KINDS))
    ap.add_argument("--filter", default=None, help="regex on case names")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=120, help="seconds per case")
    ap.add_argument("--json", default=None, help="write every case's result here")
    ap.add_argument("--verbose", action="store_true", help="print every non-passing case")
    ap.add_argument("--runs-only", action="store_true",
                    help="for lossy pipelines (to-fp16): only check the result runs with the same output types")
    args = ap.parse_args(argv)

    _REPRO_DIR = tempfile.mkdtemp(prefix="slimc-suite-repro-")
    signal.signal(signal.SIGALRM, _on_alarm)
    results = []
    start = time.perf_counter()
    for n, (name, kind, model, sets, rtol, atol) in enumerate(iter_cases(tuple(args.kinds.split(",")), args.filter)):
        if args.limit and n >= args.limit:
            break
        t0 = time.perf_counter()
        signal.alarm(args.timeout)
        try:
            rewrites: dict = {}
            status, reason = check_case(model, sets, rtol, atol, args.pipeline, rewrites, args.runs_only)
        except _Timeout:
            status, reason, rewrites = "failed", f"timed out after {args.timeout}s", {}
        finally:
            signal.alarm(0)
        results.append({"name": name, "kind": kind, "status": status, "reason": reason,
                        "seconds": round(time.perf_counter() - t0, 3), "rewrites": rewrites})
        if args.verbose and status != "passed":
            print(f"{status:7s} {name}: {reason}", flush=True)
        if (n + 1) % 200 == 0:
            print(f"... {n + 1} cases, {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)

    counts = collections.Counter(r["status"] for r in results)
    ran = counts["passed"] + counts["failed"]
    print(f"pipeline: {args.pipeline}")
    print(f"cases: {len(results)}  run: {ran}  passed: {counts['passed']}  failed: {counts['failed']}  "
          f"skipped: {counts['skipped']}  ({time.perf_counter() - start:.0f}s)")
    changed = collections.Counter()
    for r in results:
        if r["status"] == "passed":
            changed.update(r.get("rewrites", {}))
    if changed:
        print("passed cases a pass changed (pass: cases; pass:rule: matches): "
              + ", ".join(f"{k}: {v}" for k, v in sorted(changed.items())))
    for status in ("failed", "skipped"):
        groups = collections.defaultdict(list)
        for r in results:
            if r["status"] == status:
                groups[_group(r["reason"])].append(r["name"])
        if groups:
            print(f"\n{status} by reason:")
            for reason, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                print(f"  {len(names):5d}  {reason}\n         {shown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pipeline": args.pipeline, "counts": dict(counts), "results": results}, f, indent=1)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
