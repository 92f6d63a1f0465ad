"""Inference latency of slimc's compiled models against the usual runtimes, all measured in one run.

Usage:
    .venv/bin/python tools/bench_runtimes.py [--models resnet50,mobilenet_v2,efficientnet_b0,vit_b_16]
        [--batch 1,8] [--device cpu|cuda] [--iters 30] [--rounds 3] [--json FILE]

For every model and batch size (static exports, one per batch), the rows are:

  torch eager / torch.compile            the torchvision model itself
  plain export -> ORT / OpenVINO         torch.onnx.export(dynamo=False, opset 17), no other change
  onnxsim only -> ORT                    the plain export through onnxsim (issue 5 comparison)
  slimc dense -> ORT / OpenVINO          the lossless pipeline (fuse-bn,...,dedupe-weights; `fuse` if registered)
  slimc pruned 50% -> ORT / OpenVINO     fuse-bn,prune-channels{ratio=0.5},... (when prune-channels is registered)
  Torch-Pruning 50% -> ORT / OpenVINO    torch-pruning MagnitudePruner (L2, ratio 0.5, round_to 8, classifier
                                         kept) then slimc's lossless pipeline
  slimc int8 -> ORT / OpenVINO           the lossless pipeline + quantize-int8 (QDQ, per-channel, minmax)
  slimc pruned 50% + int8 -> ORT / OV    the pruned pipeline + quantize-int8
  ORT quantize_static -> ORT             ONNX Runtime's own tool on the plain export, as its docs say
                                         (quant_pre_process, then quantize_static QDQ, per-channel, U8/S8)
  NNCF int8 (OpenVINO IR) -> OpenVINO    nncf.quantize on the OpenVINO model of the plain export
  NNCF int8 (ONNX QDQ) -> ORT / OpenVINO nncf.quantize on the plain export's ONNX graph

The int8 rows calibrate on --calib-samples random inputs (the same number for slimc, ORT and NNCF):
latency does not depend on what the ranges are; accuracy is measured by tools/accuracy_int8.py.
Model names are torchvision's, plus bert_base: a BERT-base-shaped encoder (transformers BertModel,
12 layers, hidden 768, 12 heads, random weights) on --seq-len token ids.

Measurements are interleaved: every row is timed for iters/rounds calls, round after round, so
machine noise hits all rows alike; median and p90 are over all the row's calls. ORT, OpenVINO and
torch use as many threads as the machine has cores (--threads to change). "vs ORT" is the speed-up
over the plain export on ONNX Runtime (> 1 is faster), by median and by min. GFLOP/s is 2 x MACs / median
latency, MACs counted by slimc.ir.stats on the row's ONNX graph (batch included), set against a float32
matmul measured in torch in the same run. Each table's title carries the load average before/after its rounds.

On a loaded machine: --kernel-times CALLS profiles every ONNX Runtime row afterwards (at 1 thread and at
--threads) and prints each row's summed fastest node times, the per-core work that the load does not move;
--ort-spinning off turns ORT's worker spinning off for every row alike.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_kernel_times import ort_kernel_times, print_kernel_table  # noqa: E402  (tools/, beside this file)

LOSSLESS = ["fuse-bn", "to-onnx", "fold-constants", "simplify", "eliminate-dead", "dedupe-weights"]
DEFAULT_MODELS = "resnet50,mobilenet_v2,efficientnet_b0,vit_b_16"
INT8_LABELS = ("slimc int8", "slimc pruned 50% + int8", "ORT quantize_static", "NNCF int8 (OpenVINO IR)",
               "NNCF int8 (ONNX QDQ)")
ISSUE5_MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")
# --ort-spinning off: every onnxruntime session (every row alike) gets session.intra_op.allow_spinning=0.
ORT_SPIN = {"on": True}


@dataclass
class Row:
    """One measured configuration; `fn` runs one inference, `times` collects ms per call."""

    name: str
    runtime: str
    fn: Callable | None = None
    macs: int | None = None
    note: str = ""
    times: list = field(default_factory=list)
    onnx: tuple | None = None  # (ONNX graph, feed) an onnxruntime row runs, for --kernel-times
    kernel_ms: dict = field(default_factory=dict)  # threads -> {"total": ms, "glue": ms}, from --kernel-times

    def summary(self) -> dict:
        if not self.times:
            return {"name": self.name, "runtime": self.runtime, "note": self.note, "macs": self.macs}
        t = sorted(self.times)
        p90 = t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
        return {"name": self.name, "runtime": self.runtime, "median_ms": statistics.median(t), "p90_ms": p90,
                "min_ms": t[0],
                "iters": len(t), "macs": self.macs, "note": self.note, "times_ms": self.times,
                **({"kernel_ms": self.kernel_ms} if self.kernel_ms else {})}


# ---- pipelines -----------------------------------------------------------------------

def lossless_pipeline() -> str:
    import slimc

    passes = list(LOSSLESS)
    if "fuse" in slimc.registered_passes():
        passes.insert(passes.index("simplify") + 1, "fuse")
    return ",".join(passes)


def pruned_pipeline() -> str | None:
    import slimc

    if "prune-channels" not in slimc.registered_passes():
        return None
    rest = lossless_pipeline().split(",")
    return ",".join(rest[:1] + ["prune-channels{ratio=0.5}"] + rest[1:])


def int8_step(samples: int) -> str:
    return f"quantize-int8{{calib=random samples={samples}}}"


# ---- models --------------------------------------------------------------------------

def make_model(name: str, batch: int, args):
    """(module, example input) for a torchvision name or bert_base (random weights, nothing downloaded)."""
    import torch

    torch.manual_seed(0)
    if name == "bert_base":
        from transformers import BertConfig, BertModel

        class LastHiddenState(torch.nn.Module):
            """BertModel -> its last hidden state only (one tensor out, like the vision models)."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids):
                return self.inner(input_ids=input_ids).last_hidden_state

        cfg = BertConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=512)
        return LastHiddenState(BertModel(cfg)).eval(), torch.randint(0, cfg.vocab_size, (batch, args.seq_len))
    import torchvision

    return getattr(torchvision.models, name)(weights=None).eval(), torch.randn(batch, 3, args.resolution,
                                                                               args.resolution)


# ---- int8 baselines ------------------------------------------------------------------

def _calib_arrays(x_np, samples: int) -> list:
    """`samples` random arrays shaped like x_np (standard normal, or token ids below x_np's max)."""
    import numpy as np

    rng = np.random.default_rng(7000)
    n = max(1, -(-samples // x_np.shape[0]))
    if np.issubdtype(x_np.dtype, np.floating):
        return [rng.standard_normal(x_np.shape).astype(x_np.dtype) for _ in range(n)]
    return [rng.integers(0, int(x_np.max()) + 1, x_np.shape).astype(x_np.dtype) for _ in range(n)]


def ort_quantize_static(plain, x_np, samples: int):
    """ONNX Runtime's documented flow: quant_pre_process, then quantize_static (QDQ, per-channel, U8/S8)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = plain.graph.input[0].name
    feeds = [{name: a} for a in _calib_arrays(x_np, samples)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (os.path.join(tmp, f) for f in ("m.onnx", "pre.onnx", "q.onnx"))
        onnx.save(plain, src)
        quant_pre_process(src, pre)
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(out)


def nncf_quantize(model, x_np, samples: int, transformer: bool):
    """nncf.quantize (default preset: symmetric, per-channel weights) on an OpenVINO or ONNX model."""
    import nncf

    items = _calib_arrays(x_np, samples)
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    if hasattr(model, "graph"):  # onnx.ModelProto
        name = model.graph.input[0].name
        dataset = nncf.Dataset(items, lambda a: {name: a})
    else:
        dataset = nncf.Dataset(items)
    return nncf.quantize(model, dataset, subset_size=len(items) * x_np.shape[0], **kwargs)


def ort_fused_ops(model) -> str:
    """What ONNX Runtime's CPU provider turned the QDQ graph into: int8 kernels vs float compute ops left."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    int8 = {k: v for k, v in ops.items() if k.startswith("QLinear") or k in ("QGemm", "MatMulInteger", "ConvInteger",
                                                                              "QAttention", "DynamicQuantizeMatMul")}
    flt = {k: v for k, v in ops.items() if k in ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "NchwcConv")}
    show = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"  # noqa: E731
    return f"int8 kernels: {show(int8)}; float compute ops: {show(flt)}"


def ov_precisions(ov_model, threads: int) -> str:
    """Runtime precision of the convolution / matmul layers in OpenVINO's compiled (execution) graph."""
    import collections

    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    compiled = ov.Core().compile_model(ov_model, "CPU", {props.inference_num_threads: threads,
                                                        hints.inference_precision: "f32"})
    seen = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        keys = set(info.keys())
        kind = info["layerType"].astype(str) if "layerType" in keys else op.get_type_name()
        if kind in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution"):
            seen[f"{kind} {info['runtimePrecision'].astype(str) if 'runtimePrecision' in keys else '?'}"] += 1
    return "layers by runtimePrecision: " + (", ".join(f"{k} x{v}" for k, v in sorted(seen.items())) or "none")


def openvino_model_runner(ov_model, x_np, threads: int):
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    # f32 for the ops left in float, as the plain OpenVINO row and slimc's backend (this CPU would pick bf16)
    compiled = ov.Core().compile_model(ov_model, "CPU", {hints.performance_mode: hints.PerformanceMode.LATENCY,
                                                        props.inference_num_threads: threads,
                                                        hints.inference_precision: "f32"})
    req = compiled.create_infer_request()
    return lambda: req.infer({0: x_np}, share_inputs=True)


def ov_convert(model):
    import tempfile

    import onnx
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        onnx.save(model, path)
        return ov.convert_model(path)


# ---- machine rate --------------------------------------------------------------------

def matmul_runner(device: str, n: int = 2048):
    """One n x n float32 matmul per call (a row timed beside the models: same noise)."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        a @ b
        sync()

    return call


def matmul_gflops(device: str, n: int = 2048, seconds: float = 1.0) -> float:
    """Best-of float32 n x n matmul rate in torch, GFLOP/s."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---- runtimes ------------------------------------------------------------------------

def export_plain(model, x):
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"])
    return onnx.load_from_string(buf.getvalue())


def ort_runner(model, x_np, threads: int, device: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not ORT_SPIN["on"]:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    feed = {sess.get_inputs()[0].name: x_np}

    def call():
        return sess.run(None, feed)

    call.onnx = (model, feed)  # for --kernel-times: the graph this row runs and its inputs
    return call


def openvino_runner(model, x_np, threads: int, device: str):
    """Plain OpenVINO: convert_model + compile_model(CPU, LATENCY, f32, threads); no slimc code."""
    import tempfile

    import onnx
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    if device != "cpu":
        raise RuntimeError("OpenVINO targets Intel devices; no NVIDIA GPU plugin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        onnx.save(model, path)
        ov_model = ov.convert_model(path)
    compiled = ov.Core().compile_model(ov_model, "CPU", {hints.performance_mode: hints.PerformanceMode.LATENCY,
                                                        props.inference_num_threads: threads,
                                                        hints.inference_precision: "f32"})
    req = compiled.create_infer_request()
    return lambda: req.infer({0: x_np}, share_inputs=True)


def slimc_runner(program, x_np, backend: str, threads: int, device: str):
    """slimc's own backend artifact built from a compiled program."""
    # The backend classes directly, not get_backend: that imports every registered backend (TensorRT too).
    if backend == "onnxruntime" and not ORT_SPIN["on"]:
        # slimc's backend has no spinning option; its session is ort_runner's (threads, ORT_ENABLE_ALL) otherwise.
        return ort_runner(program.ir, x_np, threads, device)
    if backend == "onnxruntime":
        from slimc.backend.onnxruntime import OnnxRuntimeBackend

        providers = "CUDAExecutionProvider,CPUExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        art = OnnxRuntimeBackend(options={"threads": threads, "providers": providers}).build(program)

        def call():
            return art.run([x_np])

        call.onnx = (program.ir, {program.ir.graph.input[0].name: x_np})  # for --kernel-times
        return call
    else:
        from slimc.backend.openvino import OpenVinoBackend

        if device != "cpu":
            raise RuntimeError("OpenVINO targets Intel devices; no NVIDIA GPU plugin")
        art = OpenVinoBackend(options={"threads": threads, "hint": "LATENCY"}).build(program)
    return lambda: art.run([x_np])


def torch_runner(model, x):
    import torch

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def call():
        with torch.inference_mode():
            model(x)
        sync()

    return call


def torch_pruning_model(name: str, model, x):
    """Torch-Pruning 1.6.1 MagnitudePruner, L2, ratio 0.5, round_to 8, final classifier ignored."""
    import copy

    import torch
    import torch_pruning as tp

    model = copy.deepcopy(model)
    classifier = _classifier(model)
    kwargs = {}
    if name.startswith("vit"):
        # ViT: prune heads' dims consistently, keep class token / position embedding shapes coherent.
        kwargs["num_heads"] = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
        kwargs["unwrapped_parameters"] = [(model.class_token, 2), (model.encoder.pos_embedding, 2)]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, round_to=8, ignored_layers=[classifier], **kwargs)
    pruner.step()
    if name.startswith("vit"):
        for m in model.modules():
            if isinstance(m, torch.nn.MultiheadAttention):
                m.embed_dim = m.in_proj_weight.shape[0] // 3
                m.head_dim = m.embed_dim // m.num_heads
        model.hidden_dim = model.conv_proj.out_channels
    model.eval()
    with torch.no_grad():
        model(x)
    return model


def _quiet_compile(model, x, pipeline: str):
    """slimc.compile to ONNX only; the exporter's own prints (whole graphs on failure) are kept off stdout."""
    import contextlib

    import slimc

    with contextlib.redirect_stdout(io.StringIO()):
        return slimc.compile(model, x, pipeline=pipeline, backend=None, fidelity_samples=0)


def _classifier(model):
    import torch

    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    return last


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:110] if text else ''}"


# ---- one model, one batch ------------------------------------------------------------

def build_rows(name: str, batch: int, args) -> tuple[list[Row], dict]:
    import torch

    from slimc.ir.stats import stats_of

    model, x = make_model(name, batch, args)
    x_np = x.numpy()
    dev = args.device
    threads = args.threads
    rows: list[Row] = []
    info: dict = {"notes": []}

    def want(row_name: str, runtime: str) -> bool:
        return not args.rows or any(p.strip().lower() in f"{row_name}/{runtime}".lower() for p in args.rows.split(","))

    def add(row_name: str, runtime: str, make: Callable, macs=None):
        if not want(row_name, runtime):
            return
        try:
            fn = make()
            fn()  # warm-up call also checks that it runs
            rows.append(Row(row_name, runtime, fn, macs, onnx=getattr(fn, "onnx", None)))
        except Exception as exc:  # a row that cannot run is reported, not fatal
            if args.tracebacks:
                traceback.print_exc()
            rows.append(Row(row_name, runtime, None, macs, note=f"n/a: {_short_error(exc)}"))

    rows.append(Row("matmul 2048^3 fp32", "torch", matmul_runner(dev), 2048**3))
    plain = export_plain(model, x)
    plain_macs = stats_of(plain).macs
    model_dev, x_dev = model.to(dev), x.to(dev)
    add("torch eager", "torch", lambda: torch_runner(model_dev, x_dev), plain_macs)
    if not want("torch.compile", "torch"):
        pass
    elif args.no_torch_compile:
        rows.append(Row("torch.compile", "torch", None, plain_macs, note="n/a: skipped (--no-torch-compile)"))
    else:
        add("torch.compile", "torch", lambda: torch_runner(torch.compile(model_dev), x_dev), plain_macs)
    add("plain export", "onnxruntime", lambda: ort_runner(plain, x_np, threads, dev), plain_macs)
    add("plain export", "openvino", lambda: openvino_runner(plain, x_np, threads, dev), plain_macs)
    if name in ISSUE5_MODELS and want("onnxsim only", "onnxruntime"):
        def simplified():
            import onnxsim

            model_sim, ok = onnxsim.simplify(plain)
            if not ok:
                raise RuntimeError("onnxsim check failed")
            return model_sim

        try:
            sim = simplified()
            add("onnxsim only", "onnxruntime", lambda: ort_runner(sim, x_np, threads, dev), stats_of(sim).macs)
        except Exception as exc:
            rows.append(Row("onnxsim only", "onnxruntime", note=f"n/a: {_short_error(exc)}"))

    compiled = {}  # label -> compiled program, so the int8 rows continue from the dense/pruned ONNX

    def slimc_rows(label: str, src_model, pipeline: str | None, missing: str, force: bool = False):
        runtimes = [rt for rt in ("onnxruntime", "openvino") if want(label, rt)]
        if not runtimes and not force:
            return
        if pipeline is None:
            for rt in runtimes:
                rows.append(Row(label, rt, note=missing))
            return
        note = ""
        try:
            t0 = time.perf_counter()
            try:
                result = _quiet_compile(src_model, x, pipeline)
            except Exception as exc:
                # `fuse` is new and optional: when it fails, measure the rest of the pipeline and say so.
                if ",fuse," not in f",{pipeline},":
                    raise
                note = f"without fuse ({_short_error(exc)[:60]})"
                info["notes"].append(f"{label}: pass 'fuse' failed, measured without it: {_short_error(exc)}")
                pipeline = ",".join(p for p in pipeline.split(",") if p != "fuse")
                result = _quiet_compile(src_model, x, pipeline)
            info[f"{label} compile s"] = round(time.perf_counter() - t0, 2)
            info[f"{label} pipeline"] = result.report["pipeline"]
            macs = result.report["after"]["macs"]
        except Exception as exc:
            if args.tracebacks:
                traceback.print_exc()
            for rt in runtimes:
                rows.append(Row(label, rt, note=f"n/a: {_short_error(exc)}"))
            return
        compiled[label] = result.program
        if "int8" in label and "onnxruntime" in runtimes:
            info["notes"].append(f"{label}: ONNX Runtime's optimized graph has {ort_fused_ops(result.program.ir)}")
        if "int8" in label and "openvino" in runtimes:
            info["notes"].append(f"{label}: OpenVINO runs {ov_precisions(ov_convert(result.program.ir), threads)}")
        for rt in runtimes:
            add(label, rt, lambda rt=rt: slimc_runner(result.program, x_np, rt, threads, dev), macs)
            if note and rows[-1].fn is not None:
                rows[-1].note = note

    need_base = not args.no_int8  # the int8 rows quantize these two compiled graphs
    # bert_base too: the torch.export frontend hands prune-channels the BertModel itself (heads and MLP units cut;
    # the hidden size stays, pinned by the output).
    slimc_rows("slimc dense", model, lossless_pipeline(), "", force=need_base)
    slimc_rows("slimc pruned 50%", model, pruned_pipeline(), "n/a: prune-channels not available", force=need_base)
    tp_label = "Torch-Pruning 50%"
    if want(tp_label, "onnxruntime") or want(tp_label, "openvino"):
        try:
            tp_src, tp_missing = torch_pruning_model(name, model, x), ""
        except Exception as exc:
            if args.tracebacks:
                traceback.print_exc()
            tp_src, tp_missing = None, f"n/a: {_short_error(exc)}"
        slimc_rows(tp_label, tp_src, lossless_pipeline() if tp_src is not None else None, tp_missing)
    if args.no_int8:
        return rows, info
    q = int8_step(args.calib_samples)
    # = the dense / pruned pipeline followed by quantize-int8 (continued from that ONNX: the same graph, compiled once)
    for label, base in (("slimc int8", "slimc dense"), ("slimc pruned 50% + int8", "slimc pruned 50%")):
        if base in compiled:
            slimc_rows(label, compiled[base].ir, q, "")
            if label in compiled:
                info[f"{label} pipeline"] = f"{info.get(base + ' pipeline', base)},{info[label + ' pipeline']}"
        else:
            slimc_rows(label, None, None, f"n/a: {base} did not compile")

    def timed(label, make):
        def wrapped():
            t0 = time.perf_counter()
            out = make()
            info[f"{label} quantize s"] = round(time.perf_counter() - t0, 2)
            return out
        return wrapped

    if want("ORT quantize_static", "onnxruntime"):
        def ort_q():
            quantized = ort_quantize_static(plain, x_np, args.calib_samples)
            info["notes"].append(f"ORT quantize_static: ONNX Runtime's optimized graph has {ort_fused_ops(quantized)}")
            return ort_runner(quantized, x_np, threads, dev)

        add("ORT quantize_static", "onnxruntime", timed("ORT quantize_static", ort_q), plain_macs)
    bert = name.startswith("bert")
    if want("NNCF int8 (OpenVINO IR)", "openvino"):
        def nncf_ov():
            quantized = nncf_quantize(ov_convert(plain), x_np, args.calib_samples, bert)
            info["notes"].append(f"NNCF int8 (OpenVINO IR): OpenVINO runs {ov_precisions(quantized, threads)}")
            return openvino_model_runner(quantized, x_np, threads)

        add("NNCF int8 (OpenVINO IR)", "openvino", timed("NNCF int8 (OpenVINO IR)", nncf_ov), plain_macs)
    nncf_runtimes = [rt for rt in ("onnxruntime", "openvino") if want("NNCF int8 (ONNX QDQ)", rt)]
    if nncf_runtimes:
        try:
            t0 = time.perf_counter()
            nncf_onnx = nncf_quantize(plain, x_np, args.calib_samples, bert)
            info["NNCF int8 (ONNX QDQ) quantize s"] = round(time.perf_counter() - t0, 2)
        except Exception as exc:
            if args.tracebacks:
                traceback.print_exc()
            for rt in nncf_runtimes:
                rows.append(Row("NNCF int8 (ONNX QDQ)", rt, note=f"n/a: {_short_error(exc)}"))
        else:
            if "onnxruntime" in nncf_runtimes:
                add("NNCF int8 (ONNX QDQ)", "onnxruntime", lambda: ort_runner(nncf_onnx, x_np, threads, dev), plain_macs)
            if "openvino" in nncf_runtimes:
                add("NNCF int8 (ONNX QDQ)", "openvino",
                    lambda: openvino_model_runner(ov_convert(nncf_onnx), x_np, threads), plain_macs)
    return rows, info


def measure(rows: list[Row], iters: int, rounds: int) -> None:
    """Interleaved timing: each round times every row for iters/rounds calls (after one untimed call)."""
    per_round = max(1, iters // rounds)
    live = [r for r in rows if r.fn is not None]
    for rnd in range(rounds):
        order = live if rnd % 2 == 0 else live[::-1]  # alternate the order too: no row always goes first
        for row in order:
            row.fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                row.fn()
                row.times.append((time.perf_counter() - t0) * 1e3)


# ---- printing ------------------------------------------------------------------------

def print_table(title: str, rows: list[Row], matmul: float, notes=()) -> None:
    sums = [r.summary() for r in rows]
    base = next((s for s in sums if s["name"] == "plain export" and s["runtime"] == "onnxruntime"
                 and "median_ms" in s), None)
    mm = next((s for s in sums if s["name"].startswith("matmul") and "median_ms" in s), None)
    if mm:  # the matmul timed in the same rounds as the models: the fair yardstick under the same noise
        matmul = 2 * mm["macs"] / (mm["median_ms"] / 1e3) / 1e9
    print(f"\n### {title}\n")
    print("| model | runtime | median ms | p90 ms | min ms | vs ORT plain | by min | GMACs | GFLOP/s | % of matmul |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sums:
        gmacs = f"{s['macs'] / 1e9:.2f}" if s.get("macs") else "-"
        if "median_ms" not in s:
            print(f"| {s['name']} | {s['runtime']} | {s['note'] or 'n/a'} | | | | | {gmacs} | | |")
            continue
        ratio = f"{base['median_ms'] / s['median_ms']:.2f}x" if base and s is not mm else "-"
        ratio_min = f"{base['min_ms'] / s['min_ms']:.2f}x" if base and s is not mm else "-"
        rate = 2 * s["macs"] / (s["median_ms"] / 1e3) / 1e9 if s.get("macs") else None
        rate_s = f"{rate:.1f}" if rate else "-"
        pct = f"{100 * rate / matmul:.0f}%" if rate else "-"
        label = f"{s['name']} ({s['note']})" if s.get("note") else s["name"]
        print(f"| {label} | {s['runtime']} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {s['min_ms']:.2f} | {ratio} | {ratio_min} "
              f"| {gmacs} "
              f"| {rate_s} | {pct} |")
    print(f"\n% of matmul: against {matmul:.1f} GFLOP/s, the 2048^3 fp32 matmul row's median rate in this table.")
    for n in notes:
        print(f"note: {n}")


def print_issue5(results: list[dict]) -> None:
    lines = []
    for res in results:
        if res["model"] not in ISSUE5_MODELS:
            continue
        by = {(s["name"], s["runtime"]): s for s in res["rows"]}
        plain = by.get(("plain export", "onnxruntime"), {})
        sim = by.get(("onnxsim only", "onnxruntime"), {})
        dense = by.get(("slimc dense", "onnxruntime"), {})
        if "median_ms" not in plain:
            continue

        def cell(s):
            if "median_ms" not in s:
                return "n/a"
            return f"{s['median_ms']:.2f} ({plain['median_ms'] / s['median_ms']:.2f}x)"

        lines.append(f"| {res['model']} | {res['batch']} | {plain['median_ms']:.2f} | {cell(sim)} | {cell(dense)} |")
    if lines:
        print("\n### Issue 5: ONNX Runtime CPU, original export vs onnxsim only vs slimc lossless "
              "(median ms, speed-up over the export)\n")
        print("| model | batch | export ms | onnxsim only | slimc lossless |")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(lines))


def print_targets(results: list[dict]) -> None:
    print("\n### Targets\n")
    for res in results:
        by = {(s["name"], s["runtime"]): s for s in res["rows"]}
        plain = by.get(("plain export", "onnxruntime"), {})
        tag = f"{res['model']} b{res['batch']}"
        if "median_ms" not in plain:
            continue
        for rt in ("onnxruntime", "openvino"):
            d = by.get(("slimc dense", rt), {})
            if "median_ms" in d:
                r = plain["median_ms"] / d["median_ms"]
                verdict = "met" if r >= 1.0 else ("within noise" if r >= 0.97 else "NOT met")
                print(f"- {tag}: slimc dense on {rt} vs ORT plain: {r:.2f}x ({verdict}: never slower)")
        dense_ort = by.get(("slimc dense", "onnxruntime"), {})
        ort_q = by.get(("ORT quantize_static", "onnxruntime"), {})
        for label, goal in (("slimc int8", 2.3), ("slimc pruned 50% + int8", 7.0)):
            for rt in ("onnxruntime", "openvino"):
                p = by.get((label, rt), {})
                if "median_ms" not in p:
                    if p.get("note"):
                        print(f"- {tag}: {label} on {rt}: {p['note']}")
                    continue
                r = plain["median_ms"] / p["median_ms"]
                rmin = plain["min_ms"] / p["min_ms"]
                vs_dense = (f", {dense_ort['median_ms'] / p['median_ms']:.2f}x slimc dense on ORT"
                            if "median_ms" in dense_ort else "")
                target = ""
                if res["model"] == "resnet50" and rt == "onnxruntime":
                    target = f" (target >= {goal}x: {'met' if r >= goal else 'NOT met'})"
                print(f"- {tag}: {label} on {rt}: {r:.2f}x dense fp32 ORT plain by median, {rmin:.2f}x by min"
                      f"{vs_dense}{target}")
        s_q = by.get(("slimc int8", "onnxruntime"), {})
        if "median_ms" in s_q and "median_ms" in ort_q:
            r = ort_q["median_ms"] / s_q["median_ms"]
            print(f"- {tag}: slimc int8 vs ORT quantize_static on ORT: {r:.2f}x by median, "
                  f"{ort_q['min_ms'] / s_q['min_ms']:.2f}x by min ({'met' if r >= 0.97 else 'NOT met'}: no slower)")
        for label in ("slimc pruned 50%", "Torch-Pruning 50%"):
            for rt in ("onnxruntime", "openvino"):
                p = by.get((label, rt), {})
                if "median_ms" in p:
                    r = plain["median_ms"] / p["median_ms"]
                    goal = " (target for slimc pruned on resnet50: >= 3x)" if label.startswith("slimc") and \
                        res["model"] == "resnet50" else ""
                    print(f"- {tag}: {label} on {rt} vs dense ORT plain: {r:.2f}x{goal}")
                elif p.get("note") and rt == "onnxruntime":
                    print(f"- {tag}: {label}: {p['note']}")


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ---- main ----------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"torchvision model names (default {DEFAULT_MODELS})")
    ap.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=30, help="timed calls per row (default 30)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds the iterations are split into")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch/ORT/OpenVINO")
    ap.add_argument("--torch-threads", type=int, default=None, help="threads for torch (default: --threads)")
    ap.add_argument("--rows", help="only rows whose 'name/runtime' contains one of these comma-separated words, "
                    "e.g. 'plain export/onnxruntime,slimc dense' (the matmul row is always kept)")
    ap.add_argument("--no-torch-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--json", help="also write the raw numbers (every call's latency) to this file")
    ap.add_argument("--tracebacks", action="store_true", help="print tracebacks of rows that cannot run")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 rows (slimc, ORT quantize_static, NNCF)")
    ap.add_argument("--calib-samples", type=int, default=8, help="calibration samples of every int8 row (default 8)")
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length of bert_base (default 128)")
    ap.add_argument("--kernel-times", type=int, default=0, metavar="CALLS",
                    help="after timing, profile every onnxruntime row for CALLS calls at 1 thread and at --threads "
                         "and print the summed fastest node times (robust to load; 0 = off, default)")
    ap.add_argument("--ort-spinning", choices=["on", "off"], default="on",
                    help="ONNX Runtime worker-thread spinning for every onnxruntime row (default on, ORT's default; "
                         "off keeps idle workers from competing with other processes on a shared machine)")
    args = ap.parse_args(argv)
    ORT_SPIN["on"] = args.ort_spinning == "on"

    import torch

    import slimc

    torch.set_num_threads(args.torch_threads or args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    versions = {"torch": torch.__version__, "slimc": slimc.__version__}
    from importlib import metadata

    for dist in ("onnxruntime", "openvino", "onnxsim", "torch-pruning", "torchvision", "nncf", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    matmul = matmul_gflops(args.device)
    print(f"# bench_runtimes: device={args.device} threads={args.threads} torch threads="
          f"{args.torch_threads or args.threads} cores={os.cpu_count()} iters={args.iters} rounds={args.rounds} "
          f"resolution={args.resolution} ort-spinning={args.ort_spinning} load average at start {_load()}")
    print(f"# versions: {', '.join(f'{k} {v}' for k, v in versions.items())}")
    print(f"# float32 matmul 2048x2048 (torch): {matmul:.1f} GFLOP/s")
    print(f"# dense pipeline: {lossless_pipeline()}")
    pp = pruned_pipeline()
    print(f"# pruned pipeline: {pp if pp else 'n/a: prune-channels not available'}")
    sys.stdout.flush()

    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for batch in [int(b) for b in args.batch.split(",") if b.strip()]:
            t0 = time.perf_counter()
            rows, info = build_rows(name, batch, args)
            built = time.perf_counter() - t0
            info["load average before measuring"] = _load()
            measure(rows, args.iters, args.rounds)
            info["load average after measuring"] = _load()
            print_table(f"{name}, batch {batch} (setup {built:.0f} s, measuring {time.perf_counter() - t0 - built:.0f} s, "
                        f"load average {info['load average before measuring']} before, "
                        f"{info['load average after measuring']} after)", rows, matmul, info["notes"])
            if args.kernel_times:
                for r in rows:  # the timed sessions are done: free them before the profiled ones (BERT-base b8: OOM)
                    r.fn = None
                gc.collect()
                counts = sorted({1, args.threads})
                ort_kernel_times(rows, counts, args.kernel_times, spinning=ORT_SPIN["on"])
                info["kernel times load average after"] = _load()
                print_kernel_table(rows, counts)
            results.append({"model": name, "batch": batch, "rows": [r.summary() for r in rows], "info": info})
            sys.stdout.flush()
            del rows
            gc.collect()
    matmul_end = matmul_gflops(args.device)
    print(f"\n# float32 matmul rate at the end of the run: {matmul_end:.1f} GFLOP/s (start {matmul:.1f}); "
          f"load average at the end {_load()}")
    print_issue5(results)
    print_targets(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "versions": versions, "matmul_gflops": [matmul, matmul_end],
                       "results": results}, f, indent=1)
        print(f"\nraw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
