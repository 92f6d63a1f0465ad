"""The checks of tools/zoo_sweep.py: ONNX export, ONNX Runtime run and MAC count (one counter for every
side), output shapes, the layers that feed a model's outputs, and a detector run whole with a new backbone."""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
import torch.nn as nn

__all__ = ["onnx_macs", "onnx_check", "output_layers", "run_detector", "shape_error", "shapes"]


def shapes(out) -> list[tuple]:
    """The shapes of every tensor a model returns (dicts, ModelOutput and tuples flattened in order)."""
    from torch.utils._pytree import tree_leaves

    return [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def onnx_macs(proto, x) -> tuple[int, int]:
    """(params, MACs) of an ONNX model: one counter for the dense model, slimc's artifact and Torch-Pruning's."""
    from slimc.ir.stats import onnx_stats

    stats = onnx_stats(proto, (x,))
    if not stats.macs:  # shapes computed at run time (Shape -> Reshape): fold them, then count
        import onnxsim

        stats = onnx_stats(onnxsim.simplify(proto)[0], (x,))
    return stats.params, stats.macs


def onnx_check(model, x, want: list[tuple], dynamo: bool = False) -> tuple[int, int, str]:
    """Export to ONNX (a file: models over 2 GB keep their weights beside it), run it in ONNX Runtime;
    returns (params, macs, error or ''). The TorchScript exporter first (fast) unless `dynamo`; the dynamo
    exporter when it fails or writes a graph ONNX Runtime cannot run (MViT: a data-dependent `If`), and for
    MViT at once (TorchScript's export of mvit_v2_s at 16x224x224 ran out of memory here)."""
    exporters = (True,) if dynamo or type(model).__name__ == "MViT" else (False, True)
    for use_dynamo in exporters:
        try:
            return _onnx_check_with(model, x, want, use_dynamo)
        except Exception:
            if use_dynamo:
                raise
    raise AssertionError("unreachable")


def _onnx_check_with(model, x, want, dynamo: bool) -> tuple[int, int, str]:
    import tempfile

    import onnx
    import onnxruntime as ort

    quiet = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            if dynamo:
                torch.onnx.export(model, (x,), path, dynamo=True, input_names=["input"], verbose=False)
            else:
                torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"])
        params, macs = onnx_macs(onnx.load(path, load_external_data=False), x)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = [tuple(o.shape) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]
    return params, macs, shape_error("onnx", got, want)


def shape_error(where: str, got: list[tuple], want: list[tuple]) -> str:
    if got == want:
        return ""
    first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    g, w = (v[first] if first < len(v) else None for v in (got, want))
    return f"{where} output {first}: {g} != {w} ({len(got)} vs {len(want)} outputs)"


def output_layers(model, x) -> list[nn.Module]:
    """The conv/linear layers whose outputs reach the model's outputs through parameter-free ops
    (ReLU, pooling, adds, upsampling): what Torch-Pruning must leave whole for the outputs to keep
    their widths (the backbone of a detector has one per feature map)."""
    from torch.utils._pytree import tree_leaves

    owner = {p: m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))
             for p in m.parameters(recurse=False)}
    with torch.enable_grad():
        outs = [t for t in tree_leaves(model(x)) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        found, seen, todo = [], set(), [t.grad_fn for t in outs]
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            layer = next((owner.get(getattr(n, "variable", None)) for n, _ in fn.next_functions
                          if n is not None and getattr(n, "variable", None) in owner), None)
            if layer is not None and type(fn).__name__.startswith(("Convolution", "Addmm", "Mm", "Linear")):
                if layer not in found:
                    found.append(layer)
                continue  # a layer ends the walk on this path
            todo.extend(n for n, _ in fn.next_functions if n is not None)
    return found


def run_detector(detector, backbone, name) -> str:
    """Put the pruned backbone back and run the whole detector (eval, one small image) in torch."""
    detector.backbone = backbone
    detector.eval()
    image = torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            out = detector([image])
    except Exception as exc:
        return f"detector with the pruned backbone: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    if not (isinstance(out, list) and len(out) == 1 and "boxes" in out[0]):
        return f"detector with the pruned backbone returned {type(out).__name__}, not one dict with boxes"
    return ""
