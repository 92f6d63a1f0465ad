"""`quantize-int8`: QDQ placement, per-channel scales, exclusions, numbers vs float32, the auto guard on a
planted sensitive layer, calibration loaders and bad inputs, composition with pruning, search on/off."""

from __future__ import annotations

import textwrap
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import slimc
from slimc.errors import SlimcError
from slimc.passes.onnx.quantize import int8_layers
from slimc.passes.onnx.quantize._auto import output_error
from slimc.passes.pipeline import Pipeline

CALIB = textwrap.dedent('''
    import numpy as np
    import torch


    def batches():  # 4 batches of 2 smooth "images" (values in [0, 1], like normalised pixels)
        g = torch.Generator().manual_seed(0)
        for _ in range(4):
            yield (torch.rand(2, 3, 16, 16, generator=g),)


    def as_dicts():
        rng = np.random.default_rng(1)
        for _ in range(3):
            yield {"input": rng.random((4, 3, 16, 16), dtype=np.float32)}


    def wrong_shape():
        yield np.zeros((2, 3, 8, 8), np.float32)


    def wrong_dtype():
        yield np.zeros((2, 3, 16, 16), np.float64)


    def empty():
        return []


    def two_arrays():
        yield (np.zeros((2, 3, 16, 16), np.float32), np.zeros((2, 3), np.float32))
''')


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 24, 3, padding=1, stride=2)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


class _Planted(nn.Module):
    """`big` writes one channel ~1000x larger than the rest (and c4 scales it back): per-tensor int8 on that
    tensor wipes out the small channels, so big and c4 must stay float for the output to survive."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.big = nn.Conv2d(16, 16, 1)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.big.weight[0] *= 1000.0
            self.c4.weight[:, 0] /= 1000.0

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c4(self.big(x)))
        return self.fc(x.mean((2, 3)))


def _net(cls=_Net):
    torch.manual_seed(0)
    return cls().eval()


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.py"
    path.write_text(CALIB)
    return path


def _compile(model, pipeline, dynamic_batch=True, **kw):
    x = torch.rand(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return slimc.compile(model, x, pipeline=pipeline, backend=None, fidelity_samples=0,
                             dynamic_batch=dynamic_batch, **kw)


def _fresh(seed=99, n=8):
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


def _run(model, x):
    from slimc.ir.ort_session import session_for

    sess = session_for(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _float_and_int8(calib_file, model_cls=_Net, options=""):
    module = _net(model_cls)
    dense = _compile(module, "to-onnx,simplify").program.ir
    res = _compile(module, f"to-onnx,simplify,quantize-int8{{calib={calib_file}:batches {options}}}")
    return module, dense, res


def _producer(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_qdq_placement_per_channel_scales_and_numbers(calib_file):
    _, dense, res = _float_and_int8(calib_file)
    q = res.program.ir
    prod, inits = _producer(q), {i.name: i for i in q.graph.initializer}
    layers = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 3
    for n in layers:  # activation and weight both arrive through DequantizeLinear; the weight is stored int8
        act, w = prod[n.input[0]], prod[n.input[1]]
        assert act.op_type == "DequantizeLinear" and prod[act.input[0]].op_type == "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].data_type == onnx.TensorProto.INT8
        scale = numpy_helper.to_array(inits[w.input[1]])
        out_channels = numpy_helper.to_array(inits[w.input[0]]).shape[0 if n.op_type == "Conv" else 0]
        assert scale.shape == (out_channels,), (n.name, scale.shape)  # one scale per output channel
    assert not any(i.data_type == onnx.TensorProto.FLOAT and i.name.endswith("weight") for i in q.graph.initializer)
    d = res.report["passes"][-1]["details"]
    assert d["calibration"] == "loader" and d["samples"] == 8 and d["int8_layers"] == 3 and d["float_layers"] == []
    stats = res.report["passes"][-1]["stats"]
    assert stats["params"] == res.report["passes"][-2]["stats"]["params"]  # int8 weights still count, scales do not
    assert stats["macs"] == res.report["passes"][-2]["stats"]["macs"]
    x = _fresh()  # fresh inputs the calibration never saw
    ref, got = _run(dense, x)[0], _run(q, x)[0]
    assert output_error([[ref]], [[got]]) < 0.03
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.75


def test_per_tensor_scales_and_symmetric_activations(calib_file):
    _, _, res = _float_and_int8(calib_file, options="per-channel=false symmetric-activations=true method=percentile")
    q = res.program.ir
    inits = {i.name: i for i in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":  # activations: int8 with zero point 0
            zp = inits[n.input[2]]
            assert zp.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(zp).any()
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dims:
            assert numpy_helper.to_array(inits[n.input[1]]).size == 1  # one scale per tensor
    assert res.report["passes"][-1]["details"]["activations"] == "int8 symmetric"


def test_excluded_op_types_and_names_stay_float(calib_file):
    _, dense, _ = _float_and_int8(calib_file)
    conv_name = next(n.name for n in dense.graph.node if n.op_type == "Conv")
    res = _compile(_net(), f"to-onnx,simplify,quantize-int8{{calib={calib_file}:batches exclude=Gemm,{conv_name}}}")
    q = res.program.ir
    layers = int8_layers(q)
    assert sorted(layers["float"]) == sorted([conv_name, next(n.name for n in q.graph.node if n.op_type == "Gemm")])
    assert len(layers["int8"]) == 1
    inits = {i.name: i for i in q.graph.initializer}
    for n in q.graph.node:  # the float layers keep float32 weights read straight from initializers
        if n.name in layers["float"]:
            assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
    x = _fresh()
    assert output_error([_run(dense, x)], [_run(q, x)]) < 0.03


def test_auto_keeps_planted_sensitive_layer_float_and_beats_all(calib_file):
    module = _net(_Planted)
    dense = _compile(module, "to-onnx,simplify").program.ir
    plain = _compile(module, f"to-onnx,simplify,quantize-int8{{calib={calib_file}:batches}}")
    auto = _compile(module, f"to-onnx,simplify,quantize-int8{{calib={calib_file}:batches mode=auto tolerance=0.02}}")
    d = auto.report["passes"][-1]["details"]["auto"]
    kept = {k["node"] for k in d["kept_float"]}
    assert kept == {"/big/Conv", "/c4/Conv"}, d
    assert d["within_tolerance"] and d["output_error"] <= 0.02 < d["error_all_int8"]
    assert all(k["why"] for k in d["kept_float"])
    assert sorted(int8_layers(auto.program.ir)["float"]) == ["/big/Conv", "/c4/Conv"]
    assert len(int8_layers(auto.program.ir)["int8"]) == 3  # the rest is still int8
    x = _fresh(seed=5)
    ref = [_run(dense, x)]
    err_plain, err_auto = output_error(ref, [_run(plain.program.ir, x)]), output_error(ref, [_run(auto.program.ir, x)])
    assert err_plain > 0.05 and err_auto < 0.02 and err_auto < err_plain / 5


def test_auto_within_tolerance_keeps_everything_int8(calib_file):
    res = _compile(_net(), f"to-onnx,simplify,quantize-int8{{calib={calib_file}:batches mode=auto tolerance=0.5}}")
    d = res.report["passes"][-1]["details"]
    assert d["auto"]["kept_float"] == [] and d["int8_layers"] == 3


def test_dict_batches_larger_than_fixed_batch_are_split(calib_file):
    res = _compile(_net(), f"to-onnx,quantize-int8{{calib={calib_file}:as_dicts samples=6}}", dynamic_batch=False)
    d = res.report["passes"][-1]["details"]
    assert d["samples"] == 8 and d["calibration"] == "loader"  # 2 batches of 4 drawn to reach 6 samples


def test_random_calibration_is_marked_and_warned():
    with pytest.warns(UserWarning, match="random inputs"):
        res = slimc.compile(_net(), torch.rand(2, 3, 16, 16), pipeline="to-onnx,quantize-int8{calib=random samples=4}",
                            backend=None, fidelity_samples=0)
    assert res.report["passes"][-1]["details"]["calibration"] == "random"


@pytest.mark.parametrize("calib, message", [
    (None, "needs calibration data"),
    ("wrong_shape", "has shape [2, 3, 8, 8] but the model expects"),
    ("wrong_dtype", "is float64 but the model expects float32"),
    ("empty", "yielded no batches"),
    ("two_arrays", "holds 2 array(s) but the model has 1 input"),
    ("nothing_here", "has no callable 'nothing_here'"),
])
def test_bad_calibration_is_a_slimc_error(calib_file, calib, message):
    opt = f"{{calib={calib_file}:{calib}}}" if calib else ""
    with pytest.raises(SlimcError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
                       .replace("]", r"\]")):
        _compile(_net(), f"to-onnx,quantize-int8{opt}")


def test_already_quantized_and_unknown_exclude_are_slimc_errors(calib_file):
    q = _compile(_net(), f"to-onnx,quantize-int8{{calib={calib_file}:batches}}").program.ir
    with pytest.raises(SlimcError, match="already quantized"):
        slimc.compile(q, pipeline=f"quantize-int8{{calib={calib_file}:batches}}", backend=None, fidelity_samples=0)
    with pytest.raises(SlimcError, match="neither an op type nor a node name.*did you mean 'Gemm'"):
        _compile(_net(), f"to-onnx,quantize-int8{{calib={calib_file}:batches exclude=Gem}}")


def test_cli_compile_prunes_and_quantizes_and_bad_input_exits_2(calib_file, tmp_path, cli):
    pytest.importorskip("slimc.passes.fx.prune_channels")
    models = tmp_path / "models.py"
    models.write_text("import torch\nfrom test_quantize_int8_models import Net\n\n\ndef net():\n"
                      "    torch.manual_seed(0)\n    return Net().eval()\n")
    (tmp_path / "test_quantize_int8_models.py").write_text(
        "import torch\nimport torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.c1 = nn.Conv2d(3, 16, 3, padding=1)\n        self.b1 = nn.BatchNorm2d(16)\n"
        "        self.c2 = nn.Conv2d(16, 16, 3, padding=1)\n        self.fc = nn.Linear(16, 10)\n\n"
        "    def forward(self, x):\n        x = torch.relu(self.b1(self.c1(x)))\n"
        "        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        pipe = (f"fuse-bn,prune-channels{{ratio=0.5}},to-onnx,simplify,fuse,quantize-int8{{calib={calib_file}:batches}}")
        rc, out, err = cli("compile", f"{models}:net", "--input-shape", "2x3x16x16", "--pipeline", pipe,
                           "--report", tmp_path / "r.json", "-o", tmp_path / "out")
        assert rc == 0, err
        import json

        report = json.loads((tmp_path / "r.json").read_text())
        names = [p["name"] for p in report["passes"]]
        assert names[-1] == "quantize-int8" and "prune-channels" in names
        assert report["after"]["params"] < report["before"]["params"]
        assert report["passes"][-1]["details"]["int8_layers"] == 3
        # numbers: the same pipeline through slimc.compile, with and without the int8 step, on fresh inputs
        pruned = _compile(f"{models}:net", pipe.rsplit(",", 1)[0]).program.ir
        quant = _compile(f"{models}:net", pipe).program.ir
        x = _fresh()
        assert output_error([_run(pruned, x)], [_run(quant, x)]) < 0.03
        rc, out, err = cli("compile", f"{models}:net", "--input-shape", "2x3x16x16", "--pipeline",
                           f"to-onnx,quantize-int8{{calib={calib_file}:wrong_dtype}}")
        assert rc == 2 and err.startswith("slimc: error:") and "float64" in err and "Traceback" not in err
    finally:
        sys.path.remove(str(tmp_path))


def test_enabled_false_does_nothing_and_search_can_switch_it():
    res = _compile(_net(), "to-onnx,quantize-int8{enabled=false}")  # no calib needed when off
    assert not res.report["passes"][-1]["changed"]
    assert res.report["passes"][-1]["details"] == {"skipped": "enabled=false"}
    assert not any(n.op_type == "QuantizeLinear" for n in res.program.ir.graph.node)
    from slimc.search.space import SearchSpace

    space = SearchSpace.parse("to-onnx,quantize-int8{enabled=choice(true,false) method=choice(minmax,percentile) "
                              "calib=random}")
    assert [d.label for d in space.dimensions] == ["quantize-int8.enabled", "quantize-int8.method"]
    text = space.pipeline_for({"quantize-int8.enabled": "false", "quantize-int8.method": "percentile"})
    p = list(Pipeline.parse(text))[-1]
    assert p.enabled is False and p.method == "percentile" and p.calib == "random"


def test_int8_graph_runs_on_onnxruntime_and_openvino(calib_file):
    res = _compile(_net(), f"to-onnx,simplify,quantize-int8{{calib={calib_file}:batches}}")
    x = _fresh(n=2)
    ref = _run(res.program.ir, x)[0]
    art = slimc.get_backend("onnxruntime").build(res.program)
    np.testing.assert_allclose(art.run([x])[0], ref, rtol=1e-4, atol=1e-4)
    pytest.importorskip("openvino")
    from slimc.backend.openvino import OpenVinoBackend

    got = OpenVinoBackend().build(res.program).run([x])[0]
    assert output_error([[ref]], [[got]]) < 0.03  # OpenVINO's int8 kernels round a little differently


def test_tensorrt_flavors_refuse_what_they_cannot_build(calib_file):
    from slimc.backend.tensorrt.flavor import TrtFlavor, check_int8_graph

    asym = _compile(_net(), f"to-onnx,quantize-int8{{calib={calib_file}:batches}}").program.ir
    sym = _compile(_net(), f"to-onnx,quantize-int8{{calib={calib_file}:batches symmetric-activations=true}}").program.ir
    dense = _compile(_net(), "to-onnx").program.ir
    rtx, full = TrtFlavor("rtx", None, "1.0"), TrtFlavor("full", None, "10.0")
    with pytest.raises(SlimcError, match="TensorRT for RTX 1.0 cannot build this int8 QDQ graph.*flavor=full"):
        check_int8_graph(rtx, sym)
    with pytest.raises(SlimcError, match="symmetric int8 activations only.*symmetric-activations=true"):
        check_int8_graph(full, asym)
    check_int8_graph(full, sym)  # what the full TensorRT builds
    check_int8_graph(rtx, dense)  # float graphs are not its business


def test_tensorrt_for_rtx_backend_refuses_the_int8_graph(calib_file, tmp_path):
    from slimc.backend.tensorrt.flavor import importable_flavors

    if "rtx" not in importable_flavors():
        pytest.skip("TensorRT for RTX is not installed")
    with pytest.raises(SlimcError, match="TensorRT for RTX .* cannot build this int8 QDQ graph"):
        slimc.compile(_net(), torch.rand(2, 3, 16, 16), pipeline=f"to-onnx,quantize-int8{{calib={calib_file}:batches}}",
                      backend="tensorrt", backend_options={"flavor": "rtx", "cache_dir": str(tmp_path)},
                      fidelity_samples=0)
