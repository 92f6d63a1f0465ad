"""slimc.compile refuses, before any work, runs that would change a user's file; a failed run leaves nothing."""

from __future__ import annotations

import json

import onnx
import pytest

import slimc
from slimc.errors import SlimcError
from slimc.ir.dump import DUMP_MANIFEST, prepare_dump_dir
from slimc.ir.files import verify_unit
from support import TinyCNN


@pytest.fixture
def onnx_file(tmp_path, tiny_cnn, tiny_input):
    result = slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn,to-onnx", backend=None, fidelity_samples=0)
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    onnx.save(result.onnx, path)
    return path


def test_output_dir_holding_the_input_is_refused_before_work(onnx_file):
    before = onnx_file.read_bytes()
    with pytest.raises(SlimcError, match="input model"):
        slimc.compile(str(onnx_file), pipeline="simplify", output_dir=onnx_file.parent)
    with pytest.raises(SlimcError, match="input model"):
        slimc.compile(str(onnx_file), pipeline="simplify", report=slimc.ReportOptions(path=onnx_file))
    assert onnx_file.read_bytes() == before and sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx"]


def test_report_onto_the_artifacts_sidecar_is_refused(tmp_path, tiny_cnn, tiny_input):
    with pytest.raises(SlimcError, match="also writes"):
        slimc.compile(tiny_cnn, tiny_input, output_dir=tmp_path / "out", report=slimc.ReportOptions(path=tmp_path / "out" / "model.json"))
    assert not (tmp_path / "out").exists()


def test_failed_compile_leaves_no_output_folders(tmp_path, tiny_input):
    class Broken(TinyCNN):
        def forward(self, x):
            raise RuntimeError("broken model")

    with pytest.raises(SlimcError):
        slimc.compile(Broken(), tiny_input, output_dir=tmp_path / "a" / "b", report=slimc.ReportOptions(path=tmp_path / "r" / "x.json"))
    assert list(tmp_path.iterdir()) == []


def test_output_dir_that_is_a_file_fails_first(tmp_path, tiny_cnn, tiny_input):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(SlimcError, match="existing file"):
        slimc.compile(tiny_cnn, tiny_input, output_dir=tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_saved_artifact_is_a_unit(tmp_path, tiny_cnn, tiny_input):
    result = slimc.compile(tiny_cnn, tiny_input, output_dir=tmp_path / "out", fidelity_samples=0)
    side = verify_unit(tmp_path / "out" / "model.onnx")
    assert set(side["files"]) == {"model.onnx"} and side["backend"] == "onnxruntime"
    assert result.report["artifact"] == str(tmp_path / "out" / "model.onnx")


@pytest.mark.parametrize("kwargs, words", [
    ({"benchmark_iters": -5}, "--benchmark -5"),
    ({"backend_options": {"threads": -3}}, "threads=-3"),
    ({"backend_options": {"threads": "two"}}, "'threads' of backend 'onnxruntime' expects an integer"),
    ({"leaf_modules": ["NoSuchModule"]}, "'NoSuchModule' matches no submodule"),
])
def test_bad_numbers_and_names(tiny_cnn, tiny_input, kwargs, words):
    with pytest.raises(SlimcError, match=words.replace("(", r"\(")):
        slimc.compile(tiny_cnn, tiny_input, fidelity_samples=0, **kwargs)


def test_leaf_module_by_name_or_class_is_accepted(tiny_cnn, tiny_input):
    slimc.compile(tiny_cnn, tiny_input, backend=None, pipeline="fuse-bn", leaf_modules=["bn1", "Conv2d"],
                  fidelity_samples=0)


def test_dump_dir_clears_only_its_own_earlier_dump(tmp_path, tiny_cnn, tiny_input):
    dump = tmp_path / "d"
    slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn,to-onnx,eliminate-dead", backend=None, instrumentation=slimc.Instrumentation(dump_ir=dump),
                  fidelity_samples=0)
    assert (dump / "03-eliminate-dead.onnxtxt").is_file() and (dump / DUMP_MANIFEST).is_file()
    slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn", backend=None, instrumentation=slimc.Instrumentation(dump_ir=dump), fidelity_samples=0)
    assert sorted(p.name for p in dump.iterdir() if not p.name.startswith(".")) == \
        ["00-input.nodes.txt", "00-input.py", "01-fuse-bn.nodes.txt", "01-fuse-bn.py"]
    (dump / "notes.txt").write_text("mine")
    with pytest.raises(SlimcError, match="not an earlier slimc dump"):
        slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn", backend=None, instrumentation=slimc.Instrumentation(dump_ir=dump), fidelity_samples=0)
    assert (dump / "notes.txt").read_text() == "mine"


def test_manifest_never_reaches_outside_the_dump_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "keep2.txt").write_text("mine too")
    dump = tmp_path / "d"
    dump.mkdir()
    (dump / DUMP_MANIFEST).write_text(json.dumps({"files": ["../keep.txt", str(tmp_path / "keep2.txt"), "x.py"]}))
    (dump / "x.py").write_text("")
    prepare_dump_dir(dump)
    assert (tmp_path / "keep.txt").read_text() == "mine" and (tmp_path / "keep2.txt").read_text() == "mine too"
    assert list(dump.iterdir()) == []
