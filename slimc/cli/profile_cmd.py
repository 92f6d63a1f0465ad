"""`slimc profile`: where the time goes, per op type and per module, on the real backend.

Also the `compile --profile` / `--report-html` hook (`add_compile_options`, `after_compile`).
"""

from __future__ import annotations

import argparse

from .common import add_model_args, human, table

__all__ = ["add_parser", "add_compile_options", "after_compile", "print_profile", "print_compare"]

DEFAULT_PIPELINE = "fuse-bn,to-onnx,simplify"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=10, help="profiled and plain runs per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up runs of each kind, not counted (default 5)")
    p.add_argument("--top", type=int, default=15, help="modules shown in the table and the picture (default 15)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the top modules as horizontal bars")


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="per-layer latency on the backend, by op type and by module",
                       description="Profile a model layer by layer on ONNX Runtime and/or OpenVINO; "
                                   "with --compare, two models side by side (ms and MACs per module).")
    add_model_args(p)
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                   help=f"pipeline for a torch model spec (default: {DEFAULT_PIPELINE}); .onnx files run as they are")
    p.add_argument("--compare", metavar="OTHER", help="a second model (e.g. the pruned one) to put side by side")
    p.add_argument("--compare-pipeline", help="pipeline for OTHER when it is a torch model spec (default: --pipeline)")
    p.add_argument("--backend", action="append", default=None,
                   help="onnxruntime (default) or openvino; repeat for both (runs are interleaved)")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option for every --backend, e.g. threads=2")
    _add_run_options(p)
    p.add_argument("--report", help="write the profiles (and comparison) as JSON")
    p.add_argument("--report-html", metavar="FILE", help="write a self-contained HTML report")
    p.set_defaults(run=run)


def add_compile_options(p: argparse.ArgumentParser) -> None:
    """`compile --profile` and `compile --report-html` (the profile goes into --report's JSON too)."""
    p.add_argument("--profile", action="store_true", help="profile the artifact layer by layer after compiling")
    p.add_argument("--profile-runs", type=int, default=10, help="profiled runs per round for --profile (default 10)")
    p.add_argument("--profile-plot", metavar="FILE.png", help="with --profile: draw the top modules")
    p.add_argument("--report-html", metavar="FILE", help="write a self-contained HTML report of the compile")


def _onnx_program(spec: str, pipeline: str, args):
    """The ONNX program to profile: an .onnx file as it is, a torch spec compiled through `pipeline`."""
    from ..compile_options import ReportOptions
    from ..compiler import compile, load_program
    from .common import input_options

    if str(spec).endswith(".xml"):
        return None  # an OpenVINO IR saved by `slimc compile --backend openvino`
    if str(spec).endswith((".onnx", ".onnxtxt")):
        return load_program(spec, input_shapes=args.input_shape, dynamic_batch=args.dynamic_batch)
    result = compile(spec, pipeline=pipeline, backend=None, inputs=input_options(args),
                     report=ReportOptions(fidelity_samples=0))
    if result.onnx is None:
        from ..errors import SlimcError

        raise SlimcError(f"the pipeline '{pipeline}' ends at the FX level; profiling needs ONNX (add to-onnx).")
    return result.program


def _openvino_ir(path: str, backend: str, options: dict):
    from ..errors import SlimcError

    if backend != "openvino":
        raise SlimcError(f"'{path}' is an OpenVINO IR; profile it with --backend openvino, not '{backend}'.")
    from ..backend.openvino import OpenVinoArtifact

    return OpenVinoArtifact.load(path, **options)


def _label(spec: str) -> str:
    """A short name for tables and legends: the file name of a model file, else the spec."""
    from pathlib import Path

    return Path(spec).name if str(spec).endswith((".onnx", ".onnxtxt", ".xml")) else str(spec)


def run(args: argparse.Namespace) -> int:
    from ..backend.base import get_backend
    from ..profile import ProfileOptions, compare, profile_models
    from .compile_cmd import _backend_options

    options = ProfileOptions(warmup=args.warmup, runs=args.runs, rounds=args.rounds)
    backends = args.backend or ["onnxruntime"]
    programs = [(_label(args.model), _onnx_program(args.model, args.pipeline, args))]
    label_to_path = {programs[0][0]: args.model}
    if args.compare:
        other = _label(args.compare)
        if other == programs[0][0]:
            other += " (compare)"
        programs.append((other, _onnx_program(args.compare, args.compare_pipeline or args.pipeline, args)))
        label_to_path[other] = args.compare
    opts = _backend_options(args.backend_option)
    jobs, feeds = [], {}
    for backend in backends:
        target = get_backend(backend, **opts)
        for label, program in programs:
            if program is None:  # a saved OpenVINO IR: its own layer names, no ONNX graph for MACs
                artifact = _openvino_ir(label_to_path[label], backend, opts)
                feeds[id(artifact)] = artifact.sample_inputs()
                jobs.append((label, artifact, None))
                continue
            artifact = target.build(program)
            feeds[id(artifact)] = program.random_inputs(seed=0)
            jobs.append((label, artifact, program.ir, program.metadata.get("fx_module")))
    profiles = profile_models(jobs, lambda a: feeds[id(a)], options)
    data = {"profiles": [p.as_dict() for p in profiles], "compare": {}}
    for backend in backends:
        mine = [p for p in profiles if p.backend == backend]
        if len(mine) == 2:
            print_compare(mine[0], mine[1], args.top)
            data["compare"][backend] = compare(mine[0], mine[1])
        else:
            print_profile(mine[0], args.top)
    _write_outputs(args, profiles, data)
    return 0


def _write_outputs(args, profiles, data: dict, compile_report: dict | None = None) -> None:
    from pathlib import Path

    from ..ir.onnx_io import write_json

    if getattr(args, "report", None) and compile_report is None:
        write_json(Path(args.report), data)
        print(f"report: {args.report}")
    plot = getattr(args, "plot", None) or getattr(args, "profile_plot", None)
    if plot and profiles:
        from ..profile.plot import plot_profiles

        plot_profiles(profiles, plot, top=getattr(args, "top", 20))
        print(f"picture: {plot}")
    if getattr(args, "report_html", None):
        from ..report.html import write_html_report

        write_html_report(args.report_html, compile_report=compile_report, profile=data)
        print(f"HTML report: {args.report_html}")


def print_profile(prof, top: int = 15) -> None:
    """Totals, time per op type, and the top modules with their MACs."""
    print(f"\n{prof.backend} — {prof.label or 'model'}: layers sum to {prof.profiled_ms:.2f} ms of "
          f"{prof.end_to_end_ms:.2f} ms end to end ({100 * prof.profiled_ms / prof.end_to_end_ms:.0f}%; "
          f"{prof.runs} profiled runs, middle half by total averaged; {prof.runs} plain runs, median)")
    total = prof.profiled_ms or 1.0
    rows = [["op type", "layers", "ms", "share"]]
    for r in prof.by_op()[:top]:
        rows.append([r["op_type"], str(r["layers"]), f"{r['ms']:.3f}", f"{100 * r['ms'] / total:.1f}%"])
    table(rows)
    print()
    rows = [["module", "ms", "share", "MACs"]]
    for r in prof.by_module()[:top]:
        rows.append([r["module"], f"{r['ms']:.3f}", f"{100 * r['ms'] / total:.1f}%", human(r["macs"])])
    table(rows)


def print_compare(before, after, top: int = 15) -> None:
    """Per module: ms and MACs before/after; '<-' marks a module that lost MACs but not time."""
    from ..profile import compare

    print(f"\n{before.backend}: {before.label} vs {after.label}")
    rows = [["module", "ms before", "ms after", "x", "MACs before", "MACs after", "x", ""]]
    for r in compare(before, after)[:top]:
        rows.append([r["module"], f"{r['ms_before']:.3f}", f"{r['ms_after']:.3f}",
                     "-" if r["ms_ratio"] is None else f"{r['ms_ratio']:.2f}",
                     human(r["macs_before"]), human(r["macs_after"]),
                     "-" if r["macs_ratio"] is None else f"{r['macs_ratio']:.2f}",
                     "<- fewer MACs, same time" if r["lost_macs_not_time"] else ""])
    rows.append(["sum of layers", f"{before.profiled_ms:.3f}", f"{after.profiled_ms:.3f}",
                 f"{after.profiled_ms / before.profiled_ms:.2f}", human(sum(before.module_macs.values())),
                 human(sum(after.module_macs.values())), "", ""])
    rows.append(["end to end (plain runs, median)", f"{before.end_to_end_ms:.3f}", f"{after.end_to_end_ms:.3f}",
                 f"{after.end_to_end_ms / before.end_to_end_ms:.2f}", "", "", "", ""])
    table(rows)


def after_compile(args: argparse.Namespace, result) -> None:
    """The compile hook: profile the artifact when asked, then write --report / --report-html."""
    from pathlib import Path

    from ..backend.base import CannotRunHere
    from ..errors import SlimcError
    from ..ir.onnx_io import write_json
    from ..profile import ProfileOptions, profile_artifact

    if not (args.profile or args.report_html):
        return
    data = None
    profiles = []
    if args.profile:
        if result.artifact is None or result.onnx is None:
            raise SlimcError("--profile needs an ONNX backend artifact (--backend onnxruntime or openvino).")
        try:
            prof = profile_artifact(result.artifact, result.onnx, result.program.random_inputs(seed=0),
                                    ProfileOptions(runs=args.profile_runs), label=_label(str(args.model)),
                                    graph_module=result.module)
        except CannotRunHere as exc:  # e.g. a TensorRT engine built here for a GPU machine: keep it, say why
            print(f"not profiled: {exc}")
            result.report["profile"] = {"skipped": str(exc)}
        else:
            print_profile(prof)
            profiles = [prof]
            data = {"profiles": [prof.as_dict()], "compare": {}}
            result.report["profile"] = data
        if args.report:
            write_json(Path(args.report), result.report)
    _write_outputs(args, profiles, data or {"profiles": [], "compare": {}}, compile_report=result.report)
