"""`slimc inspect`: a model's inputs/outputs, op histogram, parameters and MACs."""

from __future__ import annotations

import argparse

from .common import human, table


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="summarize a model: inputs/outputs, op histogram, params, MACs",
                       description="Summarize an .onnx/.onnxtxt file, or a torch model spec (with --input-shape).")
    p.add_argument("model")
    p.add_argument("--input-shape", action="append", metavar="SHAPE", help="input shape for torch model specs")
    p.add_argument("--leaf-module", action="append", default=[], metavar="NAME",
                   help="submodule name or class name that torch.fx keeps whole instead of tracing through")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--capability", action="store_true",
                   help="list the ONNX nodes the backend (--backend) cannot take, with the reason for each")
    p.add_argument("--backend", default="tensorrt", help="backend for --capability (tensorrt)")
    p.set_defaults(run=run)


def _backend_view(args: argparse.Namespace) -> int | None:
    """`--capability` and `.engine` files go to the TensorRT backend; None for a plain summary."""
    import json

    from ..errors import SlimcError

    if str(args.model).endswith(".engine"):
        from ..backend.tensorrt import format_engine_info, inspect_engine

        info = inspect_engine(args.model)
        print(json.dumps(info, indent=2) if args.json else format_engine_info(info))
        return 0
    if not args.capability:
        return None
    if args.backend != "tensorrt":
        raise SlimcError(f"--capability is available for --backend tensorrt only, not '{args.backend}'.")
    from ..backend.tensorrt import capability_report, format_capability
    from ..ir.onnx_io import load_onnx

    report = capability_report(load_onnx(args.model))
    print(json.dumps(report, indent=2) if args.json else format_capability(report))
    return 0 if report["supported"] else 1


def _onnx_io(model) -> tuple[list, list]:
    from onnx import helper

    def sig(items):
        out = []
        for vi in items:
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            out.append({"name": vi.name, "shape": dims, "dtype": helper.tensor_dtype_to_string(tt.elem_type)
                        .replace("TensorProto.", "").lower()})
        return out

    init = {t.name for t in model.graph.initializer}
    return sig([i for i in model.graph.input if i.name not in init]), sig(model.graph.output)


def summarize(model_spec: str, input_shapes=None, leaf_modules=()) -> dict:
    from ..compiler import load_program
    from ..ir.stats import stats_of

    program = load_program(model_spec, input_shapes=input_shapes, leaf_modules=leaf_modules)
    stats = stats_of(program.ir, program.example_inputs)
    if program.level == "onnx":
        inputs, outputs = _onnx_io(program.ir)
        opset = {o.domain or "ai.onnx": o.version for o in program.ir.opset_import}
    else:
        inputs = [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                  for n, t in zip(program.input_names, program.example_inputs)]
        outputs, opset = [{"name": n} for n in program.output_names], None
    return {"model": model_spec, "level": program.level, "inputs": inputs, "outputs": outputs, "opset": opset,
            **stats.as_dict(with_ops=True)}


def run(args: argparse.Namespace) -> int:
    import json

    handled = _backend_view(args)
    if handled is not None:
        return handled
    s = summarize(args.model, args.input_shape, args.leaf_module)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['model']}  ({s['level']} level{', opset ' + str(s['opset']) if s['opset'] else ''})")
    for kind in ("inputs", "outputs"):
        for io in s[kind]:
            shape = "x".join(map(str, io.get("shape", []))) or "?"
            print(f"  {kind[:-1]:6} {io['name']}: {shape} {io.get('dtype', '')}".rstrip())
    print(f"params {human(s['params'])} ({s['params']:,})   MACs {human(s['macs'])} ({s['macs']:,})   nodes {s['nodes']}")
    table([["op", "count"]] + [[k, str(v)] for k, v in s["ops"].items()])
    return 0
