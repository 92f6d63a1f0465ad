"""Prune every torchvision classification model with `prune-channels` and check the result.

For each model (random weights): prune at --ratio, check the output shape, export to ONNX
(torch.onnx.export, dynamo=False), run it in ONNX Runtime, and print MACs and params before
and after (both counted on the exported ONNX, so ours and Torch-Pruning's use one counter).
With --torch-pruning, Torch-Pruning (pip install torch-pruning==1.6.1; comparison only) runs
at the same settings (L2 magnitude, same ratio, round_to, classifier ignored) beside it.

    .venv/bin/python tools/zoo_sweep.py --models resnet18,mobilenet_v3_small --torch-pruning
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys
import time
import traceback

import torch
import torch.fx

# Models that need their training resolution (patch/window grids are fixed) or a minimum size.
_INPUT_SIZE = {"vit": 224, "swin": 224, "maxvit": 224, "inception_v3": 128, "googlenet": 64, "alexnet": 224,
               "vgg": 224}  # alexnet/vgg: ONNX needs the adaptive pool to divide evenly
_DEFAULT_SIZE = 64


def input_size(name: str) -> int:
    for prefix, size in _INPUT_SIZE.items():
        if name.startswith(prefix):
            return size
    return _DEFAULT_SIZE


def build(name: str):
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def onnx_check(model, x, want_shape) -> tuple[int, int, str]:
    """Export, run in ONNX Runtime; returns (params, macs, error or '')."""
    import onnx
    import onnxruntime as ort

    from slimc.ir.stats import onnx_stats

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"])
    proto = onnx.load_from_string(buf.getvalue())
    stats = onnx_stats(proto)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    if tuple(out.shape) != tuple(want_shape):
        return stats.params, stats.macs, f"onnx output {tuple(out.shape)} != {tuple(want_shape)}"
    return stats.params, stats.macs, ""


def run_slimc(name, model, x, args):
    from slimc.ir.program import Program
    from slimc.passes.fx.prune_channels import PruneChannels

    gm = torch.fx.symbolic_trace(model)
    program = Program(ir=gm, example_inputs=(x,), input_names=("input",))
    start = time.perf_counter()
    result = PruneChannels(ratio=args.ratio, criterion="l2", round_to=args.round_to,
                           min_channels=args.min_channels).apply(program)
    seconds = time.perf_counter() - start
    return result.program.ir, seconds, result.details


def run_tp(name, model, x, args):
    import torch_pruning as tp

    leaves = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    ignored = [leaves[-1]] if leaves else []  # the classifier: its outputs are the model's outputs
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=args.ratio, ignored_layers=ignored, round_to=args.round_to,
                                  num_heads=heads)
    pruner.step()
    return model, time.perf_counter() - start


def sweep_one(name, args) -> dict:
    row = {"model": name}
    model = build(name)
    size = input_size(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = model(x).shape
    row["params0"], row["macs0"], err = onnx_check(model, x, want)
    try:
        pruned, row["sec"], details = run_slimc(name, model, x, args)
        with torch.no_grad():
            got = pruned(x).shape
        if got != want:
            raise RuntimeError(f"output {tuple(got)} != {tuple(want)}")
        row["params1"], row["macs1"], err = onnx_check(pruned, x, want)
        row["status"] = "ok" if not err else "FAIL " + err
        row["blocked"] = details["groups_blocked"]
        row["groups"] = details["groups_found"]
    except Exception as exc:
        row["status"] = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}"
        if args.verbose:
            traceback.print_exc()
    if args.torch_pruning:
        try:
            with _time_limit(args.tp_timeout):
                tp_model, row["tp_sec"] = run_tp(name, build(name), x, args)
            row["tp_params"], row["tp_macs"], err = onnx_check(tp_model, x, want)
            row["tp_status"] = "ok" if not err else "FAIL " + err
        except Exception as exc:
            row["tp_status"] = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    return row


@contextlib.contextmanager
def _time_limit(seconds: int):
    """Raise TimeoutError after `seconds` (SIGALRM; main thread, Unix only)."""
    def _raise(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _m(v):
    return f"{v / 1e6:9.1f}" if isinstance(v, (int, float)) else f"{'-':>9}"


def _s(v):
    return f"{v:6.2f}" if isinstance(v, float) else f"{'-':>6}"


def print_header(tp_col: bool) -> None:
    head = f"| {'model':<20} | {'in':>3} | {'MMACs':>9} | {'MMACs':>9} | {'Mparams':>9} | {'Mparams':>9} | {'sec':>6} |"
    head += " groups (blocked) | status"
    if tp_col:
        head += " | TP MMACs | TP Mparams | TP sec | TP status"
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    print(f"| {'':<20} | {'':>3} | {'before':>9} | {'after':>9} | {'before':>9} | {'after':>9} | {'':>6} |", flush=True)


def print_row(r: dict, tp_col: bool) -> None:
    line = (f"| {r['model']:<20} | {input_size(r['model']):>3} | {_m(r.get('macs0'))} | {_m(r.get('macs1'))} | "
            f"{_m(r.get('params0'))} | {_m(r.get('params1'))} | {_s(r.get('sec'))} | "
            f"{r.get('groups', '-')} ({r.get('blocked', '-')}) | {r.get('status', '-')}")
    if tp_col:
        line += (f" | {_m(r.get('tp_macs'))} | {_m(r.get('tp_params'))} | {_s(r.get('tp_sec'))} | "
                 f"{r.get('tp_status', '-')}")
    print(line + " |", flush=True)


def main(argv=None) -> int:
    import torchvision

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated names (default: all classification models)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--min-channels", type=int, default=8, help="ours only (Torch-Pruning has no such floor)")
    p.add_argument("--torch-pruning", action="store_true", help="also run Torch-Pruning at the same settings")
    p.add_argument("--tp-timeout", type=int, default=120, help="seconds allowed for Torch-Pruning per model")
    p.add_argument("--max-params", type=float, default=150e6, help="skip models larger than this (memory, time)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a busy machine)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n] or torchvision.models.list_models(module=torchvision.models)
    print_header(args.torch_pruning)
    failures = 0
    for name in names:
        if not args.models and _too_big(name, args.max_params):
            print(f"| {name:<20} | skipped: more than {args.max_params / 1e6:.0f}M parameters |", flush=True)
            continue
        try:
            row = sweep_one(name, args)
        except Exception as exc:  # the original model itself failed to export: say so, go on
            row = {"model": name, "status": f"FAIL (original) {type(exc).__name__}: {str(exc)[:100]}"}
        failures += not row.get("status", "").startswith("ok")
        print_row(row, args.torch_pruning)
    print(f"{len(names) - failures} of {len(names)} ok", flush=True)
    return 1 if failures else 0


_SIZES = {"vit_h_14": 632e6, "vit_l_16": 304e6, "vit_l_32": 306e6, "regnet_y_128gf": 644e6, "regnet_y_32gf": 145e6,
          "regnet_y_16gf": 84e6, "regnet_x_32gf": 107e6, "vgg": 140e6, "convnext_large": 198e6, "efficientnet_v2_l": 118e6}


def _too_big(name: str, limit: float) -> bool:
    size = _SIZES.get(name) or next((v for k, v in _SIZES.items() if name.startswith(k)), 0)
    return size > limit


if __name__ == "__main__":
    sys.exit(main())
