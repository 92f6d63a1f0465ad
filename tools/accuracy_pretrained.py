"""EfficientNet-Lite0 with its real ImageNet-1k weights through slimc: lossless pipeline, fp16, prune 30% + distillation.

No labelled ImageNet images are available here, so every row reports top-1 *agreement* with the dense
torch model on held-out inputs, which are real images the distillation never saw:
  * the 10,000 Fashion-MNIST test images (grey, upscaled to 224x224, replicated to RGB), and
  * random 224x224 crops (scale, flip) of matplotlib's grace_hopper.jpg photograph.
Distillation and bn-recal use unlabelled images from other sources: Fashion-MNIST *training* images and
random crops of scikit-learn's china.jpg and flower.jpg photographs. Latency: ONNX Runtime and OpenVINO,
batch 1, 1 thread, lowest median of interleaved rounds.

The package's `Conv2dStaticSamePadding` (an nn.Conv2d subclass that pads in its own forward) is replaced by
the equivalent `ZeroPad2d` + `nn.Conv2d` before pruning (checked to give the same outputs): slimc's FX
frontend traces through the subclass's forward and its channel analysis then sees functional convs it has no
handler for, so nothing would be pruned.

    make data
    nice -n 19 .venv/bin/python tools/accuracy_pretrained.py            # ~15-30 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import DataMissing, efficientnet_lite0, fashion_mnist  # noqa: E402

import slimc  # noqa: E402
from slimc.finetune import FinetuneConfig, finetune  # noqa: E402

SIZE = 224  # the model's static "same" padding is computed for 224x224 inputs
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
LOSSLESS = "fuse-bn,to-onnx,fold-constants,simplify,fuse,eliminate-dead,dedupe-weights"
RECAL_BATCHES, RECAL_BATCH = 8, 16


# ---- images -------------------------------------------------------------------------------

def _photo(path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255.0


def photo_crops(paths, n: int, seed: int) -> torch.Tensor:
    """n random crops (8-60% of the area, aspect 3/4-4/3, random flip) resized to SIZE, ImageNet-normalised."""
    g = torch.Generator().manual_seed(seed)
    photos = [_photo(p) for p in paths]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        _, h, w = img.shape
        area = float(torch.empty(1).uniform_(0.08, 0.6, generator=g)) * h * w
        aspect = float(torch.empty(1).uniform_(0.75, 1.333, generator=g))
        ch, cw = min(h, int(round((area / aspect) ** 0.5))), min(w, int(round((area * aspect) ** 0.5)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        crop = img[:, top:top + ch, left:left + cw].unsqueeze(0)
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(3)
        out.append(F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", align_corners=False))
    return (torch.cat(out) - MEAN) / STD


def fashion_as_rgb(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(images)).float().div(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    return (x - MEAN) / STD


def _sample_photos():
    import matplotlib
    import sklearn.datasets

    sk = Path(sklearn.datasets.__file__).parent / "images"
    train = [sk / "china.jpg", sk / "flower.jpg"]
    heldout = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    return train, heldout


def unlabelled_train(n: int, seed: int = 0) -> torch.Tensor:
    """Half Fashion-MNIST training images, half crops of two photographs (shuffled together)."""
    (xtr, _), _ = fashion_mnist()
    idx = np.random.default_rng(seed).permutation(len(xtr))[: n - n // 2]
    x = torch.cat([fashion_as_rgb(xtr[idx]), photo_crops(_sample_photos()[0], n // 2, seed)])
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]


def recal_batches():
    """`bn-recal{data=tools/accuracy_pretrained.py:recal_batches}`: unlabelled training images."""
    return list(unlabelled_train(RECAL_BATCHES * RECAL_BATCH, seed=1).split(RECAL_BATCH))


def heldout(n_fashion: int, n_photo: int) -> dict[str, torch.Tensor]:
    _, (xte, _) = fashion_mnist()
    idx = np.random.default_rng(7).permutation(len(xte))[:n_fashion]
    return {"fashion-mnist test": fashion_as_rgb(xte[idx]), "grace_hopper crops": photo_crops(_sample_photos()[1], n_photo, 7)}


# ---- model --------------------------------------------------------------------------------

def standard_convs(model: nn.Module) -> nn.Module:
    """Replace Conv2dStaticSamePadding (pads in its own forward) by ZeroPad2d/Identity + a plain nn.Conv2d."""
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if type(mod).__name__ != "Conv2dStaticSamePadding":
            continue
        conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, tuple(mod.stride), mod.padding,
                         mod.dilation, mod.groups, bias=mod.bias is not None)
        conv.load_state_dict({k: v for k, v in mod.state_dict().items() if not k.startswith("static_padding")})
        pad = mod.static_padding if isinstance(mod.static_padding, nn.ZeroPad2d) else nn.Identity()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Sequential(pad, conv))
    return model.eval()


# ---- measuring ----------------------------------------------------------------------------

@torch.no_grad()
def torch_logits(model, x, batch=50):
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def artifact_logits(artifact, x, batch=50):
    return torch.cat([torch.from_numpy(np.asarray(artifact.run([x[i:i + batch].numpy()])[0], dtype=np.float32))
                      for i in range(0, len(x), batch)])


def agreement(ref: dict, got: dict) -> dict:
    return {k: 100.0 * float((ref[k].argmax(1) == got[k].argmax(1)).float().mean()) for k in ref}


def compiled_artifact(module, pipeline, backend, batch, **opts):
    return slimc.compile(copy.deepcopy(module), torch.randn(batch, 3, SIZE, SIZE), pipeline=pipeline,
                         backend=backend, backend_options=opts, dynamic_batch=batch > 1, fidelity_samples=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--train-images", type=int, default=512, help="unlabelled images for distillation")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heldout-fashion", type=int, default=500)
    ap.add_argument("--heldout-photo", type=int, default=200)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prune-only", action="store_true", help="skip the lossless and fp16 rows (another ratio)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        dense = efficientnet_lite0()
        test = heldout(args.heldout_fashion, args.heldout_photo)
    except DataMissing as exc:
        sys.exit(f"accuracy_pretrained: {exc}")
    ref = {k: torch_logits(dense, x) for k, x in test.items()}
    std = standard_convs(dense)
    std_err = max(float((torch_logits(std, x) - ref[k]).abs().max()) for k, x in test.items())
    print(f"EfficientNet-Lite0: {sum(p.numel() for p in dense.parameters()) / 1e6:.2f} M params; held-out: "
          + ", ".join(f"{len(x)} {k}" for k, x in test.items())
          + f"; standard-conv rewrite max abs err {std_err:.2e}", flush=True)
    rows, latency_models = [], {}

    def row(label, macs, logits, note=""):
        agree = agreement(ref, logits)
        err = max(float((logits[k] - ref[k]).abs().max()) for k in ref)
        rows.append((label, macs, agree, err, note))
        print(f"  {label}: " + ", ".join(f"{k} {v:.1f}%" for k, v in agree.items()) + f", max abs err {err:.3g}",
              flush=True)

    if not args.prune_only:
        lossless = compiled_artifact(dense, LOSSLESS, "onnxruntime", 50, threads=args.threads)
        dense_macs = lossless.report["before"]["macs"] / 50
        row("lossless pipeline, ORT", dense_macs, {k: artifact_logits(lossless.artifact, x) for k, x in test.items()})
        fp16 = compiled_artifact(dense, LOSSLESS + ",to-fp16", "onnxruntime", 50, threads=args.threads)
        row("lossless + to-fp16, ORT", dense_macs, {k: artifact_logits(fp16.artifact, x) for k, x in test.items()})
    latency_models["dense"] = dense

    example = torch.randn(1, 3, SIZE, SIZE)
    prune = f"prune-channels{{ratio={args.ratio}}}"
    recal = f"bn-recal{{data={Path(__file__).resolve()}:recal_batches batches={RECAL_BATCHES}}}"
    cut = slimc.compile(std, example, pipeline=prune, backend=None, fidelity_samples=0)
    macs = cut.report["after"]["macs"]
    row(f"prune {args.ratio:.0%} (l2), no recovery", macs, {k: torch_logits(cut.module, x) for k, x in test.items()})
    recalibrated = slimc.compile(std, example, pipeline=f"{prune},{recal}", backend=None, fidelity_samples=0).module
    row(f"prune {args.ratio:.0%} + bn-recal ({RECAL_BATCHES * RECAL_BATCH} images)", macs,
        {k: torch_logits(recalibrated, x) for k, x in test.items()})
    t1 = time.perf_counter()
    torch.manual_seed(0)
    data = unlabelled_train(args.train_images, seed=0)
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, progress=False)
    batches = list(data.split(args.batch))
    tuned = finetune(copy.deepcopy(cut.module), batches, teacher=copy.deepcopy(std), config=cfg, device="cpu").module
    row(f"prune {args.ratio:.0%} + distillation ({args.train_images} unlabelled images x {args.epochs} epoch)", macs,
        {k: torch_logits(tuned, x) for k, x in test.items()}, f"{time.perf_counter() - t1:.0f} s")
    latency_models[f"pruned {args.ratio:.0%}"] = tuned

    # Latency: batch 1, both runtimes, interleaved rounds, lowest median.
    arts = {}
    for label, module in latency_models.items():
        arts[(label, "onnxruntime")] = compiled_artifact(module, LOSSLESS, "onnxruntime", 1, threads=args.threads).artifact
        arts[(label, "openvino")] = compiled_artifact(module, LOSSLESS, "openvino", 1, threads=args.threads).artifact
    if not args.prune_only:
        arts[("dense fp16", "onnxruntime")] = compiled_artifact(dense, LOSSLESS + ",to-fp16", "onnxruntime", 1,
                                                                threads=args.threads).artifact
    x1 = [example.numpy()]
    best = {k: float("inf") for k in arts}
    for _ in range(args.rounds):
        for k, art in arts.items():
            best[k] = min(best[k], art.benchmark(x1, warmup=2, iters=args.iters).median_ms)

    print(f"\n### EfficientNet-Lite0, ImageNet weights ({time.perf_counter() - t0:.0f} s)\n")
    keys = list(ref)
    print("| variant | MMACs | " + " | ".join(f"top-1 agreement, {k}" for k in keys) + " | max abs logit err | note |")
    print("|---|---:|" + "---:|" * len(keys) + "---:|---|")
    for label, m, agree, err, note in rows:
        print(f"| {label} | {m / 1e6:.0f} | " + " | ".join(f"{agree[k]:.1f}%" for k in keys) + f" | {err:.3g} | {note} |")
    print("\n| model | ONNX Runtime ms | OpenVINO ms |\n|---|---:|---:|")
    for label in list(latency_models) + ([] if args.prune_only else ["dense fp16"]):
        ort, ov = best.get((label, "onnxruntime")), best.get((label, "openvino"))
        print(f"| {label} | {ort:.2f} | " + (f"{ov:.2f} |" if ov else "- |"))


if __name__ == "__main__":
    main()
