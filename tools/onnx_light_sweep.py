"""prune-channels on the real architectures that ship inside the onnx package (generated weights).

Usage: .venv/bin/python tools/onnx_light_sweep.py [--ratio 0.5]

Each `onnx/backend/test/data/light/*.onnx` is lifted to FX (onnx2torch), pruned, lowered and run in
ONNX Runtime; one row per model: MACs and params before/after, seconds, ok or the reason it failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> int:
    import onnx

    import slimc

    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()
    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    print("| model | MMACs before | MMACs after | Mparams before | Mparams after | s | result |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(light, "*.onnx"))):
        name = os.path.basename(path)[len("light_"):-len(".onnx")]
        start = time.perf_counter()
        try:
            r = slimc.compile(path, pipeline=f"prune-channels{{ratio={args.ratio}}},to-onnx,simplify",
                              backend="onnxruntime", fidelity_samples=1)
            r.artifact.run(r.artifact.sample_inputs())
            b, a = r.report["before"], r.report["after"]
            row = [f"{b['macs'] / 1e6:.1f}", f"{a['macs'] / 1e6:.1f}", f"{b['params'] / 1e6:.2f}",
                   f"{a['params'] / 1e6:.2f}", f"{time.perf_counter() - start:.1f}", "ok"]
        except slimc.SlimcError as exc:
            row = ["", "", "", "", f"{time.perf_counter() - start:.1f}", f"error: {str(exc)[:160]}"]
        print(f"| {name} | " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
