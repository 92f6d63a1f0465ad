"""Labelled accuracy of quantize-int8 on a model trained on real data: Fashion-MNIST test accuracy.

The small ResNet of tools/accuracy_fmnist.py (SmallResNet, width 32), trained on 20,000 Fashion-MNIST
training images (weights cached in --out, shared with tools/search_fmnist.py). Every row is compiled with
`slimc.compile` and run on ONNX Runtime (batch 16, 1 thread), and scored on all 10,000 labelled test images:
accuracy, the change against the float row it quantizes, and top-1 agreement with that float row.
Calibration (`calib=tools/accuracy_int8_fmnist.py:calib_batches`) uses training images only.

Rows: the float pipeline `fuse-bn,to-onnx,simplify,fuse`; the same + quantize-int8 (minmax with and without
bias correction, percentile, mode=auto); and the whole composed pipeline of the int8 issue:
`fuse-bn,prune-channels{ratio=0.5},finetune{...},to-onnx,simplify,fuse` with and without `quantize-int8`.

    make data
    nice -n 19 .venv/bin/python tools/accuracy_int8_fmnist.py        # ~5 minutes on 2 shared cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_fmnist import tensors, train_subset  # noqa: E402
from real_data import DataMissing, fashion_mnist  # noqa: E402
from search_fmnist import BATCH, dense_model  # noqa: E402

import slimc  # noqa: E402

__all__ = ["calib_batches", "finetune_batches", "main"]

CALIB_IMAGES = 512  # the calibration loader's images (the pass takes `samples=` of them)
FINETUNE_IMAGES = 20000
HERE = Path(__file__).resolve()


def calib_batches():
    """quantize-int8's `calib=`: unlabelled training images in batches of BATCH (the compiled batch)."""
    x, _ = train_subset(CALIB_IMAGES)
    return [x[i:i + BATCH].numpy() for i in range(0, len(x), BATCH)]


def finetune_batches():
    """finetune's `data=`: (images, labels) batches of 128 from the training images the dense model saw."""
    x, y = train_subset(FINETUNE_IMAGES)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    return [(x[order[i:i + 128]], y[order[i:i + 128]]) for i in range(0, len(y), 128)]


def predictions(artifact, x) -> np.ndarray:
    """Top-1 classes of a compiled model at batch BATCH (a short last batch is zero-padded)."""
    out = []
    for i in range(0, len(x), BATCH):
        xb = x[i:i + BATCH].numpy()
        n = len(xb)
        if n < BATCH:
            xb = np.concatenate([xb, np.zeros((BATCH - n,) + xb.shape[1:], xb.dtype)])
        logits = artifact.run([xb])[0][:n]
        if not np.isfinite(logits).all():
            raise RuntimeError("non-finite logits")
        out.append(np.argmax(logits, 1))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/slimc-search-fmnist", help="weights cache (shared with search_fmnist)")
    ap.add_argument("--samples", type=int, default=256, help="calibration samples (quantize-int8 samples=)")
    ap.add_argument("--ft-epochs", type=int, default=2, help="fine-tune epochs of the pruned rows")
    ap.add_argument("--skip-pruned", action="store_true", help="only the dense rows")
    args = ap.parse_args()
    try:
        _, (xte, yte) = fashion_mnist()
    except DataMissing as exc:
        sys.exit(f"accuracy_int8_fmnist: {exc}")
    x, y = tensors(xte, yte)
    y = y.numpy()
    torch.set_num_threads(2)
    # the cached dense model of tools/search_fmnist.py (same defaults: 20,000 images, 4 epochs, width 32)
    model, how = dense_model(argparse.Namespace(width=32, train_images=20000, epochs=4, train_seed=0), Path(args.out))
    print(f"dense SmallResNet: {how}", flush=True)

    def q(options: str) -> str:
        return f"quantize-int8{{calib={HERE}:calib_batches samples={args.samples} {options}}}"

    float_pipe = "fuse-bn,to-onnx,simplify,fuse"
    pruned = f"fuse-bn,prune-channels{{ratio=0.5}},finetune{{data={HERE}:finetune_batches epochs={args.ft_epochs}}}," \
             "to-onnx,simplify,fuse"
    rows = [("float32", float_pipe, None),
            ("int8 minmax, no bias correction", f"{float_pipe},{q('bias-correction=false')}", "float32"),
            ("int8 minmax", f"{float_pipe},{q('method=minmax')}", "float32"),
            ("int8 percentile", f"{float_pipe},{q('method=percentile')}", "float32"),
            ("int8 mode=auto tolerance=0.02", f"{float_pipe},{q('mode=auto tolerance=0.02')}", "float32")]
    if not args.skip_pruned:
        rows += [("pruned 50% + fine-tune, float32", pruned, None),
                 ("pruned 50% + fine-tune, int8 minmax", f"{pruned},{q('method=minmax')}",
                  "pruned 50% + fine-tune, float32")]
    preds, table = {}, []
    for name, pipe, ref in rows:
        t0 = time.perf_counter()
        with torch.random.fork_rng():  # the same fine-tune for the float and the int8 pruned rows
            torch.manual_seed(0)
            result = slimc.compile(model, torch.zeros(BATCH, 1, 28, 28), pipeline=pipe,
                                   backend=slimc.BackendSpec("onnxruntime", {"threads": 1}), fidelity_samples=0,
                                   instrumentation=slimc.Instrumentation(progress=False))
        seconds = time.perf_counter() - t0
        p = preds[name] = predictions(result.artifact, x)
        acc = 100.0 * float((p == y).mean())
        cells = {"row": name, "acc": acc, "seconds": seconds, "macs": result.report["after"]["macs"] / BATCH}
        if ref is not None:
            ref_acc = 100.0 * float((preds[ref] == y).mean())
            cells.update(delta=acc - ref_acc, agree=100.0 * float((p == preds[ref]).mean()))
            qd = next((r["details"] for r in result.report["passes"] if r["name"] == "quantize-int8"), {})
            cells["float_layers"] = len(qd.get("float_layers", []))
        table.append(cells)
        print(f"{name}: {acc:.2f}% ({seconds:.0f} s)", flush=True)

    print("\n| pipeline | MMACs/image | test accuracy (10,000) | change vs its float row | top-1 agreement with it "
          "| layers kept float | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c in table:
        delta = f"{c['delta']:+.2f}" if "delta" in c else ""
        agree = f"{c['agree']:.2f}%" if "agree" in c else ""
        print(f"| {c['row']} | {c['macs'] / 1e6:.2f} | {c['acc']:.2f}% | {delta} | {agree} | "
              f"{c.get('float_layers', '')} | {c['seconds']:.0f} |")


if __name__ == "__main__":
    main()
