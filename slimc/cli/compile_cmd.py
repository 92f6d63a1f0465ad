"""`slimc compile`: model spec in, backend artifact + report out."""

from __future__ import annotations

import argparse

from . import profile_cmd
from .common import (FIDELITY_FAILED, PassTable, add_model_args, add_pipeline_args, human, input_options,
                     instrumentation, pipeline_text, print_fidelity, start_level)

DEFAULT = "fuse-bn,to-onnx,simplify"


def add_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile a model through a pass pipeline to a backend",
                       description="Compile a model through a pass pipeline and build it for a backend.")
    add_model_args(p)
    add_pipeline_args(p, DEFAULT)
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default), torch, ...")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. threads=2 or optimization=basic (repeatable)")
    p.add_argument("--output-dir", "-o", help="directory for the artifact")
    p.add_argument("--report", help="write the JSON report to this file")
    p.add_argument("--finetune", metavar="FILE.py:LOADER",
                   help="fine-tune after the FX passes, distilling from the original model, on the batches "
                        "LOADER() yields (a tensor, or (inputs, labels))")
    p.add_argument("--epochs", type=int, default=1, help="epochs of --finetune (default 1)")
    p.add_argument("--benchmark", type=int, default=0, metavar="ITERS",
                   help="time the artifact over ITERS runs after compiling")
    profile_cmd.add_compile_options(p)  # --profile, --report-html
    p.set_defaults(run=run)


def _backend_options(items: list[str]) -> dict:
    from ..errors import SlimcError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SlimcError(f"--backend-option '{item}' is not KEY=VALUE.")
        out[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return out


def _with_finetune(text: str, data: str, epochs: int) -> str:
    """Insert a finetune pass after the last FX-level pass (before lowering to ONNX)."""
    from ..passes.fx.finetune import Finetune
    from ..passes.pipeline import Pipeline

    passes = Pipeline.parse(text).passes
    last_fx = max((i for i, p in enumerate(passes) if p.output_level == "fx"), default=-1)
    passes.insert(last_fx + 1, Finetune(data=data, epochs=epochs))
    return Pipeline(passes).print()


def run(args: argparse.Namespace) -> int:
    from ..compiler import compile
    from ..compile_options import BackendSpec, ReportOptions
    from ..passes.pipeline import Pipeline
    from .guard import guard_compile

    text = pipeline_text(args, DEFAULT)
    if args.finetune:
        text = _with_finetune(text, args.finetune, args.epochs)
    backend = BackendSpec(args.backend, _backend_options(args.backend_option))
    pipeline = Pipeline.parse(text)
    if args.print_pipeline:  # like mlir-opt's --dump-pass-pipeline: print, do nothing else
        end = None if args.backend == "torch" else "onnx"
        print(pipeline.lowered(start_level(args.model), end).print())
        return 0
    guard_compile(args)  # before any work: no output may land on an input or a device node
    table = PassTable([p.name for p in pipeline])
    result = compile(args.model, pipeline=pipeline, backend=backend, inputs=input_options(args),
                     instrumentation=instrumentation(args, on_pass=table.row),
                     report=ReportOptions(path=args.report, output_dir=args.output_dir,
                                          benchmark_iters=args.benchmark))
    r = result.report
    table.fidelity_row(r["fidelity"])
    print(f"pipeline: {r['pipeline']}")
    b, a = r["before"], r["after"]
    print(f"params {human(b['params'])} -> {human(a['params'])}   MACs {human(b['macs'])} -> {human(a['macs'])}   "
          f"nodes {b['nodes']} -> {a['nodes']}   (seed {r['seed']})")
    for warning in r["warnings"]:
        print(f"warning: {warning}")
    fidelity_ok = print_fidelity(r["fidelity"])
    bench = r.get("benchmark") or {}
    if "median_ms" in bench:
        print(f"latency on {args.backend}: median {bench['median_ms']:.2f} ms, p90 {bench['p90_ms']:.2f} ms")
    elif "skipped" in bench:
        print(f"not benchmarked: {bench['skipped']}")
    if r["artifact"]:
        print(f"artifact ({args.backend}): {r['artifact']}")
    if args.report:
        print(f"report: {args.report}")
    print(f"compiled in {r['seconds']:.2f} s")
    profile_cmd.after_compile(args, result)  # --profile, --report-html
    return 0 if fidelity_ok else FIDELITY_FAILED
