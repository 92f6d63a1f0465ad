"""Aggregation of layer times by op type and module, and the before/after comparison."""

from __future__ import annotations

import pytest

import profile_support as ps
from slimc.ir.stats import onnx_node_macs, onnx_stats
from slimc.profile import LayerTime, Profile, compare


def _profile(layers, macs, e2e=10.0, label=""):
    return Profile("onnxruntime", label, [LayerTime(n, op, n, mod, ms) for n, op, mod, ms in layers], e2e, 5, macs)


def test_by_op_and_by_module_sum_layer_times():
    prof = _profile([("a", "Conv", "l1.conv", 2.0), ("b", "Relu", "l1.conv", 0.5), ("c", "Conv", "l2.conv", 3.0),
                     ("d", "Gemm", "fc", 1.0)], {"l1.conv": 100, "l2.conv": 300, "fc": 10, "unused": 7})
    assert prof.profiled_ms == pytest.approx(6.5)
    assert prof.by_op() == [{"op_type": "Conv", "ms": 5.0, "layers": 2}, {"op_type": "Gemm", "ms": 1.0, "layers": 1},
                            {"op_type": "Relu", "ms": 0.5, "layers": 1}]
    assert prof.by_module() == [{"module": "l2.conv", "ms": 3.0, "macs": 300}, {"module": "l1.conv", "ms": 2.5, "macs": 100},
                                {"module": "fc", "ms": 1.0, "macs": 10}, {"module": "unused", "ms": 0.0, "macs": 7}]
    d = prof.as_dict(top=2)
    assert d["coverage"] == pytest.approx(0.65) and len(d["by_module"]) == 2 and len(d["layers"]) == 4


def test_compare_flags_modules_that_lost_macs_but_not_time():
    before = _profile([("a", "Conv", "l1", 2.0), ("b", "Conv", "l2", 4.0), ("c", "Conv", "gone", 1.0)],
                      {"l1": 100, "l2": 400, "gone": 50})
    after = _profile([("a", "Conv", "l1", 1.9), ("b", "Conv", "l2", 1.0), ("n", "Add", "new", 0.5)],
                     {"l1": 50, "l2": 100})
    rows = {r["module"]: r for r in compare(before, after)}
    assert rows["l1"]["lost_macs_not_time"] and rows["l1"]["macs_ratio"] == 0.5
    assert rows["l1"]["ms_ratio"] == pytest.approx(0.95)
    assert not rows["l2"]["lost_macs_not_time"] and rows["l2"]["ms_ratio"] == pytest.approx(0.25)
    assert rows["gone"]["ms_after"] == 0.0 and rows["gone"]["macs_after"] == 0
    assert rows["new"]["ms_before"] == 0.0 and rows["new"]["ms_ratio"] is None
    assert [r["module"] for r in compare(before, after)][:2] == ["l2", "l1"]  # most expensive first


def test_node_macs_sum_to_the_model_macs():
    model = ps.model("torchscript")
    per_node = onnx_node_macs(model)
    assert sum(per_node.values()) == onnx_stats(model).macs > 0
    # stem: 16x16 output, 8 channels, 3x3x3 kernel
    assert per_node["/stem/Conv"] == 16 * 16 * 8 * 27
    assert per_node["/head/Gemm"] == 16 * 5


def test_typical_runs_keep_the_middle_half_by_total():
    from slimc.profile.run import _layers, typical_runs

    # each run is slowed in a different layer; per-layer medians (1 + 1) would miss that entirely
    runs = [{"a": ("Conv", 1.0), "b": ("Conv", 1.0)}, {"a": ("Conv", 5.0), "b": ("Conv", 1.0)},
            {"a": ("Conv", 1.0), "b": ("Conv", 5.0)}, {"a": ("Conv", 9.0), "b": ("Conv", 9.0)}]
    kept = typical_runs(runs)
    assert len(kept) == 2 and all(sum(ms for _, ms in r.values()) == 6.0 for r in kept)
    layers = {layer.name: layer.ms for layer in _layers(runs, None)}
    assert layers == {"a": 3.0, "b": 3.0}  # sums to the typical run's 6 ms
    assert len(typical_runs(runs[:1])) == 1
