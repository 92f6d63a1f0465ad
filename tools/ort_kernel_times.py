"""ONNX Runtime kernel time of bench_runtimes rows (--kernel-times): per-node fastest calls from ORT's profiler.

A row is anything with `.name`, `.onnx` (an (ONNX model, feed) pair, or None for rows not run by ORT) and
a `.kernel_ms` dict that this fills: threads -> {"total": ms, "glue": ms, "nodes": count}.
"""

from __future__ import annotations

import gc
import os

__all__ = ["GLUE_OPS", "kernel_times", "ort_kernel_times", "print_kernel_table"]

# Ops that move or convert data around the compute kernels: with int8, what is left outside the fused kernels.
GLUE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Flatten", "ReduceMean", "Cast",
                      "ReorderInput", "ReorderOutput", "Squeeze", "Unsqueeze", "Concat", "Gather", "Shape"})


def kernel_times(events) -> dict:
    """From an ONNX Runtime profile: each node's fastest kernel time (ms), summed; and the GLUE_OPS part of it.

    On a shared machine a call's wall time mostly measures waiting for a core; a node's fastest call over
    many is its cost when it had the cores. The sum over nodes is one call without contention, minus the
    gaps between nodes (a lower bound of a quiet call, and the same yardstick for every row).
    """
    best, op_of = {}, {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            best[name] = min(best.get(name, float("inf")), e["dur"] / 1e3)
            op_of[name] = e["args"].get("op_name", "")
    total = sum(best.values())
    glue = sum(t for n, t in best.items() if op_of[n] in GLUE_OPS)
    return {"total": round(total, 4), "glue": round(glue, 4), "nodes": len(best)}


def ort_kernel_times(rows: list, thread_counts, calls: int, spinning: bool = True) -> None:
    """Profile every onnxruntime row (sessions with enable_profiling, calls interleaved across rows), one thread
    count at a time; fills row.kernel_ms[threads] with kernel_times()."""
    import json as _json
    import tempfile

    import onnxruntime as ort

    ort_rows = [r for r in rows if r.onnx is not None]
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        for threads in thread_counts:
            live = []
            for i, row in enumerate(ort_rows):
                model, feed = row.onnx
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                so.log_severity_level = 3
                so.enable_profiling = True
                if not spinning:
                    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                so.profile_file_prefix = os.path.join(tmp, f"r{i}_t{threads}")
                sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
                sess.run(None, feed)
                live.append((row, sess, feed))
            for _ in range(calls):
                for row, sess, feed in live:
                    sess.run(None, feed)
            for row, sess, feed in live:
                path = sess.end_profiling()
                with open(path) as f:
                    row.kernel_ms[threads] = kernel_times(_json.load(f))
                os.remove(path)
            del live
            gc.collect()


def print_kernel_table(rows: list, thread_counts) -> None:
    """The --kernel-times table: per onnxruntime row, summed fastest node times at each thread count."""
    prof = [r for r in rows if r.kernel_ms]
    if not prof:
        return
    base = next((r for r in prof if r.name == "plain export"), None)
    head = " | ".join(f"kernel ms, {t} thr | vs plain" for t in thread_counts)
    print("\nONNX Runtime kernel time (sum over nodes of each node's fastest call in the profile):\n")
    print(f"| model | {head} | gain of {thread_counts[-1]} thr over {thread_counts[0]} | glue ops share |")
    print("|---|" + "---:|---:|" * len(thread_counts) + "---:|---:|")
    for r in prof:
        cells = []
        for t in thread_counts:
            k = r.kernel_ms.get(t)
            b = base.kernel_ms.get(t) if base else None
            cells.append(f"{k['total']:.2f} | {b['total'] / k['total']:.2f}x" if k and b else
                         (f"{k['total']:.2f} | -" if k else "- | -"))
        lo, hi = r.kernel_ms.get(thread_counts[0]), r.kernel_ms.get(thread_counts[-1])
        gain = f"{lo['total'] / hi['total']:.2f}x" if lo and hi and len(thread_counts) > 1 else "-"
        glue = f"{100 * hi['glue'] / hi['total']:.1f}%" if hi and hi["total"] else "-"
        print(f"| {r.name} | {' | '.join(cells)} | {gain} | {glue} |")
