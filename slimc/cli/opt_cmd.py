"""`slimc opt`: run a pipeline on a model file and write the resulting IR (no backend)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_args, add_pipeline_args, human, pipeline_text, print_pass_table


def add_parser(sub) -> None:
    p = sub.add_parser("opt", help="run passes on a model and write the result (.onnx, .onnxtxt or .pt)",
                       description="Run a pass pipeline and write the resulting IR. Reads .onnx, .onnxtxt, .pt "
                                   "(e.g. a reproducer's input) and model specs.")
    add_model_args(p)
    add_pipeline_args(p, None)
    p.add_argument("-o", "--output", required=True, help="output file: .onnx, .onnxtxt (text + weights), or .pt")
    p.add_argument("--report", help="write the JSON report to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..compiler import compile
    from ..errors import SlimcError
    from ..ir.onnx_io import atomic_write, save_onnx, save_onnx_text
    from ..passes.pipeline import Pipeline
    from .guard import guard_opt

    guard_opt(args)  # before any work: no output may land on an input or a device node
    text = pipeline_text(args, None)
    if args.print_pipeline:
        print(Pipeline.parse(text).print())
    out = Path(args.output)
    if out.suffix not in (".onnx", ".onnxtxt", ".pt"):
        raise SlimcError(f"-o '{out}': the output must end in .onnx, .onnxtxt or .pt.")
    source = Path(args.model)
    if out.suffix == ".onnxtxt" and source.is_file() and out.with_suffix(".onnx").resolve() == source.resolve():
        # save_onnx_text also writes <stem>.onnx (for Netron): that would replace the input model.
        raise SlimcError(f"-o '{out}' also writes '{out.with_suffix('.onnx')}', which is the input model; "
                         "choose another name for the output.")
    result = compile(args.model, pipeline=text, backend=None, input_shapes=args.input_shape,
                     dynamic_batch=args.dynamic_batch, leaf_modules=args.leaf_module, report_path=args.report,
                     dump_ir=args.dump_ir, dump_ir_changed_only=args.dump_ir_changed_only,
                     verify_each=args.verify_each)
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
    print_pass_table(result.report)
    b, a = result.report["before"], result.report["after"]
    print(f"params {human(b['params'])} -> {human(a['params'])}   nodes {b['nodes']} -> {a['nodes']}")
    print(f"wrote {out}")
    return 0
