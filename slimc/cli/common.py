"""Pieces shared by the CLI commands: common options, number formatting, tables."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_model_args", "add_pipeline_args", "pipeline_text", "human", "table", "print_pass_table", "print_err"]


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision:NAME, path/to/file.py:factory, model.onnx, model.onnxtxt or model.pt")
    p.add_argument("--input-shape", action="append", metavar="SHAPE",
                   help="input shape like 1x3x224x224 (dtype: 1x128:int64); repeat once per input")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a symbolic batch axis")
    p.add_argument("--leaf-module", action="append", default=[], metavar="NAME",
                   help="submodule name or class name that torch.fx keeps whole instead of tracing through")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let a .pt model file hold a whole pickled module; unpickling runs code named in the file, "
                        "so only for files you made or trust (default: torch.load(weights_only=True))")


def add_pipeline_args(p: argparse.ArgumentParser, default: str | None) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pipeline", default=None, help=f"pass pipeline text (default: {default})" if default else
                   "pass pipeline text")
    g.add_argument("--pipeline-file", help="file with one pass per line, '#' comments")
    p.add_argument("--print-pipeline", action="store_true", help="print the canonical pipeline with every option")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after each pass into DIR")
    p.add_argument("--dump-ir-changed-only", action="store_true", help="dump only passes that changed the IR")
    p.add_argument("--verify-each", action="store_true",
                   help="check every lossless pass numerically on random inputs; fail naming the pass")


def pipeline_text(args, default: str | None) -> str:
    from ..passes.pipeline import read_pipeline_file

    if args.pipeline_file:
        return read_pipeline_file(args.pipeline_file)
    if args.pipeline is not None:
        return args.pipeline
    if default is None:
        from ..errors import SlimcError

        raise SlimcError("give a pipeline with --pipeline TEXT or --pipeline-file FILE.")
    return default


def human(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def table(rows: list[list[str]], out=None) -> None:
    out = out or sys.stdout  # looked up per call: a default bound at import misses later redirections
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_pass_table(report: dict, out=None) -> None:
    b = report["before"]
    rows = [["#", "pass", "level", "seconds", "changed", "params", "MACs", "nodes"],
            ["0", "(input)", "", "", "", human(b["params"]), human(b["macs"]), str(b["nodes"])]]
    for i, p in enumerate(report["passes"], start=1):
        s = p["stats"]
        rows.append([str(i), p["name"], p["level"], f"{p['seconds']:.3f}", "yes" if p["changed"] else "no",
                     human(s["params"]), human(s["macs"]), str(s["nodes"])])
    table(rows, out)


def print_err(message: str) -> None:
    print(f"slimc: error: {message}", file=sys.stderr)
