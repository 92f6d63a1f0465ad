"""ONNX Runtime latency with one model per process, as a deployment runs it: dense fp32 vs pruned vs int8.

tools/bench_runtimes.py keeps every row's session alive in one process and interleaves them, which is fair
against machine noise but not against the sessions themselves: each session owns a thread pool whose workers
spin after a call (ONNX Runtime's default), and at batch 1 on 2 cores the idle pools of the other rows halve
the speed of a 2-5 ms model in some rounds (medians twice the minimum), or, with spinning off everywhere,
every small model pays the wake-up of its workers. Here each model is timed in a fresh process that holds
only its own session, at ORT's defaults (spinning on) and with spinning off; processes alternate over
--rounds rounds, so noise still hits every row alike. Cells: median of the per-process medians (min in
brackets) and the ratio against the plain fp32 export at the same spinning setting.

    .venv/bin/python tools/bench_isolated.py --model resnet50 --batch 1 --rounds 5 --iters 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_runtimes import (_quiet_compile, export_plain, int8_step, lossless_pipeline, make_model,  # noqa: E402
                            ort_quantize_static, pruned_pipeline)

_CHILD = """
import sys, time, numpy as np, onnxruntime as ort
path, spin, iters, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.log_severity_level = 3
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
if spin == "off":
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
x = np.load(path + ".input.npy")
feed = {s.get_inputs()[0].name: x}
for _ in range(10):
    s.run(None, feed)
t = []
for _ in range(iters):
    t0 = time.perf_counter(); s.run(None, feed); t.append((time.perf_counter() - t0) * 1e3)
print(np.median(t), np.min(t))
"""


def build(model_name: str, batch: int, samples: int, tmp: str) -> dict[str, str]:
    """Row name -> ONNX file: the plain export, slimc's pruned / int8 / pruned + int8, ORT's quantize_static."""
    import onnx

    model, x = make_model(model_name, batch, SimpleNamespace(resolution=224, seq_len=128))
    x_np = x.numpy()
    plain = export_plain(model, x)
    graphs = {"plain export fp32": plain,
              "slimc pruned 50%": _quiet_compile(model, x, pruned_pipeline()).onnx,
              "slimc int8": _quiet_compile(model, x, f"{lossless_pipeline()},{int8_step(samples)}").onnx,
              "slimc pruned 50% + int8": _quiet_compile(model, x, f"{pruned_pipeline()},{int8_step(samples)}").onnx,
              "ORT quantize_static": ort_quantize_static(plain, x_np, samples)}
    files = {}
    for i, (name, graph) in enumerate(graphs.items()):
        path = os.path.join(tmp, f"{i}.onnx")
        onnx.save(graph, path)
        np.save(path + ".input.npy", x_np)
        files[name] = path
    return files


def time_in_process(path: str, spin: str, iters: int, threads: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, path, spin, str(iters), str(threads)], capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="calibration samples (random: latency only)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = build(args.model, args.batch, args.samples, tmp)
        load0 = os.getloadavg()
        times: dict = {(n, s): [] for n in files for s in ("on", "off")}
        for _ in range(args.rounds):
            for name, path in files.items():
                for spin in ("on", "off"):
                    times[(name, spin)].append(time_in_process(path, spin, args.iters, args.threads))
        load1 = os.getloadavg()
    med = {k: float(np.median([m for m, _ in v])) for k, v in times.items()}
    low = {k: min(m for _, m in v) for k, v in times.items()}
    base = "plain export fp32"
    print(f"### {args.model}, batch {args.batch}, {args.threads} threads, one process per model "
          f"(load {load0[0]:.1f} before, {load1[0]:.1f} after)\n")
    print("| model | spinning on (ORT default): median ms (min) | vs plain | spinning off: median ms (min) | vs plain |")
    print("|---|---:|---:|---:|---:|")
    for name in files:
        cells = [f"{med[(name, s)]:.2f} ({low[(name, s)]:.2f}) | {med[(base, s)] / med[(name, s)]:.2f}x"
                 for s in ("on", "off")]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
