"""Accuracy of prune-channels and group-conv on scikit-learn's digits, before and after a short fine-tune.

Trains a small CNN and a small ResNet on digits (8x8 upsampled to 32x32) on the CPU, then for each
variant (prune 50%, group-conv g=2/g=4 with and without the permutation, prune + group, and
Torch-Pruning's L2 MagnitudePruner at about the MACs of our prune 50%) prints: MACs and ONNX Runtime
latency against the dense model, accuracy right after the pass and after the same distillation
fine-tune (slimc.finetune, teacher = the dense model) for all; also, for information, the accuracy
after only re-estimating BatchNorm statistics (no training; the fine-tune starts from the raw pass output).

    .venv/bin/python tools/accuracy_digits.py                 # both models, ~5 minutes on 2 cores
    .venv/bin/python tools/accuracy_digits.py --models cnn --epochs 4 --ft-epochs 2
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimc
from slimc.finetune import FinetuneConfig, finetune


# ---- data ---------------------------------------------------------------------------------

def digits(size: int = 32, test: int = 397, seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[test:], perm[:test]
    return (x[tr], y[tr]), (x[te], y[te])


class Batches:
    """(inputs, labels) batches, reshuffled each pass (what slimc.finetune iterates per epoch)."""

    def __init__(self, x, y, batch: int = 64, seed: int = 0):
        self.x, self.y, self.batch = x, y, batch
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self):
        perm = torch.randperm(len(self.y), generator=self.gen)
        for i in range(0, len(perm), self.batch):
            idx = perm[i:i + self.batch]
            yield self.x[idx], self.y[idx]


# ---- models -------------------------------------------------------------------------------

def _cbr(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    def __init__(self, w: int = 32):
        super().__init__()
        self.features = nn.Sequential(*_cbr(1, w, 2), *_cbr(w, 2 * w), nn.MaxPool2d(2),  # 16x16, then 8x8
                                      *_cbr(2 * w, 4 * w), *_cbr(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(4 * w, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    def __init__(self, w: int = 32):
        super().__init__()
        self.stem = nn.Sequential(*_cbr(1, w, 2))  # 16x16
        self.layer1 = Block(w)
        self.down2 = nn.Sequential(*_cbr(w, 2 * w, 2))  # 8x8
        self.layer2 = Block(2 * w)
        self.down3 = nn.Sequential(*_cbr(2 * w, 4 * w, 2))  # 4x4
        self.layer3 = Block(4 * w)
        self.fc = nn.Linear(4 * w, 10)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        x = self.layer3(self.down3(self.layer2(self.down2(x))))
        return self.fc(x.mean((2, 3)))


# ---- measuring ----------------------------------------------------------------------------

@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(y), 256))
    return 100.0 * hits / len(y)


@torch.no_grad()
def recalibrated(model, data):
    """A copy of `model` whose BatchNorm statistics are re-estimated on the training data (no gradients):
    cutting weights shrinks activations, and stale running statistics then hide what the weights still know."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
    model.train()
    for xb, _ in data:
        model(xb)
    return model.eval()


def train(model, data, epochs: int, lr: float = 3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(data))
    model.train()
    for _ in range(epochs):
        for xb, yb in data:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def compiled(module, example, pipeline: str):
    """The FX module after `pipeline` and its MACs (slimc's report)."""
    res = slimc.compile(module, example, pipeline=pipeline, backend=None, fidelity_samples=0)
    return res.module, res.report["after"]["macs"], res


def latency_ms(module, example, iters: int, repeats: int = 5) -> float:
    """ORT latency (ms, 1 thread) of `module` lowered with the default pipeline (fuse-bn, simplify):
    the lowest of `repeats` medians, since the machine is shared and noise only ever adds time."""
    res = slimc.compile(copy.deepcopy(module).eval(), example, backend="onnxruntime",
                        backend_options={"threads": 1}, fidelity_samples=0)
    inputs = [example.numpy()]
    return min(res.artifact.benchmark(inputs, warmup=5, iters=iters).median_ms for _ in range(repeats))


def torch_pruning_at(dense, example, target_macs: int, counter_example):
    """Torch-Pruning MagnitudePruner (L2, round_to=8, classifier ignored) at the ratio nearest `target_macs`."""
    import torch_pruning as tp

    def pruned(ratio):
        m = copy.deepcopy(dense).eval()
        pruner = tp.pruner.MagnitudePruner(m, counter_example, importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=[m.fc], round_to=8)
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(m, counter_example)
        return m, macs

    best, lo, hi, ratio = None, 0.05, 0.95, 0.5
    for _ in range(8):
        m, macs = pruned(ratio)
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (m, macs, ratio)
        if abs(macs - target_macs) <= 0.02 * target_macs:
            break
        lo, hi = (ratio, hi) if macs > target_macs else (lo, ratio)
        ratio = (lo + hi) / 2
    return best


VARIANTS = [
    ("prune-channels 50%", "prune-channels{ratio=0.5}"),
    ("prune-channels 30% (~50% MACs)", "prune-channels{ratio=0.3}"),
    ("group-conv g=2", "group-conv{groups=2}"),
    ("group-conv g=2, no permutation", "group-conv{groups=2 permute=false}"),
    ("group-conv g=4", "group-conv{groups=4}"),
    ("group-conv g=4, no permutation", "group-conv{groups=4 permute=false}"),
    ("prune 50% + group-conv g=2", "prune-channels{ratio=0.5},group-conv{groups=2}"),
]


def run_model(name, model, data, test, args):
    import torch_pruning as tp

    t0 = time.perf_counter()
    torch.manual_seed(0)
    dense = train(model, data, args.epochs)
    example = test[0][:1]
    bench = test[0][:args.bench_batch]
    dense_acc = accuracy(dense, *test)
    dense_macs = compiled(dense, example, "fuse-bn")[1]  # fuse-bn: count what the report counts for all
    dense_lat = latency_ms(dense, bench, args.iters)
    rows = [("dense", dense_macs, dense_acc, dense_acc, dense_acc, 1.0, "")]
    cfg = FinetuneConfig(epochs=args.ft_epochs, lr=args.ft_lr, progress=False)
    prune_module = None

    def tune(module):  # the same batches in the same order, and the same seed, for every variant
        torch.manual_seed(1)
        return finetune(module, Batches(data.x, data.y, seed=1), teacher=dense, config=cfg, device="cpu").module
    for label, pipeline in VARIANTS:
        module, macs, res = compiled(dense, example, pipeline)
        if pipeline.startswith("prune-channels{ratio=0.5}") and prune_module is None:
            prune_module = module
        acc0 = accuracy(module, *test)
        acc_bn = accuracy(recalibrated(module, data), *test)
        tuned = tune(module)
        acc1 = accuracy(tuned, *test)
        note = ""
        for rec in res.report["passes"]:
            d = rec.get("details") or {}
            if "layers" in d and d["layers"]:
                kept = [r["kept_fraction"] for r in d["layers"].values()]
                kept0 = [r["kept_fraction_unpermuted"] for r in d["layers"].values()]
                note = f"kept {sum(kept) / len(kept):.3f} (unpermuted {sum(kept0) / len(kept0):.3f})"
        rows.append((label, macs, acc0, acc_bn, acc1, latency_ms(tuned, bench, args.iters) / dense_lat, note))
    target = tp.utils.count_ops_and_params(prune_module, example)[0]
    tpm, tp_macs, ratio = torch_pruning_at(dense, example, target, example)
    tp_macs = compiled(tpm, example, "fuse-bn")[1]
    acc0, acc_bn = accuracy(tpm, *test), accuracy(recalibrated(tpm, data), *test)
    tuned = tune(tpm)
    rows.append((f"Torch-Pruning L2 (ratio {ratio:.2f})", tp_macs, acc0, acc_bn, accuracy(tuned, *test),
                 latency_ms(tuned, bench, args.iters) / dense_lat, ""))
    print(f"\n### {name} (dense trained {args.epochs} epochs; fine-tune {args.ft_epochs} epochs, KD from dense; "
          f"{time.perf_counter() - t0:.0f} s)\n")
    print("| variant | MACs (M) | MACs vs dense | acc after pass | acc after BN recalibration | "
          "acc after fine-tune | ORT latency vs dense | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, macs, a0, abn, a1, lat, note in rows:
        print(f"| {label} | {macs / 1e6:.2f} | {macs / dense_macs:.2f} | {a0:.1f} | {abn:.1f} | {a1:.1f} | {lat:.2f} "
              f"| {note} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,resnet")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--bench-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (xtr, ytr), test = digits()
    data = Batches(xtr, ytr)
    print(f"digits: {len(ytr)} train / {len(test[1])} test images at 32x32; torch threads {args.threads}")
    builders = {"cnn": ("SmallCNN", SmallCNN), "resnet": ("SmallResNet", SmallResNet)}
    for key in args.models.split(","):
        title, cls = builders[key]
        run_model(title, cls(args.width), data, test, args)


if __name__ == "__main__":
    main()
