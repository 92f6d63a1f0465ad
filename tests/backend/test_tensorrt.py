"""The TensorRT backend: engines built on a CPU (TensorRT for RTX), cache, parser report, sidecar, CLI.

Building needs `tensorrt_rtx` (pip install 'slimc[tensorrt]') or the full `tensorrt` with a GPU.
Running needs an NVIDIA GPU: those tests carry the `gpu` marker and skip where none is usable.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("tensorrt") is not None:
    pytest.importorskip("tensorrt")
else:
    pytest.importorskip("tensorrt_rtx", reason="neither tensorrt nor tensorrt_rtx is importable")

import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import slimc  # noqa: E402
from slimc.backend.tensorrt import (GpuUnavailableError, TensorRTBackend, capability_report,  # noqa: E402
                                    inspect_engine, load_engine, parse_options, probe_gpu)
from slimc.backend.tensorrt import gpu_probe  # noqa: E402
from slimc.backend.tensorrt.flavor import importable_flavors  # noqa: E402
from slimc.errors import SlimcError  # noqa: E402
from slimc.ir.program import Program  # noqa: E402

PIPELINE = "fuse-bn,to-onnx,simplify"


@pytest.fixture(scope="module", autouse=True)
def _can_build():
    if "rtx" not in importable_flavors() and not probe_gpu().usable:
        pytest.skip("only the full TensorRT is installed, and it needs a GPU to build engines")


@pytest.fixture()
def gpu():
    status = probe_gpu()
    if not status.usable:
        pytest.skip(f"no usable NVIDIA GPU: {status.reason}")
    if "full" not in importable_flavors() and status.capability not in ("8.0", "8.6", "8.9", "12.0", "12.1"):
        # TensorRT for RTX's default engines run on Ampere and later RTX-class GPUs; Hopper (9.0) is not one.
        pytest.skip(f"TensorRT for RTX engines do not run on {status.name} (compute capability {status.capability})")
    return status


def _compile(model, x, cache_dir, **kw):
    return slimc.compile(model, x, pipeline=PIPELINE, backend="tensorrt", fidelity_samples=0,
                         backend_options={"cache_dir": str(cache_dir), **kw.pop("options", {})}, **kw)


def _tiny_onnx(batch="N", channels=4) -> onnx.ModelProto:
    """Conv + Relu with a symbolic batch axis: builds in well under a second."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, channels, 14, 14])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0"),
             helper.make_node("Relu", ["c"], ["y"], name="relu0")]
    return helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [w]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _tiny_program(model=None, batch=2) -> Program:
    return Program(model or _tiny_onnx(), (torch.zeros(batch, 3, 16, 16),), ("x",), ("y",))


def _unparseable_onnx() -> onnx.ModelProto:
    """Relu, then Det (TensorRT has no Det) and a custom-domain op without a plugin."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu0"),
             helper.make_node("Det", ["a"], ["b"], name="det0"),
             helper.make_node("MyOp", ["a"], ["c"], name="custom0", domain="com.example"),
             helper.make_node("Add", ["b", "c"], ["y"], name="add0")]
    return helper.make_model(helper.make_graph(nodes, "bad", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


# --- real models through slimc.compile ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    import torchvision

    cache = tmp_path_factory.mktemp("trt-cache")
    result = _compile(torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64), cache)
    return result, cache


def test_resnet18_engine_saves_with_sidecar(resnet, tmp_path):
    result, _ = resnet
    desc = result.report["backend"]
    assert desc["backend"] == "tensorrt" and desc["cache_hit"] is False
    assert desc["flavor"] in ("rtx", "full") and desc["version"]
    assert json.loads(json.dumps(result.report))["backend"]["cache_hit"] is False  # report.json-ready
    path = Path(result.artifact.save(tmp_path))
    assert path.name == "model.engine" and path.stat().st_size == len(result.artifact.engine) > 1_000_000
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["inputs"] == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert side["outputs"] == [{"name": "output", "shape": [1, 1000], "dtype": "float32"}]
    assert side["flavor"] == desc["flavor"] and side["version"] == desc["version"]
    assert {"optimization_level", "workspace_mib", "dynamic_batch", "compute_capability"} <= set(side["options"])
    import hashlib

    assert side["engine_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    again = load_engine(path)
    assert again.signature == result.artifact.signature and again.engine == result.artifact.engine


def test_second_build_is_a_cache_hit_and_faster(resnet):
    result, cache = resnet
    first = result.artifact.describe()
    hit = TensorRTBackend(options={"cache_dir": str(cache)}).build(result.program)
    desc = hit.describe()
    assert desc["cache_hit"] is True and desc["cache_key"] == first["cache_key"]
    assert hit.engine == result.artifact.engine
    assert desc["backend_seconds"] < first["backend_seconds"]
    print(f"resnet18: build {first['backend_seconds']:.2f} s (builder {first['build_seconds']:.2f} s), "
          f"cache hit {desc['backend_seconds']:.2f} s")


def test_other_options_miss_the_cache(resnet):
    result, cache = resnet
    other = TensorRTBackend(options={"cache_dir": str(cache), "cache": "false"}).build(result.program)
    assert other.describe()["cache_hit"] is False and "cache_entry" not in other.describe()


def test_mobilenet_v2_builds(tmp_path):
    import torchvision

    result = _compile(torchvision.models.mobilenet_v2().eval(), torch.randn(1, 3, 64, 64), tmp_path)
    art = result.artifact
    assert art.describe()["cache_hit"] is False and len(art.engine) > 1_000_000
    assert art.signature["outputs"][0]["shape"] == [1, 1000]
    print(f"mobilenet_v2: build {art.describe()['backend_seconds']:.2f} s")


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)


@pytest.fixture()
def no_mha_fastpath():
    # The fused inference kernels (_native_multi_head_attention) have no ONNX export.
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(before)


def test_transformer_encoder_builds(tmp_path, no_mha_fastpath):
    result = _compile(_Encoder().eval(), torch.randn(1, 8, 32), tmp_path, leaf_modules=["TransformerEncoder"])
    assert "LayerNormalization" in result.report["after"]["ops"] or "Softmax" in result.report["after"]["ops"]
    assert result.artifact.signature["outputs"][0]["shape"] == [1, 8, 32]


# --- parser report ----------------------------------------------------------------------------------------------


def test_parser_errors_name_each_node_before_any_build(tmp_path):
    program = Program(_unparseable_onnx(), (torch.zeros(4, 4),), ("x",), ("y",))
    with pytest.raises(SlimcError) as err:
        TensorRTBackend(options={"cache_dir": str(tmp_path)}).build(program)
    text = str(err.value)
    assert "cannot parse 2 of the 4 ONNX nodes" in text
    assert "'det0' (Det)" in text and "does not support op 'Det'" in text
    assert "'custom0' (MyOp, domain com.example)" in text and "no registered plugin" in text
    assert "relu0" not in text and "\n" not in text
    assert not list(tmp_path.iterdir())  # nothing was built or cached


def test_capability_report_per_node():
    report = capability_report(_unparseable_onnx())
    assert report["supported"] is False and report["nodes"] == 4 and report["rejected_nodes"] == 2
    assert [(i["name"], i["op_type"], i["domain"]) for i in report["issues"]] == \
        [("det0", "Det", ""), ("custom0", "MyOp", "com.example")]
    ok = capability_report(_tiny_onnx())
    assert ok["supported"] is True and ok["issues"] == [] and ok["signature"]["inputs"][0]["shape"] == [-1, 3, 16, 16]


def test_cli_inspect_capability(tmp_path, cli):
    path = tmp_path / "bad.onnx"
    onnx.save(_unparseable_onnx(), str(path))
    rc, out, _ = cli("inspect", "--capability", path, "--backend", "tensorrt")
    assert rc == 1 and "2 of 4 nodes rejected" in out and "det0" in out and "com.example::MyOp" in out
    rc, out, _ = cli("inspect", "--capability", path, "--json")
    assert rc == 1 and json.loads(out)["rejected_nodes"] == 2
    rc, _, err = cli("inspect", "--capability", path, "--backend", "onnxruntime")
    assert rc == 2 and "tensorrt only" in err


# --- cache ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["engine", "json"])
def test_corrupt_cache_entry_is_rebuilt(tmp_path, damage):
    backend = TensorRTBackend(options={"cache_dir": str(tmp_path)})
    first = backend.build(_tiny_program())
    entry = Path(first.describe()["cache_entry"])
    target = entry if damage == "engine" else entry.with_suffix(".json")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data[: len(data) - 7]))
    second = backend.build(_tiny_program())
    assert second.describe()["cache_hit"] is False
    assert "corrupt cache entry" in second.describe()["cache_note"]
    third = backend.build(_tiny_program())
    assert third.describe()["cache_hit"] is True and third.engine == second.engine
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path / "c"))
    art = TensorRTBackend().build(_tiny_program())
    assert Path(art.describe()["cache_entry"]).parent == tmp_path / "c"


# --- options ----------------------------------------------------------------------------------------------------


def test_options_from_command_line_strings():
    opts = parse_options({"dynamic_batch": "1:8:32", "optimization-level": 3, "workspace_mib": 256,
                          "compute_capability": "sm86,8.9", "sparse_weights": "true", "flavor": "RTX",
                          "profiling_verbosity": "detailed"})
    assert opts.dynamic_batch == (1, 8, 32) and opts.optimization_level == 3 and opts.workspace_mib == 256
    assert opts.compute_capability == ("8.6", "8.9") and opts.sparse_weights is True and opts.flavor == "rtx"
    with pytest.raises(SlimcError, match="did you mean 'workspace-mib'"):
        parse_options({"workspace_mb": 3})
    with pytest.raises(SlimcError, match="MIN:OPT:MAX"):
        parse_options({"dynamic_batch": "8:1:32"})
    with pytest.raises(SlimcError, match="'sparse-weights' of backend 'tensorrt' expects true\\|false, got 'maybe'"):
        parse_options({"sparse_weights": "maybe"})


def test_dynamic_batch_profile(tmp_path):
    art = TensorRTBackend(options={"cache_dir": str(tmp_path), "dynamic_batch": "1:4:8"}).build(_tiny_program())
    assert art.signature["inputs"][0]["shape"] == [-1, 3, 16, 16]
    assert art.describe()["profile"] == {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}
    assert [a.shape for a in art.sample_inputs()] == [(4, 3, 16, 16)]
    static = _tiny_program(_tiny_onnx(batch=2))
    with pytest.raises(SlimcError, match="symbolic batch axis"):
        TensorRTBackend(options={"cache_dir": str(tmp_path), "dynamic_batch": "1:4:8"}).build(static)


def test_builder_options_and_timing_cache(tmp_path):
    timing = tmp_path / "timing.cache"
    opts = {"cache_dir": str(tmp_path / "engines"), "optimization_level": 1, "workspace_mib": 64,
            "sparse_weights": True, "profiling_verbosity": "detailed", "timing_cache": str(timing)}
    if "rtx" in importable_flavors():
        opts.update(flavor="rtx", compute_capability="8.6,8.9")
    art = TensorRTBackend(options=opts).build(_tiny_program())
    assert art.describe()["cache_hit"] is False and timing.is_file() and timing.stat().st_size > 0
    plain = TensorRTBackend(options={"cache_dir": str(tmp_path / "engines")}).build(_tiny_program())
    assert plain.describe()["cache_key"] != art.describe()["cache_key"]
    assert TensorRTBackend(options=opts).build(_tiny_program()).describe()["cache_hit"] is True


def test_full_flavor_missing_or_needing_gpu_is_explained(tmp_path):
    if "full" in importable_flavors() and probe_gpu().usable:
        pytest.skip("the full TensorRT is usable here")
    with pytest.raises(SlimcError, match="tensorrt|GPU"):
        TensorRTBackend(options={"cache_dir": str(tmp_path), "flavor": "full"}).build(_tiny_program())


# --- running: a clear error without a GPU, real runs with one -------------------------------------------------------


@pytest.fixture()
def force_no_gpu(monkeypatch):
    """Call it to make the probe answer 'no GPU' (the CPU path, testable on a GPU machine too)."""
    def force():
        monkeypatch.setenv("SLIMC_TENSORRT_NO_GPU", "1")
        gpu_probe.reset_probe()

    yield force
    gpu_probe.reset_probe()


def test_run_without_gpu_says_what_it_found(tmp_path, force_no_gpu):
    art = TensorRTBackend(options={"cache_dir": str(tmp_path)}).build(_tiny_program())
    force_no_gpu()
    with pytest.raises(GpuUnavailableError, match="needs an NVIDIA GPU.*SLIMC_TENSORRT_NO_GPU is set"):
        art.run(art.sample_inputs())
    with pytest.raises(GpuUnavailableError):
        art.benchmark(iters=1)


def test_compile_without_gpu_keeps_the_engine_and_says_why_unchecked(tmp_path, force_no_gpu):
    force_no_gpu()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model(torch.randn(1, 3, 8, 8))
    result = slimc.compile(model.eval(), torch.randn(1, 3, 8, 8), backend="tensorrt", benchmark_iters=2,
                           backend_options={"cache_dir": str(tmp_path / "cache")}, output_dir=tmp_path / "out")
    assert Path(result.report["artifact"]).is_file()
    assert "needs an NVIDIA GPU" in result.report["fidelity"]["skipped"]
    assert "needs an NVIDIA GPU" in result.report["benchmark"]["skipped"]


def test_probe_on_a_machine_without_gpu_names_the_evidence():
    gpu_probe.reset_probe()
    status = probe_gpu()
    if status.usable:
        pytest.skip("a GPU is usable here")
    assert "torch.cuda.is_available() is False" in status.reason
    if not Path("/dev/nvidia0").exists():
        assert "no /dev/nvidia0" in status.reason


def test_cli_inspect_engine(resnet, tmp_path, cli):
    result, _ = resnet
    path = result.artifact.save(tmp_path / "r18.engine")
    rc, out, _ = cli("inspect", path)
    assert rc == 0 and "input  input: 1x3x64x64 float32" in out and "output output: 1x1000 float32" in out
    if not probe_gpu().usable:
        assert "layers: not shown" in out and "needs an NVIDIA GPU" in out
    info = inspect_engine(path)
    assert info["sidecar"]["flavor"] == result.artifact.describe()["flavor"]
    assert (info["layers"] is None) == (not probe_gpu().usable)


@pytest.mark.gpu
def test_resnet18_runs_on_gpu_and_matches_torch(resnet, gpu):
    result, _ = resnet
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got = result.artifact.run([x])[0]
    with torch.no_grad():
        want = result.program.original(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (1, 1000)
    assert np.abs(got - want).max() < 1e-2 * max(1.0, np.abs(want).max())
    bench = result.artifact.benchmark(iters=10)
    assert bench.iters == 10 and bench.median_ms > 0


@pytest.mark.gpu
def test_dynamic_batch_runs_each_batch_on_gpu(tmp_path, gpu):
    art = TensorRTBackend(options={"cache_dir": str(tmp_path), "dynamic_batch": "1:2:4"}).build(_tiny_program())
    for batch in (1, 3, 4):
        x = art.sample_inputs(batch=batch)
        ref = _tiny_program().with_ir(_tiny_onnx()).run(x)[0]
        got = art.run(x)[0]
        assert got.shape == (batch, 4, 14, 14) and np.allclose(got, ref, atol=1e-3)
    with pytest.raises(SlimcError, match="optimization profile"):
        art.run(art.sample_inputs(batch=5))


@pytest.mark.gpu
def test_engine_layers_on_gpu(resnet, tmp_path, gpu):
    result, _ = resnet
    info = inspect_engine(result.artifact.save(tmp_path / "r18.engine"))
    assert info["layers"] is not None and info["layers_unavailable"] is None


def test_compute_capability_checks(tmp_path):
    if "rtx" not in importable_flavors():
        pytest.skip("compute capabilities are a TensorRT for RTX option")
    base = {"cache_dir": str(tmp_path), "flavor": "rtx"}
    with pytest.raises(SlimcError, match="cannot target compute capability 9.0"):
        TensorRTBackend(options={**base, "compute_capability": "9.0"}).build(_tiny_program())
    if not probe_gpu().usable:
        with pytest.raises(SlimcError, match="compute_capability=current asks the GPU"):
            TensorRTBackend(options={**base, "compute_capability": "current"}).build(_tiny_program())


def test_run_takes_tensors_or_arrays_up_to_the_gpu(tmp_path, force_no_gpu, monkeypatch):
    """Without a GPU the runner cannot be reached: check what it would be given, then that running says why not."""
    from slimc.backend.tensorrt.runner import as_tensors

    art = TensorRTBackend(options={"cache_dir": str(tmp_path)}).build(_tiny_program())
    x = torch.randn(2, 3, 16, 16)
    kept = as_tensors([x, x.numpy()])
    assert kept[0] is x and isinstance(kept[1], torch.Tensor) and torch.equal(kept[1], x)
    given = []

    class _Runner:  # stands in for EngineRunner, which needs a GPU
        def infer(self, inputs):
            given.append(inputs)
            return [np.zeros((2, 4, 14, 14), np.float32)]

    monkeypatch.setattr(art, "_open", lambda: _Runner())
    for inputs in (x, [x], (x.numpy(),)):
        out = art.run(inputs)
        assert isinstance(out, list) and isinstance(out[0], np.ndarray) and out[0].shape == (2, 4, 14, 14)
    assert [type(g[0]) for g in given] == [torch.Tensor, torch.Tensor, np.ndarray]
    with pytest.raises(SlimcError, match="numpy array or torch tensor"):
        art.run("x")
    monkeypatch.undo()
    force_no_gpu()
    with pytest.raises(GpuUnavailableError):
        art.run(x)
