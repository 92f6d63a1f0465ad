"""Accuracy of prune-channels and group-conv on Fashion-MNIST, after BN recalibration and after a short fine-tune.

Trains a small ResNet (tools/accuracy_digits.py's SmallResNet, 28x28 inputs) on a subset of the
Fashion-MNIST training split on the CPU, then for each variant — prune-channels 30/50/70% with l2,
taylor and global l2, group-conv g=2/4, prune + group-conv, and Torch-Pruning's L2 pruner at the MACs
of our l2 rows — reports: MACs, accuracy on the full 10,000-image test split right after the pass,
after `bn-recal` alone (no training), and after the same distillation fine-tune for every variant
(slimc.finetune, teacher = the dense model, starting from the recalibrated model), and ONNX Runtime
latency. Pruning goes through `slimc.compile` (`pipeline` text, as users call it); `bn-recal` runs
inside the same pipeline on `recal_batches` below. Rows are appended to OUT/rows.jsonl as they finish,
so an interrupted run still leaves its numbers; `--table-only` prints the table from that file.

    make data                                                   # installs Fashion-MNIST (apt)
    nice -n 19 .venv/bin/python tools/accuracy_fmnist.py        # 2 seeds, ~30-60 min on 2 shared cores
    .venv/bin/python tools/accuracy_fmnist.py --table-only
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_digits import Batches, SmallResNet, accuracy, torch_pruning_at, train  # noqa: E402
from real_data import DataMissing, fashion_mnist  # noqa: E402

import slimc  # noqa: E402
from slimc.finetune import FinetuneConfig, finetune  # noqa: E402

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics
SUBSET_SEED = 0
RECAL_BATCHES, RECAL_BATCH = 20, 128

# (label, pipeline, Torch-Pruning baseline at the same MACs?)
VARIANTS = [
    ("prune-channels 30% l2", "prune-channels{ratio=0.3 criterion=l2}", True),
    ("group-conv g=2", "group-conv{groups=2}", False),
    ("prune-channels 50% l2", "prune-channels{ratio=0.5 criterion=l2}", True),
    ("prune-channels 30% taylor", "prune-channels{ratio=0.3 criterion=taylor}", False),
    ("prune-channels 30% global", "prune-channels{ratio=0.3 criterion=l2 scope=global}", False),
    ("prune-channels 50% taylor", "prune-channels{ratio=0.5 criterion=taylor}", False),
    ("prune-channels 50% global", "prune-channels{ratio=0.5 criterion=l2 scope=global}", False),
    ("group-conv g=4", "group-conv{groups=4}", False),
    ("prune 30% + group-conv g=2", "prune-channels{ratio=0.3 criterion=l2},group-conv{groups=2}", False),
    ("prune-channels 70% l2", "prune-channels{ratio=0.7 criterion=l2}", True),
    ("prune-channels 70% taylor", "prune-channels{ratio=0.7 criterion=taylor}", False),
    ("prune-channels 70% global", "prune-channels{ratio=0.7 criterion=l2 scope=global}", False),
]


def tensors(images: np.ndarray, labels: np.ndarray):
    x = torch.from_numpy(np.array(images)).float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    return x, torch.from_numpy(np.array(labels))


def train_subset(n: int):
    """The first `n` images of a fixed permutation of the training split (the same for every seed)."""
    (xtr, ytr), _ = fashion_mnist()
    idx = np.random.default_rng(SUBSET_SEED).permutation(len(ytr))[:n]
    return tensors(xtr[idx], ytr[idx])


def recal_batches():
    """The `bn-recal{data=tools/accuracy_fmnist.py:recal_batches}` loader: training images only, no labels."""
    x, _ = train_subset(RECAL_BATCHES * RECAL_BATCH)
    return list(x.split(RECAL_BATCH))


def macs_of(module, example) -> int:
    """MACs as slimc's report counts them, on the same lowering for every row (BatchNorm folded)."""
    res = slimc.compile(copy.deepcopy(module), example, pipeline="fuse-bn", backend=None, fidelity_samples=0)
    return res.report["after"]["macs"]


def run_seed(seed, data, test, args, rows_file):
    example = test[0][:1]
    recal = f"bn-recal{{data={Path(__file__).resolve()}:recal_batches batches={RECAL_BATCHES}}}"
    cfg = FinetuneConfig(epochs=args.ft_epochs, lr=args.ft_lr, progress=False)

    def tune(module):  # the same batches in the same order, and the same seed, for every variant
        torch.manual_seed(1000 + seed)
        return finetune(copy.deepcopy(module), Batches(data.x, data.y, batch=data.batch, seed=1000 + seed), teacher=dense,
                        config=cfg, device="cpu").module

    def record(label, module, acc0, acc_bn, acc_ft, seconds, extra=None):
        row = {"seed": seed, "variant": label, "macs": macs_of(module, example), "acc_pass": acc0,
               "acc_bn_recal": acc_bn, "acc_finetune": acc_ft, "seconds": round(seconds, 1), **(extra or {})}
        with open(rows_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  seed {seed} {label}: MACs {row['macs'] / 1e6:.2f} M, acc {acc0:.2f} / {acc_bn:.2f} / {acc_ft:.2f} "
              f"({seconds:.0f} s)", flush=True)
        return row

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dense = train(SmallResNet(args.width), Batches(data.x, data.y, batch=data.batch, seed=seed), args.epochs, lr=args.lr)
    dense_acc = accuracy(dense, *test)
    record("dense", dense, dense_acc, dense_acc, dense_acc, time.perf_counter() - t0,
           {"train_images": len(data.y), "epochs": args.epochs, "ft_epochs": args.ft_epochs})
    finals = {"dense": dense}
    only = set(args.variants.split(",")) if args.variants else None
    for label, pipeline, with_tp in VARIANTS:
        if only and label not in only:
            continue
        t1 = time.perf_counter()
        cut = slimc.compile(dense, example, pipeline=pipeline, backend=None, fidelity_samples=0).module
        recalibrated = slimc.compile(dense, example, pipeline=f"{pipeline},{recal}", backend=None,
                                     fidelity_samples=0).module
        tuned = tune(recalibrated)
        record(label, tuned, accuracy(cut, *test), accuracy(recalibrated, *test), accuracy(tuned, *test),
               time.perf_counter() - t1, {"pipeline": pipeline})
        finals[label] = tuned
        if with_tp and args.torch_pruning:
            import torch_pruning as tp

            t1 = time.perf_counter()
            target = tp.utils.count_ops_and_params(cut, example)[0]
            tpm, _, ratio = torch_pruning_at(dense, example, target, example)
            tp_recal = copy.deepcopy(tpm)
            from slimc.passes.fx.bn_recal import recalibrate_batchnorm

            recalibrate_batchnorm(tp_recal, recal_batches(), RECAL_BATCHES)
            tp_tuned = tune(tp_recal)
            tp_label = f"Torch-Pruning L2 at the MACs of {label}"
            record(tp_label, tp_tuned, accuracy(tpm, *test), accuracy(tp_recal, *test), accuracy(tp_tuned, *test),
                   time.perf_counter() - t1, {"tp_ratio": round(ratio, 3)})
            finals[tp_label] = tp_tuned
    if seed == args.latency_seed:
        latencies(finals, test[0][:args.bench_batch], args, rows_file)


def latencies(finals, bench, args, rows_file):
    """ORT latency (1 thread) of every final model, in interleaved rounds; per model the lowest round median,
    since the machine is shared and noise only adds time."""
    sessions = {label: slimc.compile(copy.deepcopy(m).eval(), bench, backend="onnxruntime",
                                     backend_options={"threads": 1}, fidelity_samples=0).artifact
                for label, m in finals.items()}
    inputs = [bench.numpy()]
    best = {label: float("inf") for label in sessions}
    for _ in range(args.rounds):
        for label, art in sessions.items():
            best[label] = min(best[label], art.benchmark(inputs, warmup=3, iters=args.iters).median_ms)
    with open(rows_file, "a") as f:
        f.write(json.dumps({"latency_ms": best, "bench_batch": len(bench)}) + "\n")


def _cell(values, digits=1):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def print_table(rows_file):
    rows = [json.loads(line) for line in open(rows_file)]
    lat = next((r for r in reversed(rows) if "latency_ms" in r), None)
    acc_rows = [r for r in rows if "variant" in r]
    order = list(dict.fromkeys(r["variant"] for r in acc_rows))
    dense = [r for r in acc_rows if r["variant"] == "dense"]
    dense_macs = dense[0]["macs"]
    seeds = sorted({r["seed"] for r in acc_rows})
    d = dense[0]
    print(f"Fashion-MNIST, SmallResNet: dense trained {d['epochs']} epochs on {d['train_images']} training images, "
          f"fine-tune {d['ft_epochs']} epoch(s) on the same images (KD from dense + labels); test = the 10,000 "
          f"test images; seeds {seeds} (mean ± half-range where 2+ seeds finished)\n")
    head = "| variant | seeds | MACs (M) | MACs vs dense | acc after pass | after bn-recal | after fine-tune |"
    if lat:
        head += f" ORT ms (batch {lat['bench_batch']}, 1 thread) | latency vs dense |"
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if lat else ""))
    for label in order:
        rs = [r for r in acc_rows if r["variant"] == label]
        lo, hi = min(r["macs"] for r in rs), max(r["macs"] for r in rs)  # global scope may differ per seed
        macs = f"{lo / 1e6:.2f}" if lo == hi else f"{lo / 1e6:.2f}-{hi / 1e6:.2f}"
        ratio = f"{lo / dense_macs:.2f}" if lo == hi else f"{lo / dense_macs:.2f}-{hi / dense_macs:.2f}"
        line = (f"| {label} | {len(rs)} | {macs} | {ratio} | "
                f"{_cell([r['acc_pass'] for r in rs])} | {_cell([r['acc_bn_recal'] for r in rs])} | "
                f"{_cell([r['acc_finetune'] for r in rs], 2)} |")
        if lat:
            ms = lat["latency_ms"].get(label)
            line += (f" {ms:.3f} | {ms / lat['latency_ms']['dense']:.2f} |" if ms else " | |")
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--train-images", type=int, default=20000, help="subset of the 60,000 training images")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ft-epochs", type=int, default=1, help="fine-tune budget; 1 of 4 epochs = 25%% of training")
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--variants", default="", help="comma-separated labels to run (default: all)")
    ap.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false")
    ap.add_argument("--latency-seed", type=int, default=0)
    ap.add_argument("--bench-batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/accuracy_fmnist")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    rows_file = Path(args.out) / "rows.jsonl"
    if args.table_only:
        print_table(rows_file)
        return
    torch.set_num_threads(args.threads)
    try:
        x, y = train_subset(args.train_images)
        _, (xte, yte) = fashion_mnist()
    except DataMissing as exc:
        sys.exit(f"accuracy_fmnist: {exc}")
    data, test = Batches(x, y, batch=128), tensors(xte, yte)
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.write_text("")
    start = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        run_seed(seed, data, test, args, rows_file)
    print(f"\n{time.perf_counter() - start:.0f} s; rows in {rows_file}\n")
    print_table(rows_file)


if __name__ == "__main__":
    main()
