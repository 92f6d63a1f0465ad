"""tools/bench_runtimes.py and tools/ort_kernel_times.py: the --kernel-times profile sums (synthetic traces
and a real ORT session) and the ratio columns of the table, on tiny inputs (no torchvision model, no timing
claims)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench_runtimes as br  # noqa: E402
import ort_kernel_times as okt  # noqa: E402


def _event(node: str, op: str, us: float) -> dict:
    return {"cat": "Node", "name": f"{node}_kernel_time", "dur": us, "args": {"op_name": op}}


def test_kernel_times_takes_each_nodes_fastest_call_and_splits_glue():
    events = [_event("conv", "QLinearConv", 300), _event("conv", "QLinearConv", 100),
              _event("q", "QuantizeLinear", 20), _event("q", "QuantizeLinear", 50),
              _event("conv", "QLinearConv", 250), {"cat": "Session", "name": "model_run", "dur": 9999},
              {"cat": "Node", "name": "conv_fence_before", "dur": 5}]
    k = okt.kernel_times(events)
    assert k == {"total": pytest.approx(0.12), "glue": pytest.approx(0.02), "nodes": 2}


def _tiny_conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ort_kernel_times_profiles_every_onnxruntime_row_at_each_thread_count():
    model = _tiny_conv_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    call = br.ort_runner(model, x, threads=1, device="cpu")
    out = call()[0]
    ref = br.ort_runner(model, x, threads=1, device="cpu")()[0]
    assert np.array_equal(out, ref) and out.shape == (1, 8, 16, 16)
    rows = [br.Row("plain export", "onnxruntime", call, onnx=call.onnx),
            br.Row("plain export", "openvino", lambda: None)]  # no ONNX graph: not profiled
    okt.ort_kernel_times(rows, [1, 2], calls=3)
    assert set(rows[0].kernel_ms) == {1, 2} and not rows[1].kernel_ms
    for k in rows[0].kernel_ms.values():
        assert k["total"] > 0 and 0 <= k["glue"] <= k["total"] and k["nodes"] >= 1


def test_table_ratios_by_median_and_by_min(capsys):
    base = br.Row("plain export", "onnxruntime", times=[10.0, 12.0, 20.0], macs=10**9)
    fast = br.Row("slimc int8", "onnxruntime", times=[2.0, 3.0, 4.0], macs=10**9)
    fast.kernel_ms = {1: {"total": 2.0, "glue": 0.5, "nodes": 3}, 2: {"total": 1.0, "glue": 0.1, "nodes": 3}}
    base.kernel_ms = {1: {"total": 8.0, "glue": 0.0, "nodes": 3}, 2: {"total": 5.0, "glue": 0.0, "nodes": 3}}
    br.print_table("t", [base, fast], matmul=100.0)
    okt.print_kernel_table([base, fast], [1, 2])
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("| slimc int8 | onnxruntime"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:7] == ["3.00", "4.00", "2.00", "4.00x", "5.00x"]  # median, p90, min, 12/3, 10/2
    kline = [l for l in out.split("kernel time")[1].splitlines() if l.startswith("| slimc int8 |")][0]
    kcells = [c.strip() for c in kline.strip("|").split("|")]
    assert kcells[1:] == ["2.00", "4.00x", "1.00", "5.00x", "2.00x", "10.0%"]
