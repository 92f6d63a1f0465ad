"""`slimc opt`: run a pipeline on a model file and write the resulting IR (no backend)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (FIDELITY_FAILED, PassTable, add_model_args, add_pipeline_args, human, input_options,
                     instrumentation, pipeline_text, print_fidelity, start_level)


def add_parser(sub) -> None:
    p = sub.add_parser("opt", help="run passes on a model and write the result (.onnx, .onnxtxt or .pt)",
                       description="Run a pass pipeline and write the resulting IR. Reads .onnx, .onnxtxt, .pt "
                                   "(e.g. a reproducer's input) and model specs.")
    add_model_args(p)
    add_pipeline_args(p, None)
    p.add_argument("-o", "--output", help="output file: .onnx, .onnxtxt (text + weights), or .pt (required "
                   "unless --print-pipeline)")
    p.add_argument("--report", help="write the JSON report to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..compiler import compile
    from ..errors import SlimcError
    from ..ir.onnx_io import atomic_write, save_onnx, save_onnx_text
    from ..compile_options import ReportOptions
    from ..passes.pipeline import Pipeline
    from .guard import guard_opt

    guard_opt(args)  # before any work: no output may land on an input or a device node
    pipeline = Pipeline.parse(pipeline_text(args, None))
    if args.print_pipeline:  # like mlir-opt's --dump-pass-pipeline: print, do nothing else
        print(pipeline.lowered(start_level(args.model)).print())
        return 0
    if not args.output:
        raise SlimcError("give the output file with -o FILE (.onnx, .onnxtxt or .pt).")
    out = Path(args.output)
    if out.suffix not in (".onnx", ".onnxtxt", ".pt"):
        raise SlimcError(f"-o '{out}': the output must end in .onnx, .onnxtxt or .pt.")
    source = Path(args.model)
    if out.suffix == ".onnxtxt" and source.is_file() and out.with_suffix(".onnx").resolve() == source.resolve():
        # save_onnx_text also writes <stem>.onnx (for Netron): that would replace the input model.
        raise SlimcError(f"-o '{out}' also writes '{out.with_suffix('.onnx')}', which is the input model; "
                         "choose another name for the output.")
    table = PassTable([p.name for p in pipeline])
    result = compile(args.model, pipeline=pipeline, backend=None, inputs=input_options(args),
                     instrumentation=instrumentation(args, on_pass=table.row), report=ReportOptions(path=args.report))
    table.fidelity_row(result.report["fidelity"])
    final = result.program
    if out.suffix == ".pt":
        if final.level != "fx":
            raise SlimcError("the pipeline ends at the ONNX level; write it to a .onnx or .onnxtxt file.")
        import torch

        atomic_write(out, lambda tmp: torch.save(final.ir, tmp))
    elif final.level != "onnx":
        raise SlimcError("the pipeline ends at the FX level; add 'to-onnx' or write a .pt file.")
    elif out.suffix == ".onnxtxt":
        save_onnx_text(final.ir, out)
    else:
        save_onnx(final.ir, out)
    b, a = result.report["before"], result.report["after"]
    print(f"params {human(b['params'])} -> {human(a['params'])}   nodes {b['nodes']} -> {a['nodes']}")
    for warning in result.report["warnings"]:
        print(f"warning: {warning}")
    fidelity_ok = print_fidelity(result.report["fidelity"])
    print(f"wrote {out}")
    return 0 if fidelity_ok else FIDELITY_FAILED
