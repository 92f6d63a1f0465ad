"""Pieces shared by the CLI commands: common options, number formatting, tables."""

from __future__ import annotations

import argparse
import sys
from ..ir.stats import human  # noqa: F401  (the CLI tables and the HTML report count alike)

__all__ = ["add_model_args", "add_pipeline_args", "pipeline_text", "input_options", "instrumentation", "human",
           "table", "PassTable", "print_fidelity", "FIDELITY_FAILED", "print_err"]

# Exit code when the compile ran but its fidelity check failed (NaN/Inf outputs, a changed output shape,
# a compiled model that fails where the original runs); 2 stays "bad input" (SlimcError).
FIDELITY_FAILED = 3


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
    p.add_argument("--print-pipeline", action="store_true",
                   help="print the canonical pipeline, lowering passes inserted and every option filled in, and exit")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of model creation (torchvision:NAME weights) and the check inputs (default 0)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after each pass into DIR")
    p.add_argument("--dump-ir-changed-only", action="store_true", help="dump only passes that changed the IR")
    p.add_argument("--verify-each", action="store_true",
                   help="check every lossless pass numerically on random inputs; fail naming the pass")


def input_options(args):
    from ..compile_options import InputOptions

    return InputOptions(shapes=tuple(args.input_shape) if args.input_shape else None,
                        dynamic_batch=args.dynamic_batch, leaf_modules=tuple(args.leaf_module),
                        seed=getattr(args, "seed", 0))


def instrumentation(args, on_pass=None):
    """The pass manager's options from the pipeline flags; rows stream through `on_pass`."""
    from pathlib import Path

    from ..passes.manager import Instrumentation

    return Instrumentation(dump_ir=Path(args.dump_ir) if args.dump_ir else None,
                           dump_ir_changed_only=args.dump_ir_changed_only, verify_each=args.verify_each,
                           on_pass=on_pass, progress=sys.stderr.isatty())


def start_level(model: str) -> str:
    """The IR level a model spec starts at, without loading it (for --print-pipeline)."""
    return "onnx" if str(model).endswith((".onnx", ".onnxtxt")) else "fx"


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


def table(rows: list[list[str]], out=None) -> None:
    out = out or sys.stdout  # looked up per call: a default bound at import misses later redirections
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=out)


class PassTable:
    """The per-pass table, printed one row as each pass finishes (the widths are fixed up front).

    `check` is --verify-each's verdict: 'ok' with the max abs error, FAILED, or '-' (not checked).
    """

    COLUMNS = ("#", "pass", "level", "seconds", "changed", "params", "MACs", "nodes", "check")

    def __init__(self, pass_names, out=None):
        self.out = out
        name_w = max([len(n) for n in pass_names] + [len("to-onnx"), len("(fidelity)")])
        self.widths = [3, name_w, 5, 8, 7, 8, 8, 6, 10]
        self.count = 0
        self._started = False

    def _line(self, cells) -> None:
        if not self._started:  # the header waits for the first row: a model that fails to load prints none
            self._started = True
            self._line(self.COLUMNS)
            self._line(["-" * w for w in self.widths])
        text = "  ".join(str(c).ljust(w) for c, w in zip(cells, self.widths)).rstrip()
        print(text, file=self.out or sys.stdout, flush=True)

    def row(self, record) -> None:
        self.count += 1
        s = record.stats
        if record.verified is None:
            check = "-"
        elif record.verified:
            check = "ok" if record.max_abs_err is None else f"ok {record.max_abs_err:.1e}"
        else:
            check = "FAILED"
        cells = [self.count, record.name, record.level, f"{record.seconds:.3f}", "yes" if record.changed else "no",
                 human(s.params) + ("!" if record.warnings else ""), human(s.macs), s.nodes, check]
        self._line(cells)
        for w in record.warnings:
            print(f"    ! {w}", file=self.out or sys.stdout, flush=True)

    def fidelity_row(self, fid: dict | None) -> None:
        """The final check as the table's last row: a NaN or a changed shape reads FAILED here too."""
        if not fid or "skipped" in fid:
            return
        verdict = "FAILED" if fid.get("ok") is False else ("unmeasured" if "error" in fid else "ok")
        self._line(["", "(fidelity)", "", "", "", "", "", "", verdict])


def print_fidelity(fid: dict | None) -> bool:
    """Print the fidelity line; False when the check failed."""
    if not fid:
        return True
    if "skipped" in fid:
        print(f"fidelity not checked: {fid['skipped']}")
        return True
    if "error" in fid:
        print(f"fidelity: {fid['error']}")
        return True
    if fid.get("ok") is False:
        print(f"fidelity FAILED: {fid['failure']}", flush=True)
    if fid.get("max_abs_err") is not None and fid.get("rel_err") is not None:
        top1 = "-" if fid["top1_agreement"] is None else f"{fid['top1_agreement']:.3f}"
        print(f"fidelity vs original ({fid['samples']} {'example' if fid.get('inputs') == 'examples' else 'random'} "
              f"inputs): max abs err {fid['max_abs_err']:.3g}, rel err {fid['rel_err']:.3g}, "
              f"cosine {fid['cosine']:.6f}, top-1 agreement {top1}")
    return fid.get("ok") is not False


def print_err(message: str) -> None:
    print(f"slimc: error: {message}", file=sys.stderr)
