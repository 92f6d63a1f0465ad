"""Backend options go through the pass-option machinery: typed, kebab-case, checked before any pass runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import pytest

import slimc
from slimc import SlimcError
from slimc.backend.base import backend_options, get_backend
from slimc.passes.registry import PassResult
from support import temporary_pass


@dataclass(frozen=True)
class _Tripwire(slimc.Pass):
    """An FX pass that records that it ran: a backend option error must come before it."""

    name: ClassVar[str] = "test-options-tripwire"
    level: ClassVar[str] = "fx"
    ran: ClassVar[list] = []

    def apply(self, program):
        type(self).ran.append(1)
        return PassResult(program, False)


@pytest.mark.parametrize("backend, bad, hint", [
    ("onnxruntime", {"thread": 2}, "threads"),
    ("onnxruntime", {"optimization": "maximum"}, "disable|basic|extended|all"),
    ("openvino", {"hints": "LATENCY"}, "hint"),
    ("tensorrt", {"cache-dri": "/tmp"}, "cache-dir"),
    ("torch", {"threads": 1}, "none"),
])
def test_a_bad_backend_option_fails_before_any_pass(tiny_cnn, tiny_input, backend, bad, hint):
    _Tripwire.ran.clear()
    with temporary_pass(_Tripwire):
        started = time.perf_counter()
        with pytest.raises(SlimcError) as err:
            slimc.compile(tiny_cnn, tiny_input, pipeline="test-options-tripwire,to-onnx,simplify"
                          if backend != "torch" else "test-options-tripwire", backend=backend, backend_options=bad)
        seconds = time.perf_counter() - started
    assert _Tripwire.ran == [], "a pass ran before the backend options were checked"
    assert seconds < 1.0
    key = next(iter(bad))
    assert f"backend '{backend}'" in str(err.value) and hint in str(err.value)
    if backend != "torch" and "optimization" not in bad:
        assert f"has no option '{key}' (did you mean '{hint}'?)" in str(err.value)


def test_cli_reports_a_bad_backend_option_with_the_nearest_name(cli, tmp_path):
    onnx_file = tmp_path / "m.onnx"
    import torch

    from support import TinyCNN

    torch.onnx.export(TinyCNN().eval(), (torch.randn(1, 3, 8, 8),), str(onnx_file), dynamo=False)
    rc, out, err = cli("compile", onnx_file, "--pipeline", "simplify", "--backend-option", "optimisation=basic")
    assert rc == 2 and "slimc: error:" in err and "did you mean 'optimization'" in err
    assert "Traceback" not in err


def test_kebab_and_snake_case_names_and_text_or_python_values():
    by_text = get_backend("tensorrt", **{"cache-dir": "/tmp/x", "dynamic-batch": "1:8:32", "sparse-weights": "yes",
                                         "optimization-level": "3", "compute-capability": "sm86,8.9"}).options
    by_value = get_backend("tensorrt", cache_dir="/tmp/x", dynamic_batch=(1, 8, 32), sparse_weights=True,
                           optimization_level=3, compute_capability=["8.6", "89"]).options
    assert by_text == by_value
    assert by_text.dynamic_batch == (1, 8, 32) and by_text.compute_capability == ("8.6", "8.9")
    ov = get_backend("openvino", **{"compress-to-fp16": "on", "hint": "throughput", "threads": "2"}).options
    assert ov.compress_to_fp16 is True and ov.hint == "THROUGHPUT" and ov.threads == 2


@pytest.mark.parametrize("text, value", [("true", True), ("yes", True), ("on", True), ("1", True), (1, True),
                                         ("false", False), ("no", False), ("off", False), ("0", False), (0, False)])
def test_one_boolean_spelling_for_every_backend(text, value):
    assert get_backend("tensorrt", cache=text).options.cache is value
    assert get_backend("openvino", compress_to_fp16=text).options.compress_to_fp16 is value


@pytest.mark.parametrize("backend, option", [("tensorrt", "cache"), ("openvino", "compress-to-fp16")])
def test_a_non_boolean_fails_the_same_way(backend, option):
    with pytest.raises(SlimcError, match=f"option '{option}' of backend '{backend}' expects true\\|false, got 'maybe'"):
        get_backend(backend, **{option: "maybe"})


@pytest.mark.parametrize("backend, options, words", [
    ("tensorrt", {"dynamic-batch": "8:1:32"}, "MIN:OPT:MAX"),
    ("tensorrt", {"optimization-level": 9}, "between 0 and 5"),
    ("tensorrt", {"compute-capability": "ampere"}, "not a compute capability"),
    ("openvino", {"threads": -1}, "threads=-1 must be 0"),
    ("onnxruntime", {"providers": "[]"}, "at least one execution provider"),
])
def test_value_checks_are_slimc_errors_at_get_backend(backend, options, words):
    with pytest.raises(SlimcError, match=words):
        get_backend(backend, **options)


def test_backend_options_are_listed_with_types_and_defaults():
    listing = backend_options()
    assert set(listing) == set(slimc.backend_names())
    ort = {o["name"]: o for o in listing["onnxruntime"]}
    assert ort["threads"] == {"name": "threads", "type": "an integer", "default": "0"}
    assert ort["optimization"]["type"] == "one of disable|basic|extended|all"
    trt = {o["name"]: o for o in listing["tensorrt"]}
    assert trt["dynamic-batch"]["type"] == "MIN:OPT:MAX or none" and trt["cache"]["type"] == "true|false"
    assert listing["torch"] == []


def test_parsed_options_are_what_the_artifact_reports(tiny_cnn, tiny_input):
    result = slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn,to-onnx", backend="onnxruntime",
                           backend_options={"threads": "1", "optimization": "basic"}, fidelity_samples=0)
    assert result.report["backend"]["threads"] == 1 and result.report["backend"]["optimization"] == "basic"


def test_get_backend_takes_a_dict_or_an_options_object():
    from slimc.backend.onnxruntime import OnnxRuntimeOptions

    opts = OnnxRuntimeOptions(threads=2)
    assert get_backend("onnxruntime", opts).options is opts
    assert get_backend("onnxruntime", {"threads": "2"}).options == opts
    assert get_backend("onnxruntime", opts, optimization="basic").options == OnnxRuntimeOptions(2, "basic")
    with pytest.raises(SlimcError, match="must be a dict of option values or OnnxRuntimeOptions"):
        get_backend("onnxruntime", 2)
