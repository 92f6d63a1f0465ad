"""`slimc.compile`: model in, pipeline run, backend artifact and report out."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .backend.base import Artifact, CannotRunHere, get_backend
from .errors import SlimcError, first_line
from .frontend.inputs import check_tensor_fits, example_inputs_from
from .frontend.specs import describe_source, load_model
from .frontend.capture import capture
from .ir.fidelity import fidelity
from .finetune.distributed import is_main_process
from .ir.onnx_io import write_json
from .ir.program import Program
from .ir.runner import run_ir
from .ir.stats import stats_of
from .compile_options import BackendSpec, InputOptions, ReportOptions, with_shorthands
from .passes.manager import Instrumentation, PassManager, PassRecord
from .passes.pipeline import Pipeline
from .preflight import check_compile_run, check_leaf_modules

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

    @property
    def ok(self) -> bool:
        """False when the fidelity check failed (NaN/Inf outputs, a changed shape, a model that fails)."""
        return (self.report.get("fidelity") or {}).get("ok") is not False


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
    check_leaf_modules(loaded, leaf_modules)
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
            check_tensor_fits(dims, np.dtype(np_dtype).itemsize, f"the ONNX model's input '{i.name}'")
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
        first = first_line(exc)
        shapes = ", ".join("x".join(map(str, t.shape)) + f":{str(t.dtype).replace('torch.', '')}" for t in examples)
        raise SlimcError(f"the ONNX model does not run on the given input shapes ({shapes}): {first}") from None
    return program


def compile(model, example_inputs=None, pipeline: Pipeline | str | Sequence = DEFAULT_PIPELINE,
            backend: BackendSpec | str | None = "onnxruntime", *, inputs: InputOptions | None = None,
            instrumentation: Instrumentation | None = None, report: ReportOptions | None = None,
            input_shapes: Sequence[str] | None = None, dynamic_batch: bool | None = None,
            leaf_modules: Sequence | None = None, seed: int | None = None, backend_options: dict | None = None,
            output_dir: str | Path | None = None, fidelity_samples: int | None = None,
            benchmark_iters: int | None = None) -> CompileResult:
    """Compile a model through a pass pipeline to a backend.

    Example::

        result = slimc.compile(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224),
                               pipeline="fuse-bn,to-onnx,simplify", backend="onnxruntime")
        result.artifact.run([x.numpy()]); result.artifact.save("out/model.onnx")

    model: an nn.Module, 'torchvision:NAME', 'file.py:factory', or a path to an .onnx file.
    backend: 'onnxruntime', 'torch', ... (or a BackendSpec with options), None for no artifact (the IR only).
    inputs, instrumentation, report: the options objects (slimc.InputOptions, slimc.Instrumentation,
        slimc.ReportOptions). The keyword shorthands below set one field of one of them (given beside
        the object, the shorthand wins): input_shapes, dynamic_batch, leaf_modules, seed -> inputs;
        backend_options -> backend; output_dir, fidelity_samples, benchmark_iters -> report.
    """
    started = time.perf_counter()
    inputs = with_shorthands(inputs or InputOptions(), shapes=input_shapes, dynamic_batch=dynamic_batch,
                             leaf_modules=leaf_modules, seed=seed)
    report_opts = with_shorthands(report or ReportOptions(), output_dir=output_dir,
                                  fidelity_samples=fidelity_samples, benchmark_iters=benchmark_iters)
    target_spec = BackendSpec.coerce(backend, backend_options)
    inst = instrumentation or Instrumentation()
    pipe = Pipeline.coerce(pipeline)
    target = get_backend(target_spec.name, **dict(target_spec.options)) if target_spec.name else None
    check_compile_run(model, backend=target_spec.name if target else None, output_dir=report_opts.output_dir,
                      report_path=report_opts.path, dump_ir=inst.dump_ir, benchmark_iters=report_opts.benchmark_iters,
                      fidelity_samples=report_opts.fidelity_samples)
    with seeded(inputs.seed):  # 'torchvision:NAME' and factories get the same random weights every run
        program = load_program(model, example_inputs, input_shapes=inputs.shapes, dynamic_batch=inputs.dynamic_batch,
                               leaf_modules=inputs.leaf_modules)
    end_level = target.consumes if target else None
    if end_level == "fx" and any(p.output_level == "onnx" for p in pipe):
        raise SlimcError(f"backend '{target_spec.name}' runs the FX-level module, but the pipeline lowers to ONNX; "
                         "drop the ONNX passes or choose an ONNX backend such as onnxruntime.")
    before = stats_of(program.ir, program.example_inputs)  # the model as given, before any lifting
    lifted = program.level == "onnx" and (end_level == "fx" or any(p.level == "fx" and p.produces is None
                                                                     for p in pipe))
    if lifted:
        program = _lifted(program)
    manager = PassManager(pipe, inst, end_level)
    lowered = manager.lowered_for(program)
    final, records = manager.run(program, input_stats=None if lifted else before)
    artifact = target.build(final) if target else None
    # Under torchrun every rank compiles the same model (fine-tuning is data-parallel); only rank 0 writes.
    writes = is_main_process()
    saved = (artifact.save(Path(report_opts.output_dir))
             if (artifact and report_opts.output_dir is not None and writes) else None)
    after = records[-1].stats if records else before
    fid = _fidelity(program, final, artifact, report_opts.fidelity_samples, inputs.seed)
    warnings = [f"{r.name}: {w}" for r in records for w in r.warnings]
    if after.params > before.params and all(r.lossless for r in records):
        warnings.append(f"the pipeline is lossless but grew the parameters from {before.params:,} to {after.params:,}")
    report = {
        "source": program.source,
        "frontend": program.frontend,
        "seed": inputs.seed,
        "inputs": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                   for n, t in zip(program.input_names, program.example_inputs)],
        "pipeline": lowered.print(),
        "passes": [r.as_dict() for r in records],
        "before": before.as_dict(with_ops=True),
        "after": after.as_dict(with_ops=True),
        "fidelity": fid,
        "warnings": warnings,
        "backend": artifact.describe() if artifact else None,
        "artifact": saved,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if artifact is not None and report_opts.benchmark_iters > 0:
        try:
            report["benchmark"] = artifact.benchmark(iters=report_opts.benchmark_iters).as_dict()
        except CannotRunHere as exc:
            report["benchmark"] = {"skipped": str(exc)}
    if report_opts.path is not None and writes:
        write_json(Path(report_opts.path), report)
    module = final.ir if final.level == "fx" else final.fx_module
    return CompileResult(final, module, final.ir if final.level == "onnx" else None, artifact, report, records)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch, numpy and random inside the block; the caller's random state is restored after."""
    import random

    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _fidelity(program: Program, final: Program, artifact, samples: int, seed: int) -> dict | None:
    """The artifact (or the final IR) against the original model; never raises (see ir/fidelity.py)."""
    if not samples:
        return None
    run_final = artifact.run if artifact else (lambda xs: run_ir(final.ir, xs))
    examples = [t.detach().cpu().numpy() for t in program.example_inputs]
    try:
        sets = [program.random_inputs(seed=100 + 1000 * seed + i) for i in range(samples)]
        return fidelity(lambda xs: run_ir(program.original, xs), run_final, sets, fallback=examples,
                        passthrough=(CannotRunHere,))
    except CannotRunHere as exc:  # built ahead of time for another machine: keep it, say why unchecked
        return {"skipped": str(exc)}
    except Exception as exc:  # the check must not end a compile whose artifact is built
        return {"error": f"failed to measure: {first_line(exc)}"}


def _lifted(program: Program) -> Program:
    """The ONNX program at the FX level (onnx2torch), for FX passes; the original stays the reference."""
    from .frontend.lift import lift_onnx

    gm = lift_onnx(program.ir)
    return program.with_ir(gm, lifted_from_onnx=True, frontend="onnx2torch")
