"""`slimc search`: Hyperopt over the options written as distributions in the pipeline text."""

from __future__ import annotations

import argparse

from .common import add_model_args, human, input_options, pipeline_text

EXAMPLE = """example:
  slimc search torchvision:resnet50 --input-shape 1x3x224x224 \\
     --pipeline "fuse-bn,prune-channels{ratio=uniform(0.1,0.7) criterion=choice(l2,taylor)},to-onnx,simplify" \\
     --eval evalfile.py:evaluate --latency-budget 0.5x --trials 50 --store runs/r50

distributions: uniform(a,b) quniform(a,b,q) loguniform(a,b) choice(x,y,...);
  prune-channels{ratios=per-group(uniform(0,0.8))} gives one dimension per channel group.
the store folder gets trials.jsonl (one line per trial, --resume continues it), best.txt
(slimc compile --pipeline "$(cat best.txt)" reproduces the best), pareto.png and summary.md."""


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search pass options with Hyperopt, measured on the backend",
                       description="Search the pass options written as distributions in the pipeline text "
                                   "with Hyperopt; every trial is compiled and measured on the backend.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pipeline", default=None, help="pipeline text with distributions as option values")
    g.add_argument("--pipeline-file", help="file with one pass per line, '#' comments")
    p.add_argument("--print-space", action="store_true", help="print the search space and exit")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default), torch, ...")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. threads=1 (repeatable)")
    p.add_argument("--objective", choices=("accuracy", "fidelity"), default=None,
                   help="accuracy: the score --eval returns; fidelity (default without --eval): top-1 agreement "
                        "with the original model for classifiers, cosine otherwise")
    p.add_argument("--eval", metavar="FILE.py:FN", help="fn(artifact) -> float, higher is better")
    p.add_argument("--latency-budget", metavar="MS|RATIOx", help="median latency limit: 12.5 (ms) or 0.5x dense")
    p.add_argument("--macs-budget", metavar="N|RATIOx", help="MACs limit: 300M, 1.2G or 0.5x dense")
    p.add_argument("--min-score", type=float, help="trials scoring below are infeasible")
    p.add_argument("--trials", type=int, default=None,
                   help="number of trials in all, stored ones included (50; with --resume: the stored search's)")
    p.add_argument("--algo", default="tpe", choices=("tpe", "rand", "anneal", "atpe", "grid"),
                   help="tpe (default), rand, anneal, atpe (needs lightgbm), grid (choice/quniform only)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of Hyperopt and of model creation (torchvision:NAME weights) in every trial (0)")
    p.add_argument("--store", metavar="DIR", help="run folder (default runs/search-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the search stored in --store")
    p.add_argument("--spark", metavar="MASTER", help="run trials through SparkTrials: local[2], spark://host:7077")
    p.add_argument("--parallelism", type=int, help="concurrent Spark trials (default: the master's slots)")
    p.add_argument("--trial-timeout", type=float, metavar="S", help="stop a trial after S seconds (runs it in "
                   "its own process) and record it as failed")
    p.add_argument("--fidelity-samples", type=int, default=16, help="random inputs for the fidelity score (16)")
    p.add_argument("--benchmark-iters", type=int, default=20, help="timed runs per trial for latency (20)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import SlimcError
    from ..compile_options import BackendSpec, ReportOptions
    from ..search import build_space, search
    from ..search.objective import TrialTask
    from .common import print_err
    from .compile_cmd import _backend_options
    from .guard import guard_search

    guard_search(args)  # before any work: the store must not hold an input
    text = pipeline_text(args, None)
    if args.objective == "accuracy" and not args.eval:
        raise SlimcError("--objective accuracy needs --eval FILE.py:FN, the function that scores a compiled model "
                         "on your validation data.")
    if args.objective == "fidelity" and args.eval:
        raise SlimcError("--objective fidelity scores against the original model; drop --eval, or use "
                         "--objective accuracy.")
    if args.resume and not args.store:
        raise SlimcError("--resume needs --store DIR, the folder of the search to continue.")
    inputs = input_options(args)
    if args.print_space:
        print(build_space(text, TrialTask(args.model, inputs=inputs)).describe())
        return 0
    try:
        result = search(args.model, text, inputs=inputs,
                        backend=BackendSpec(args.backend, _backend_options(args.backend_option)),
                        report=ReportOptions(fidelity_samples=args.fidelity_samples,
                                             benchmark_iters=args.benchmark_iters),
                        eval=args.eval, latency_budget=args.latency_budget, macs_budget=args.macs_budget,
                        min_score=args.min_score, trials=args.trials, algo=args.algo, store=args.store,
                        resume=args.resume, spark=args.spark, parallelism=args.parallelism,
                        trial_timeout=args.trial_timeout, seed=args.seed, progress=not args.no_progress)
    except KeyboardInterrupt:
        where = args.store or "the store folder"
        print_err(f"interrupted; every finished trial is in {where}/trials.jsonl. "
                  f"Add --resume{'' if args.store else ' --store DIR'} to continue.")
        return 130
    _print_result(result)
    return 0


def _print_result(result) -> None:
    recs = result.records
    counts = {s: sum(r["status"] == s for r in recs) for s in ("ok", "infeasible", "failed")}
    print(f"{len(recs)} trials: {counts['ok']} feasible, {counts['infeasible']} infeasible, {counts['failed']} failed")
    b = result.baseline
    if b:
        print(f"dense model: score {b['score']:.4g}, latency {b['latency_ms'] or 0:.3f} ms, MACs {human(b['macs'])}")
    if result.best:
        m = result.best["metrics"]
        lat = "-" if m.get("latency_ms") is None else f"{m['latency_ms']:.3f} ms"
        print(f"best feasible (trial {result.best['id']}): score {m['score']:.4g}, latency {lat}, "
              f"MACs {human(m['macs'])}, params {human(m['params'])}")
        print(f"pipeline: {result.best['pipeline']}")
    else:
        print("no feasible trial: relax the budgets or widen the ranges.")
    for note in result.notes:
        print(f"note: {note}")
    print(f"store: {result.store} (trials.jsonl, {'best.txt, ' if result.best else ''}summary.md"
          f"{', pareto.png' if (result.store / 'pareto.png').exists() else ''})")
