"""Compile-time overhead of slimc against plain `torch.onnx.export` + onnxsim, in one run.

Usage: .venv/bin/python tools/bench_compile.py [--models resnet50,mobilenet_v2] [--repeats 3]
                                                [--exporter dynamo|torchscript]

--exporter sets both slimc's `to-onnx{exporter=...}` and the baseline's exporter, so the overhead is
slimc's own, not the difference between torch's two exporters.

Prints, per model, the time of each pass of `fuse-bn,to-onnx,simplify`, slimc's own overhead split
into loading (private copy, input check, tracing), statistics and the rest, and slimc's total (no
backend, no fidelity check) beside the baseline. Each number
is the median of --repeats runs, alternating slimc and baseline so machine noise hits both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def baseline(model, x, exporter: str) -> float:
    import onnx
    import onnxsim
    import torch

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "m.onnx")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["input"],
                              output_names=["output"], verbose=False).save(path)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["output"])
        simplified, ok = onnxsim.simplify(onnx.load(path))
        assert ok
    return time.perf_counter() - start


class _Timed:
    """Wraps `module.name` so its calls add up in `seconds` (to split slimc's own overhead)."""

    def __init__(self, module, name: str):
        self.module, self.name, self.seconds = module, name, 0.0
        self.inner = getattr(module, name)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __enter__(self):
        setattr(self.module, self.name, self)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.inner)


def slimc_compile(model, x, exporter: str):
    import slimc
    import slimc.compiler
    import slimc.passes.manager

    with _Timed(slimc.compiler, "load_program") as load, _Timed(slimc.compiler, "stats_of") as stats_in, \
            _Timed(slimc.passes.manager, "stats_of") as stats_pm:
        start = time.perf_counter()
        result = slimc.compile(model, x, pipeline=f"fuse-bn,to-onnx{{exporter={exporter}}},simplify", backend=None, fidelity_samples=0)
        total = time.perf_counter() - start
    split = {"load": load.seconds, "stats": stats_in.seconds + stats_pm.seconds}
    # per run, so the medians below do not mix runs (a sum of medians is not the median of sums)
    split["rest"] = total - sum(r.seconds for r in result.records) - split["load"] - split["stats"]
    return total, result, split


def main() -> int:
    import torch
    import torchvision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    summary = [("model", "baseline s", "slimc s", "overhead")]
    for name in args.models.split(","):
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        base_t, slim_t, per_pass, parts = [], [], {}, {}
        baseline(model, x, args.exporter), slimc_compile(model, x, args.exporter)  # warm-up: first-use imports are not compile time
        for _ in range(args.repeats):
            base_t.append(baseline(model, x, args.exporter))
            t, result, split = slimc_compile(model, x, args.exporter)
            slim_t.append(t)
            for rec in result.records:
                # a pass's own time, without the statistics the pass manager takes after it
                per_pass.setdefault(rec.name, []).append(rec.seconds)
            for key, value in split.items():
                parts.setdefault(key, []).append(value)
        b, s = statistics.median(base_t), statistics.median(slim_t)
        print(f"\n{name}: per pass (median of {args.repeats})")
        for pname, times in per_pass.items():
            print(f"  {pname:<10} {statistics.median(times):7.3f} s")
        load, stats, rest = (statistics.median(parts[k]) for k in ("load", "stats", "rest"))
        print(f"  {'(load)':<10} {load:7.3f} s   private copy of the model, input check, tracing")
        print(f"  {'(stats)':<10} {stats:7.3f} s   statistics before and after each pass")
        print(f"  {'(rest)':<10} {rest:7.3f} s   pipeline parsing, lowering, report")
        summary.append((name, f"{b:.3f}", f"{s:.3f}", f"{(s / b - 1) * 100:+.1f}%"))
    print()
    widths = [max(len(r[i]) for r in summary) for i in range(4)]
    for j, row in enumerate(summary):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
