"""`slimc.compile`: model in, pipeline run, backend artifact and report out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .backend.base import Artifact, CannotRunHere, get_backend
from .errors import SlimcError
from .frontend.inputs import example_inputs_from
from .frontend.specs import describe_source, load_model
from .frontend.capture import capture
from .ir.fidelity import fidelity
from .ir.onnx_io import write_json
from .ir.program import Program
from .ir.runner import run_ir
from .ir.stats import stats_of
from .passes.manager import Instrumentation, PassManager, PassRecord
from .passes.pipeline import Pipeline

__all__ = ["compile", "CompileResult", "load_program"]

DEFAULT_PIPELINE = "fuse-bn,to-onnx,simplify"


@dataclass
class CompileResult:
    """What `compile` returns.

    module:   the nn.Module after the FX-level passes (trainable), or None for an ONNX input
    onnx:     the final onnx.ModelProto, or None when the pipeline stayed at FX level
    artifact: the backend's compiled model (run/save/benchmark), or None without a backend
    report:   the same data as report.json
    """

    program: Program
    module: Any
    onnx: Any
    artifact: Artifact | None
    report: dict
    records: list[PassRecord] = field(default_factory=list)


def load_program(model, example_inputs=None, *, input_shapes: Sequence[str] | None = None,
                 dynamic_batch: bool = False, leaf_modules: Sequence = ()) -> Program:
    """Resolve the model and fix its inputs. A torch model becomes a Program holding its private copy,
    checked by torch.export (symbolic_trace as the fallback); an ONNX model is checked by running it."""
    import onnx

    loaded = load_model(model)
    source = describe_source(model)
    examples = example_inputs_from(example_inputs, input_shapes)
    if isinstance(loaded, onnx.ModelProto):
        return _onnx_program(loaded, examples, dynamic_batch, source)
    if not examples:
        raise SlimcError(
            "slimc needs the input shapes of a PyTorch model: pass example inputs in Python "
            "(slimc.compile(model, torch.randn(1, 3, 224, 224))) or --input-shape 1x3x224x224 on the command line."
        )
    captured = capture(loaded, examples, dynamic_batch=dynamic_batch, leaf_modules=leaf_modules)
    in_names = ("input",) if len(examples) == 1 else tuple(f"input{i}" for i in range(len(examples)))
    return Program(captured.module, examples, in_names, captured.output_names, dynamic_batch, original=loaded,
                   source=source, frontend=captured.frontend)


def _onnx_program(model, examples, dynamic_batch: bool, source: str) -> Program:
    import numpy as np
    import torch
    from onnx import helper

    init = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init]
    if not examples:
        tensors = []
        for i in graph_inputs:
            tt = i.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
            np_dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
            tensors.append(torch.from_numpy(np.zeros(dims, dtype=np_dtype)))
        examples = example_inputs_from(tensors)
    elif len(examples) != len(graph_inputs):
        raise SlimcError(f"the ONNX model has {len(graph_inputs)} inputs "
                         f"({', '.join(i.name for i in graph_inputs)}), but {len(examples)} input shapes were given.")
    names = tuple(i.name for i in graph_inputs)
    outs = tuple(o.name for o in model.graph.output)
    program = Program(model, examples, names, outs, dynamic_batch, original=model, source=source, frontend="onnx")
    try:
        program.run([t.numpy() for t in examples])
    except Exception as exc:  # SlimcError from loading; onnxruntime's own errors for wrong shapes or dtypes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shapes = ", ".join("x".join(map(str, t.shape)) + f":{str(t.dtype).replace('torch.', '')}" for t in examples)
        raise SlimcError(f"the ONNX model does not run on the given input shapes ({shapes}): {first}") from None
    return program


def compile(model, example_inputs=None, pipeline: Pipeline | str | Sequence = DEFAULT_PIPELINE,
            backend: str | None = "onnxruntime", *, input_shapes: Sequence[str] | None = None,
            dynamic_batch: bool = False, leaf_modules: Sequence = (), backend_options: dict | None = None,
            output_dir: str | Path | None = None, report_path: str | Path | None = None,
            dump_ir: str | Path | None = None, dump_ir_changed_only: bool = False, verify_each: bool = False,
            fidelity_samples: int = 8, benchmark_iters: int = 0, on_pass: Callable | None = None) -> CompileResult:
    """Compile a model through a pass pipeline to a backend.

    Example::

        result = slimc.compile(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224),
                               pipeline="fuse-bn,to-onnx,simplify", backend="onnxruntime")
        result.artifact.run([x.numpy()]); result.artifact.save("out/model.onnx")

    model: an nn.Module, 'torchvision:NAME', 'file.py:factory', or a path to an .onnx file.
    backend: 'onnxruntime', 'torch', ... or None for no artifact (the IR only).
    benchmark_iters: when > 0, time the artifact and put median/p90 ms in the report.
    """
    started = time.perf_counter()
    pipe = Pipeline.coerce(pipeline)
    target = get_backend(backend, **(backend_options or {})) if backend else None
    if output_dir is not None:
        out = Path(output_dir)
        # 'out/model.onnx' is saved as that file by the backend (out/ is a directory otherwise): creating a
        # directory of that name here would make the save fail after all the work.
        _check_writable(out.parent if out.suffix else out)
    program = load_program(model, example_inputs, input_shapes=input_shapes, dynamic_batch=dynamic_batch,
                           leaf_modules=leaf_modules)
    end_level = target.consumes if target else None
    if end_level == "fx" and any(p.output_level == "onnx" for p in pipe):
        raise SlimcError(f"backend '{backend}' runs the FX-level module, but the pipeline lowers to ONNX; "
                         "drop the ONNX passes or choose an ONNX backend such as onnxruntime.")
    before = stats_of(program.ir, program.example_inputs)  # the model as given, before any lifting
    if program.level == "onnx" and (end_level == "fx" or any(p.level == "fx" and p.produces is None for p in pipe)):
        program = _lifted(program)
    lowered = pipe.lowered(program.level, end_level)
    inst = Instrumentation(dump_ir=Path(dump_ir) if dump_ir else None, dump_ir_changed_only=dump_ir_changed_only,
                           verify_each=verify_each, on_pass=on_pass)
    final, records = PassManager(lowered, inst).run(program)
    artifact = target.build(final) if target else None
    saved = artifact.save(Path(output_dir)) if (artifact and output_dir is not None) else None
    after = records[-1].stats if records else before
    run_final = artifact.run if artifact else (lambda xs: run_ir(final.ir, xs))
    fid = None
    if fidelity_samples:
        try:
            fid = fidelity(lambda xs: run_ir(program.original, xs), run_final,
                           [program.random_inputs(seed=100 + i) for i in range(fidelity_samples)])
        except CannotRunHere as exc:  # built ahead of time for another machine: keep it, say why unchecked
            fid = {"skipped": str(exc)}
    report = {
        "source": program.source,
        "frontend": program.frontend,
        "inputs": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                   for n, t in zip(program.input_names, program.example_inputs)],
        "pipeline": lowered.print(),
        "passes": [r.as_dict() for r in records],
        "before": before.as_dict(with_ops=True),
        "after": after.as_dict(with_ops=True),
        "fidelity": fid,
        "backend": artifact.describe() if artifact else None,
        "artifact": saved,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if artifact is not None and benchmark_iters > 0:
        try:
            report["benchmark"] = artifact.benchmark(iters=benchmark_iters).as_dict()
        except CannotRunHere as exc:
            report["benchmark"] = {"skipped": str(exc)}
    if report_path is not None:
        write_json(Path(report_path), report)
    module = final.ir if final.level == "fx" else final.fx_module
    return CompileResult(final, module, final.ir if final.level == "onnx" else None, artifact, report, records)


def _lifted(program: Program) -> Program:
    """The ONNX program at the FX level (onnx2torch), for FX passes; the original stays the reference."""
    from .frontend.lift import lift_onnx

    gm = lift_onnx(program.ir)
    return program.with_ir(gm, lifted_from_onnx=True, frontend="onnx2torch")


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".slimc-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SlimcError(f"output directory '{directory}' cannot be written: {exc.strerror}. "
                         "Choose another --output-dir.") from None
