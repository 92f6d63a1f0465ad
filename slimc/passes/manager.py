"""Running a pipeline over a Program, with instrumentation.

Per pass: wall time, whether it changed the IR, statistics after it; optionally the IR dumped
after each pass, a numerical check of every lossless pass (`verify_each`), and, when a pass
raises, a reproducer directory that `slimc opt` replays.
"""

from __future__ import annotations

import shlex
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import SlimcError, first_line
from ..ir.program import Program
from ..ir.stats import Stats, stats_of
from .pipeline import Pipeline
from .registry import Pass

__all__ = ["Instrumentation", "PassRecord", "PassManager", "VerificationError", "PassFailed", "outputs_close"]


class VerificationError(SlimcError):
    """A lossless pass changed the model's outputs beyond tolerance."""


class PassFailed(SlimcError):
    """A pass raised; the message names it and the reproducer written for it."""


@dataclass(frozen=True)
class Instrumentation:
    """What the pass manager records and checks around each pass.

    dump_ir:              directory for the IR after each pass (None: no dumps)
    dump_ir_changed_only: skip dumps of passes that changed nothing
    verify_each:          run each lossless pass's input and output on the same random inputs
    rtol, atol:           tolerance of that check, relative to the largest reference output
    reproducer_dir:       where to write a reproducer when a pass raises (None: a new temp dir)
    on_pass:              called with each PassRecord as it completes (the CLI prints its table row),
                          also for a pass whose --verify-each check failed, before the error is raised
    progress:             a tqdm bar on stderr naming the running pass, its clock ticking (long exports)
    """

    dump_ir: Path | None = None
    dump_ir_changed_only: bool = False
    verify_each: bool = False
    rtol: float = 1e-3
    atol: float = 1e-4
    reproducer_dir: Path | None = None
    on_pass: Callable | None = None
    progress: bool = False


@dataclass
class PassRecord:
    name: str
    level: str
    lossless: bool
    seconds: float
    changed: bool
    stats: Stats
    details: dict = field(default_factory=dict)
    max_abs_err: float | None = None
    verified: bool | None = None  # --verify-each: True passed, False failed, None not checked
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"name": self.name, "level": self.level, "lossless": self.lossless, "seconds": round(self.seconds, 4),
               "changed": self.changed, "stats": self.stats.as_dict(), "details": self.details}
        if self.max_abs_err is not None:
            out["max_abs_err"] = self.max_abs_err
        if self.verified is not None:
            out["verified"] = self.verified
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def outputs_close(ref: list[np.ndarray], got: list[np.ndarray], rtol: float, atol: float) -> tuple[bool, float, str]:
    """(ok, max abs error, reason) comparing output lists; the tolerance scales with the reference's range."""
    if len(ref) != len(got):
        return False, float("inf"), f"{len(ref)} outputs before, {len(got)} after"
    worst = 0.0
    for i, (a, b) in enumerate(zip(ref, got)):
        if tuple(a.shape) != tuple(b.shape):
            return False, float("inf"), f"output {i} shape {tuple(a.shape)} became {tuple(b.shape)}"
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        err = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        worst = max(worst, err)
        scale = float(np.max(np.abs(a64))) if a.size else 0.0
        if not np.isfinite(err) or err > atol + rtol * scale:
            return False, err, f"output {i}: max abs error {err:.3g} > {atol:g} + {rtol:g} x {scale:.3g}"
    return True, worst, ""


class PassManager:
    """Runs a pipeline over a program, lowering it first: `to-onnx` is inserted where an ONNX-level
    pass follows an FX-level program (and at the end when `end_level` is 'onnx'), and FX-level passes
    on an ONNX program are rejected before anything runs.

    Example::

        pm = PassManager(Pipeline.parse("fuse-bn,simplify"), Instrumentation(verify_each=True))
        pm.lowered_for(program).print()   # 'fuse-bn,to-onnx{...},simplify{...}'
        program, records = pm.run(program)
    """

    def __init__(self, pipeline: Pipeline, instrumentation: Instrumentation | None = None,
                 end_level: str | None = None):
        self.pipeline = pipeline
        self.inst = instrumentation or Instrumentation()
        self.end_level = end_level

    def lowered_for(self, program: Program) -> Pipeline:
        """The pipeline that `run` executes on `program`: with the lowering passes it needs."""
        return self.pipeline.lowered(program.level, self.end_level)

    def run(self, program: Program, input_stats: Stats | None = None) -> tuple[Program, list[PassRecord]]:
        """Run the lowered pipeline; `input_stats` (the program's statistics, when the caller has them)
        lets the first pass be checked for parameter growth too."""
        inst = self.inst
        pipeline = self.lowered_for(program)
        records: list[PassRecord] = []
        check_inputs = program.random_inputs(seed=1234) if inst.verify_each else None
        reference = program.run(check_inputs) if inst.verify_each else None
        from ..finetune.distributed import is_main_process

        dump_dir = inst.dump_ir if is_main_process() else None  # under torchrun, rank 0 alone writes dumps
        if dump_dir is not None:
            from ..ir.dump import dump_program

            dump_program(program, dump_dir, "00-input")
        with _PassProgress(len(pipeline), inst.progress) as bar:
            for index, p in enumerate(pipeline, start=1):
                bar.starting(p.name)
                start = time.perf_counter()
                try:
                    result = p.apply(program)
                except SlimcError as exc:
                    raise type(exc)(f"pass '{p.name}': {exc}") from None
                except Exception as exc:
                    raise self._reproducer(pipeline, program, index, p, exc) from exc
                seconds = time.perf_counter() - start
                new = result.program
                previous = records[-1].stats if records else input_stats
                params_before = previous.params if previous is not None else None
                stats = stats_of(new.ir, new.example_inputs) if (result.changed or not records) else records[-1].stats
                record = PassRecord(p.name, p.output_level, p.lossless, seconds, result.changed, stats, result.details)
                if p.lossless and params_before is not None and stats.params > params_before:
                    # A lossless pass computes the same function; more parameters mean it copied a weight
                    # (e.g. folded a Transpose of a tied embedding into a second initializer).
                    record.warnings.append(f"lossless pass grew the parameters from {params_before:,} to "
                                           f"{stats.params:,}")
                if inst.verify_each:
                    reference = self._verify(index, p, new, check_inputs, reference, record)
                if dump_dir is not None and (result.changed or not inst.dump_ir_changed_only):
                    from ..ir.dump import dump_program

                    dump_program(new, dump_dir, f"{index:02d}-{p.name}")
                records.append(record)
                if inst.on_pass is not None:
                    inst.on_pass(record)
                bar.finished()
                program = new
        return program, records

    def _verify(self, index: int, p: Pass, new: Program, check_inputs, reference, record: PassRecord):
        """Run the program after pass `p`: every lossless pass that ran is compared with the program
        before it (whether or not it says it changed anything); returns the new reference outputs."""
        inst = self.inst

        def fail(error: VerificationError):
            record.verified = False
            record.warnings.append(str(error).split(". ")[0])
            if inst.on_pass is not None:
                inst.on_pass(record)  # the failing pass shows in the table before the error ends the run
            error.record = record
            return error

        try:
            got = new.run(check_inputs)
        except Exception as exc:  # a pass that breaks the IR must be named, like one that changes numbers
            first = first_line(exc)
            raise fail(VerificationError(
                f"--verify-each: the program after pass '{p.name}' (#{index}) does not run: {first}. "
                "This is a bug in the pass; run with --dump-ir to see the IR it produced."
            )) from None
        if p.lossless:
            ok, err, why = outputs_close(reference, got, inst.rtol, inst.atol)
            record.max_abs_err = err
            record.verified = ok
            if not ok:
                raise fail(VerificationError(
                    f"--verify-each: pass '{p.name}' (#{index}) is lossless but changed the outputs: {why}. "
                    "This is a bug in the pass; run with --dump-ir to see the IR before and after it."
                ))
        return got

    def _reproducer(self, pipeline: Pipeline, program: Program, index: int, failed: Pass,
                    exc: Exception) -> PassFailed:
        """Write the failing pass's input, the rest of the pipeline and inputs; say how to replay."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        try:
            directory, replay = self._write_reproducer(pipeline, program, index, exc)
        except Exception as write_exc:  # the pass's own error matters more than the reproducer
            return PassFailed(
                f"pass '{failed.name}' (#{index}) raised {type(exc).__name__}: {first}. Writing a reproducer "
                f"failed too ({type(write_exc).__name__}: {write_exc})."
            )
        return PassFailed(
            f"pass '{failed.name}' (#{index}) raised {type(exc).__name__}: {first}. A reproducer (its input IR, "
            f"the pipeline from this pass on, inputs, traceback) is in {directory}; replay it with: {replay}"
        )

    def _write_reproducer(self, pipeline: Pipeline, program: Program, index: int,
                          exc: Exception) -> tuple[Path, str]:
        import torch

        from ..ir.onnx_io import save_onnx

        failed = pipeline.passes[index - 1]
        base = self.inst.reproducer_dir
        if base is not None:
            Path(base).mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=f"slimc-repro-{failed.name}-", dir=base and str(base)))
        if program.level == "onnx":
            model_file = save_onnx(program.ir, directory / "input.onnx")
        else:
            model_file = directory / "input.pt"
            torch.save(program.ir, model_file)
        rest = Pipeline(pipeline.passes[index - 1:]).print()
        (directory / "pipeline.txt").write_text(rest + "\n")
        np.savez(directory / "inputs.npz", *[t.detach().cpu().numpy() for t in program.example_inputs])
        (directory / "error.txt").write_text("".join(traceback.format_exception(exc)))
        shapes = " ".join(
            "--input-shape " + "x".join(map(str, t.shape)) + f":{str(t.dtype).replace('torch.', '')}"
            for t in program.example_inputs
        )
        # `slimc opt` needs -o; the pipeline's last level says which kind of file it can write.
        output = directory / ("output.onnx" if pipeline.passes[-1].output_level == "onnx" else "output.pt")
        replay = (f"slimc opt {shlex.quote(str(model_file))} --pipeline-file {shlex.quote(str(directory / 'pipeline.txt'))}"
                  f" -o {shlex.quote(str(output))}")
        if program.level == "fx":
            replay += f" {shapes} --trust-pickle"  # input.pt is slimc's own pickled GraphModule
        return directory, replay


class _PassProgress:
    """A tqdm bar over the passes whose clock keeps ticking during a long pass (an export, onnxsim)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None
        self._stop = None

    def __enter__(self):
        if self.enabled:
            import threading

            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="pass", leave=False, dynamic_ncols=True)
            self._stop = threading.Event()
            threading.Thread(target=self._tick, daemon=True, name="slimc-pass-progress").start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.bar.refresh()

    def starting(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(name)

    def finished(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self._stop.set()
            self.bar.close()
