"""A model over protobuf's 2 GiB limit through every ONNX pass and the ONNX Runtime backend.

Usage: .venv/bin/python tools/check_big_model.py [--gib 2.1]

Builds a stack of Linear layers holding just over --gib GiB of float32 weights (random), compiles
it with `to-onnx,fold-constants,simplify,eliminate-dead,dedupe-weights` on onnxruntime, saves the
artifact (external data) and checks outputs against torch. Needs ~12 GiB of memory; too slow
for the unit suite, so it lives here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> int:
    import numpy as np
    import torch

    import slimc

    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.1)
    args = ap.parse_args()
    width = 8192
    layers = int(args.gib * 2**30 / (width * width * 4)) + 1
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).eval()
    for m in model:
        torch.nn.init.normal_(m.weight, std=width ** -0.5)
    size = sum(p.numel() for p in model.parameters()) * 4 / 2**30
    print(f"{layers} x Linear({width}, {width}): {size:.2f} GiB of weights")
    x = torch.randn(2, width)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = slimc.compile(model, x, pipeline="to-onnx,fold-constants,simplify,eliminate-dead,dedupe-weights",
                               backend="onnxruntime", output_dir=tmp, fidelity_samples=1)
        files = sorted(os.listdir(tmp))
        print(f"compiled in {time.perf_counter() - start:.1f} s; artifact files: {files}")
        for p in result.report["passes"]:
            print(f"  {p['name']:<15} {p['seconds']:7.2f} s  changed={p['changed']}  {p['details']}")
        got = result.artifact.run([x.numpy()])[0]
        want = model(x).detach().numpy()
        err = float(np.abs(got - want).max())
        print(f"max abs error vs torch: {err:.3g}")
        return 0 if err < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
