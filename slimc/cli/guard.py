"""The one call each command makes first: refuse, before any work, a run that would change a user's file.

Every path the command reads (model, pipeline file, fine-tune data, eval file) and writes (artifact,
-o, --report, --dump-ir, the search store) goes through slimc.preflight; see there for the rules.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["guard_compile", "guard_opt", "guard_search", "opt_outputs"]


def _user_inputs(args: argparse.Namespace) -> list[tuple[str, object]]:
    found = [("--pipeline-file", getattr(args, "pipeline_file", None))]
    for flag in ("finetune", "eval"):
        spec = getattr(args, flag, None)
        if isinstance(spec, str) and ":" in spec:
            found.append((f"--{flag}", spec.rpartition(":")[0]))
    return [(label, p) for label, p in found if p]


def guard_compile(args: argparse.Namespace) -> None:
    from ..preflight import check_compile_run

    check_compile_run(args.model, backend=args.backend, output_dir=args.output_dir, report_path=args.report,
                      dump_ir=args.dump_ir, benchmark_iters=args.benchmark, inputs=_user_inputs(args))


def opt_outputs(output: str | None) -> list[tuple[str, Path]]:
    """The files `slimc opt -o OUTPUT` writes: .onnxtxt also writes <stem>.onnx and the weights beside them."""
    if not output:  # --print-pipeline writes nothing
        return []
    out = Path(output)
    if out.suffix == ".onnxtxt":
        return [("-o", out), ("-o (its binary copy)", out.with_suffix(".onnx")),
                ("-o (its weights)", out.with_suffix(".onnx.data"))]
    if out.suffix == ".onnx":
        return [("-o", out), ("-o (its weights)", Path(str(out) + ".data"))]
    return [("-o", out)]


def guard_opt(args: argparse.Namespace) -> None:
    from ..preflight import check_compile_run

    check_compile_run(args.model, backend=None, report_path=args.report, dump_ir=args.dump_ir,
                      inputs=_user_inputs(args), outputs=opt_outputs(args.output))


def guard_search(args: argparse.Namespace) -> None:
    from ..preflight import check_search_run

    if args.store:
        check_search_run(args.model, args.store, inputs=_user_inputs(args))
