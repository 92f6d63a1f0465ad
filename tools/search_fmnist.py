"""Search with accuracy on Fashion-MNIST: per-group TPE vs a uniform ratio, at the same ONNX Runtime latency budget.

The small ResNet of tools/accuracy_fmnist.py (SmallResNet, width 32) is trained once on a subset of the
training split (weights cached in --out, not in git). Then two `slimc.search` runs, the same number of
trials, the same TPE, the same latency budget (--latency-budget, a ratio of the dense model, which is timed
once here on ONNX Runtime, batch 16, 1 thread; both searches get the same budget in ms) and the same
`--eval tools/search_fmnist.py:evaluate` (accuracy of the compiled ORT model on a validation subset: the first
2,000 images of the test split):

* uniform:   prune-channels{ratio=uniform(lo,hi)}                 (every layer pruned alike)
* per-group: prune-channels{ratios=per-group(uniform(lo,hi))}     (one ratio per channel group)

Each trial's pipeline is prune, then `bn-recal` on 1,280 unlabelled training images (cheap: forward passes
only, no fine-tune), then fuse-bn, to-onnx, simplify. Then the --recheck most accurate feasible trials of each
search are re-timed with the dense model in interleaved rounds (a trial's latency is one noisy median) and scored
on the other 8,000 test images (which the search never saw); per search the table shows the search's pick and
the most accurate trial still within the budget when re-timed. A combined Pareto plot (validation accuracy vs
latency, every trial of both searches) goes to --plot.

    make data                                                          # installs Fashion-MNIST (apt)
    nice -n 19 .venv/bin/python tools/search_fmnist.py --trials 40 --latency-budget 0.6x
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_digits import Batches, SmallResNet, train  # noqa: E402
from accuracy_fmnist import tensors, train_subset  # noqa: E402
from real_data import DataMissing, fashion_mnist  # noqa: E402

import slimc  # noqa: E402
from slimc.search import search  # noqa: E402

__all__ = ["evaluate", "recal_batches", "main"]

BATCH = 16  # the compiled models' batch: latency and accuracy are measured at this shape
RECAL_BATCHES, RECAL_BATCH = 10, 128
VAL_IMAGES = 2000  # the search scores on test images [0, VAL_IMAGES); the rest are the final check
_cache: dict = {}


def _test_split(start: int, stop: int | None):
    if "test" not in _cache:
        _, (xte, yte) = fashion_mnist()
        _cache["test"] = tensors(xte, yte)
    x, y = _cache["test"]
    return x[start:stop], y[start:stop]


def accuracy_of(artifact, x, y) -> float:
    """Accuracy (%) of a compiled model at its batch of BATCH (a short last batch is zero-padded)."""
    hits = 0
    for i in range(0, len(y), BATCH):
        xb = x[i:i + BATCH].numpy()
        n = len(xb)
        if n < BATCH:
            xb = np.concatenate([xb, np.zeros((BATCH - n,) + xb.shape[1:], xb.dtype)])
        logits = artifact.run([xb])[0][:n]
        hits += int((np.argmax(logits, 1) == y[i:i + n].numpy()).sum())
    return 100.0 * hits / len(y)


def evaluate(artifact) -> float:
    """The search's `--eval`: accuracy (%) on the validation subset (the first VAL_IMAGES test images)."""
    return accuracy_of(artifact, *_test_split(0, VAL_IMAGES))


def recal_batches():
    """`bn-recal{data=tools/search_fmnist.py:recal_batches}`: unlabelled training images."""
    x, _ = train_subset(RECAL_BATCHES * RECAL_BATCH)
    return list(x.split(RECAL_BATCH))


def dense_model(args, out: Path):
    weights = out / f"smallresnet-w{args.width}-n{args.train_images}-e{args.epochs}-s{args.train_seed}.pt"
    model = SmallResNet(args.width)
    if weights.is_file():  # training is the slow part on a shared CPU: reuse it between runs
        model.load_state_dict(torch.load(weights))
        return model.eval(), f"loaded from {weights}"
    t0 = time.perf_counter()
    x, y = train_subset(args.train_images)
    torch.manual_seed(args.train_seed)
    model = train(model, Batches(x, y, batch=128, seed=args.train_seed), args.epochs, lr=3e-3)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    return model, f"trained in {time.perf_counter() - t0:.0f} s ({args.train_images} images, {args.epochs} epochs)"


def retime(model, pipes: dict, rounds: int, iters: int, score: bool = True) -> dict:
    """Per pipeline: accuracy on the images the search never saw, and the lowest of `rounds` interleaved
    ORT medians (the machine is shared; noise only adds time)."""
    example = torch.zeros(BATCH, 1, 28, 28)
    arts = {k: slimc.compile(model, example, pipeline=p, backend="onnxruntime", backend_options={"threads": 1},
                             fidelity_samples=0) for k, p in pipes.items()}
    held_out = _test_split(VAL_IMAGES, None)
    out = {k: {"macs": r.report["after"]["macs"], "test_acc": accuracy_of(r.artifact, *held_out) if score else None,
               "medians": []} for k, r in arts.items()}
    for _ in range(rounds):
        for k, r in arts.items():
            out[k]["medians"].append(r.artifact.benchmark(iters=iters).median_ms)
    for v in out.values():
        v["latency_ms"] = min(v["medians"])
    return out


def plot(results: dict, baseline: dict, limit_ms: float, path: Path) -> None:
    """Validation accuracy vs search-time latency of every trial of both searches, with their Pareto fronts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.0), dpi=90)
    for (name, res), colour in zip(results.items(), ("tab:orange", "tab:blue")):
        pts = sorted(((r["metrics"]["latency_ms"], r["metrics"]["score"]) for r in res.records
                      if r["status"] in ("ok", "infeasible") and r["metrics"].get("latency_ms")), key=lambda p: p)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, c=colour, alpha=0.6, label=f"{name} trials")
        front, best = [], -1.0
        for lat, acc in pts:  # sorted by latency: a point is on the front if more accurate than all faster ones
            if acc > best:
                front.append((lat, acc))
                best = acc
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", c=colour, lw=1.5,
                label=f"{name} Pareto front")
        if res.best is not None:
            m = res.best["metrics"]
            ax.scatter([m["latency_ms"]], [m["score"]], s=150, facecolors="none", edgecolors=colour, lw=2,
                       label=f"{name} best within budget")
    ax.axvline(limit_ms, ls="--", c="k", lw=1, label="latency budget")
    ax.scatter([baseline["latency_ms"]], [baseline["score"]], marker="*", s=120, c="k", label="dense")
    ax.set_xlabel("ONNX Runtime latency, batch 16, 1 thread (ms, median in the search)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Fashion-MNIST SmallResNet: prune-channels + bn-recal", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40, help="compiled models per search")
    ap.add_argument("--latency-budget", default="0.6x", help="of the dense model, measured by the search on ORT")
    ap.add_argument("--low", type=float, default=0.2, help="ratio range of both searches: uniform(low, high)")
    ap.add_argument("--high", type=float, default=0.8)
    ap.add_argument("--train-images", type=int, default=20000, help="subset of the 60,000 training images")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--train-seed", type=int, default=0, help="the dense model's init and data order")
    ap.add_argument("--seed", type=int, default=0, help="TPE's seed (both searches)")
    ap.add_argument("--benchmark-iters", type=int, default=30, help="timed runs per trial")
    ap.add_argument("--recheck", type=int, default=5, help="feasible trials per search re-timed at the end")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds when re-timing the winners")
    ap.add_argument("--out", default="/tmp/slimc-search-fmnist",
                    help="run folder: the weights cache; the stores go to OUT/<budget>-s<seed>/{uniform,per-group}")
    ap.add_argument("--plot", default="docs/search_fmnist_pareto.png")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.latency_budget.endswith("x"):
        sys.exit("search_fmnist: --latency-budget is a ratio of the dense model, e.g. 0.6x")
    try:
        fashion_mnist()
    except DataMissing as exc:
        sys.exit(f"search_fmnist: {exc}")

    t0 = time.perf_counter()
    torch.set_num_threads(2)
    model, how = dense_model(args, out)
    torch.set_num_threads(1)
    print(f"dense SmallResNet: {how}", flush=True)
    recal = f"bn-recal{{data={Path(__file__).resolve()}:recal_batches batches={RECAL_BATCHES}}}"
    dist = f"uniform({args.low:g},{args.high:g})"
    pipelines = {"uniform": f"prune-channels{{ratio={dist}}},{recal},fuse-bn,to-onnx,simplify",
                 "per-group": f"prune-channels{{ratios=per-group({dist})}},{recal},fuse-bn,to-onnx,simplify"}
    common = dict(example_inputs=torch.zeros(BATCH, 1, 28, 28), eval=f"{Path(__file__).resolve()}:evaluate",
                  backend=slimc.BackendSpec("onnxruntime", {"threads": 1}),
                  latency_budget=None, trials=args.trials, algo="tpe", fidelity_samples=0,
                  benchmark_iters=args.benchmark_iters, seed=args.seed, progress=False)
    dense_pipe = "fuse-bn,to-onnx,simplify"
    # A trial's latency is one median of benchmark_iters runs: the budget hangs on the median of such medians.
    dense_ms = float(np.median(retime(model, {"dense": dense_pipe}, args.rounds, args.benchmark_iters,
                                      score=False)["dense"]["medians"]))
    ratio = float(args.latency_budget[:-1])
    limit = ratio * dense_ms  # one absolute budget for both searches (each search would time its own dense)
    print(f"dense ORT latency {dense_ms:.3f} ms (median of {args.rounds} medians): budget {args.latency_budget} = "
          f"{limit:.3f} ms", flush=True)
    common["latency_budget"] = f"{limit:.4f}"
    results, runs = {}, out / f"{args.latency_budget}-s{args.seed}"
    for name, pipe in pipelines.items():
        shutil.rmtree(runs / name, ignore_errors=True)
        t1 = time.perf_counter()
        results[name] = search(model, pipe, store=runs / name, **common)
        print(f"{name}: {len(results[name].records)} trials in {time.perf_counter() - t1:.0f} s", flush=True)

    plot(results, results["uniform"].baseline, limit, Path(args.plot))
    # A trial's latency is one median of benchmark_iters runs on a shared machine: re-time the most accurate
    # feasible trials of each search with the dense model, interleaved, and keep the best one still in budget.
    pipes = {"dense": dense_pipe}
    for name, res in results.items():
        ok = sorted((r for r in res.records if r["status"] == "ok"), key=lambda r: -r["metrics"]["score"])
        pipes.update({f"{name} #{r['id']}": r["pipeline"] for r in ok[:args.recheck]})
    final = retime(model, pipes, args.rounds, args.benchmark_iters)
    d = final["dense"]
    for k, v in final.items():
        v["vs_dense"] = v["latency_ms"] / d["latency_ms"]
    rows = {}
    for name, res in results.items():
        by_id = {r["id"]: r for r in res.records}
        cands = [(by_id[int(k.split("#")[1])], final[k]) for k in final if k.startswith(name + " #")]
        kept = [c for c in cands if c[1]["vs_dense"] <= ratio]
        rows[f"{name}: search's pick"] = max(cands, key=lambda c: c[0]["metrics"]["score"], default=None)
        rows[f"{name}: best still in budget re-timed"] = max(kept, key=lambda c: c[0]["metrics"]["score"], default=None)
    summary = {"args": vars(args), "dense_ms": dense_ms, "limit_ms": limit, "final": final,
               "rows": {k: v and {"id": v[0]["id"], "pipeline": v[0]["pipeline"], "metrics": v[0]["metrics"],
                                  "options": v[0]["options"], "retimed": v[1]} for k, v in rows.items()},
               "feasible": {k: sum(r["status"] == "ok" for r in res.records) for k, res in results.items()}}
    (runs / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    print(f"\nlatency budget {args.latency_budget} of the dense model = {limit:.3f} ms (dense {dense_ms:.3f} ms); "
          f"{args.trials} TPE trials per search; validation = test images [0, {VAL_IMAGES}), held-out = the other "
          f"{10000 - VAL_IMAGES}; re-timed: lowest of {args.rounds} interleaved medians, the top {args.recheck} "
          "feasible trials of each search\n")
    print("| search | feasible trials | val. acc (%) | held-out acc (%) | MACs/image (M) | MACs vs dense | "
          "latency in search (ms) | re-timed (ms) | re-timed vs dense | ratios |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| dense | - | {results['uniform'].baseline['score']:.2f} | {d['test_acc']:.2f} | "
          f"{d['macs'] / BATCH / 1e6:.2f} | 1.00 | {dense_ms:.3f} | {d['latency_ms']:.3f} | 1.00 | - |")
    for label, row in rows.items():
        name = label.split(":")[0]
        if row is None:
            print(f"| {label} | {summary['feasible'][name]} | none | | | | | | | |")
            continue
        r, f = row
        m = r["metrics"]
        ratios = ", ".join(f"{v:.2f}" for v in r["options"].values())
        print(f"| {label} (trial {r['id']}) | {summary['feasible'][name]} | {m['score']:.2f} | {f['test_acc']:.2f} | "
              f"{f['macs'] / BATCH / 1e6:.2f} | {f['macs'] / d['macs']:.2f} | {m['latency_ms']:.3f} | "
              f"{f['latency_ms']:.3f} | {f['vs_dense']:.2f} | {ratios} |")
    print(f"\nplot: {args.plot}; stores: {runs / 'uniform'}, {runs / 'per-group'}; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
