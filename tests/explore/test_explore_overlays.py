"""Model Explorer overlays computed from ONNX dumps, and `slimc explore --prepare-only`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import profile_support as ps
from slimc.explore import overlays_for, prepare


def _values(data):
    return {k: v["value"] for k, v in data["results"].items()}


def test_channels_kept_against_the_dense_graph():
    dense, narrow = ps.model("dynamo"), ps.model("dynamo", width=4)
    got = overlays_for(narrow, dense=dense)
    kept = _values(got["channels-kept"])
    by_module = {n.name: n for n in narrow.graph.node}
    assert kept == {"node_conv2d": 0.5, "node_conv2d_1": 0.5, "node_conv2d_2": 0.5, "node_linear": 1.0}
    assert _values(got["out-channels"])["node_conv2d_2"] == 8 and "node_conv2d" in by_module
    assert "conv-groups" not in got  # no grouped convolution: no overlay
    assert got["channels-kept"]["gradient"]  # coloured by value


def _grouped_fp16_model():
    w = numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float16), "w")
    nodes = [helper.make_node("Cast", ["x"], ["xh"], name="to_half", to=TensorProto.FLOAT16),
             helper.make_node("Conv", ["xh", "w"], ["y"], name="dw", group=4),
             helper.make_node("Cast", ["y"], ["yf"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["yf"], ["z"], name="relu32")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_groups_and_nodes_left_in_fp32():
    got = overlays_for(_grouped_fp16_model())
    assert _values(got["conv-groups"]) == {"dw": 4}
    assert _values(got["fp32-nodes"]) == {"dw": 0, "relu32": 1}


def test_fp32_overlay_only_for_low_precision_graphs():
    assert "fp32-nodes" not in overlays_for(ps.model("torchscript"))


def test_profile_overlay_and_prepare(tmp_path):
    dumps = tmp_path / "ir"
    dumps.mkdir()
    ps.save(ps.model("torchscript"), dumps / "02-to-onnx.onnx")
    ps.save(ps.model("torchscript"), dumps / "03-simplify.onnx")
    (dumps / "01-fuse-bn.py").write_text("# fx dump\n")
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"profiles": [{"backend": "onnxruntime", "layers": [
        {"name": "/stem/Conv", "node": "/stem/Conv", "module": "stem", "op_type": "Conv", "ms": 0.25},
        {"name": "ReorderOutput", "node": None, "module": "<runtime>", "op_type": "Reorder", "ms": 0.01}]}]}))
    session = prepare(dumps, profile=profile)
    assert [m.name for m in session.models] == ["02-to-onnx.onnx", "03-simplify.onnx"]
    written = {p.name: target for p, target in session.overlays}
    assert written["03-simplify.profile-ms.json"] == "03-simplify.onnx"
    assert "02-to-onnx.profile-ms.json" not in written  # the profile belongs to the final graph
    data = json.loads((session.staging / "overlays" / "03-simplify.profile-ms.json").read_text())
    assert _values(data) == {"/stem/Conv": 0.25}


def test_explore_errors(cli, tmp_path):
    rc, _, err = cli("explore", tmp_path / "missing")
    assert rc == 2 and "neither a --dump-ir folder" in err
    (tmp_path / "fx").mkdir()
    (tmp_path / "fx" / "01-fuse-bn.py").write_text("")
    rc, _, err = cli("explore", tmp_path / "fx", "--prepare-only")
    assert rc == 2 and "no .onnx pass dumps" in err


def test_missing_extra_names_the_install(monkeypatch, tmp_path):
    import builtins

    from slimc.errors import SlimcError
    from slimc.explore.server import _model_explorer

    real = builtins.__import__

    def no_explorer(name, *a, **k):
        if name.startswith("model_explorer"):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_explorer)
    with pytest.raises(SlimcError, match=r"pip install 'slimc\[explore\]'"):
        _model_explorer()


def test_overlays_after_real_group_conv_and_to_fp16():
    import torch

    import slimc

    result = slimc.compile(ps.Nested(8).eval(), torch.randn(*ps.SHAPE), backend=None, fidelity_samples=0,
                           pipeline="group-conv{groups=2 min-channels=4},to-onnx,to-fp16")
    got = overlays_for(result.onnx)
    groups = _values(got["conv-groups"])
    assert 2 in groups.values()  # the convs group-conv rewrote
    fp32 = _values(got["fp32-nodes"])
    # to-fp16 keeps ReduceMean in float32 (numerically sensitive); the convs run in float16
    kept = [n.name for n in result.onnx.graph.node if n.op_type == "ReduceMean"]
    convs = [n.name for n in result.onnx.graph.node if n.op_type == "Conv"]
    assert all(fp32[n] == 1 for n in kept) and all(fp32[n] == 0 for n in convs)


def test_fp32_overlay_after_real_quantize_int8():
    import torch

    import slimc

    result = slimc.compile(ps.Nested(8).eval(), torch.randn(*ps.SHAPE), backend=None, fidelity_samples=0,
                           pipeline="to-onnx,quantize-int8{calib=random samples=4 exclude=Gemm}")
    fp32 = _values(overlays_for(result.onnx)["fp32-nodes"])
    gemm = [n.name for n in result.onnx.graph.node if n.op_type == "Gemm"]
    convs = [n.name for n in result.onnx.graph.node if n.op_type == "Conv"]
    assert [fp32[n] for n in gemm] == [1]  # excluded: left in float32
    assert [fp32[n] for n in convs] == [0, 0, 0]  # QDQ-fed: int8
