"""Reading and writing ONNX: binary, text syntax, external data, atomic writes, and bad files."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest
from onnx import helper

from slimc import SlimcError
from slimc.ir.onnx_io import atomic_write, load_onnx, save_onnx, save_onnx_text
from support import check_same_function, init, make_onnx, op_types


def _model(big: bool = True):
    """x[2,16] @ w[16,32] + b -> relu; w is over the external-data threshold (1 KiB) when big."""
    rng = np.random.default_rng(0)
    n = 32 if big else 2
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    return make_onnx(nodes, [("x", [2, 16])], [("y", [2, n])],
                     [init("w", rng.standard_normal((16, n))), init("b", rng.standard_normal(n))])


def _default_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def test_save_and_load_binary(tmp_path):
    model = _model()
    path = save_onnx(model, tmp_path / "sub" / "m.onnx")
    assert path == tmp_path / "sub" / "m.onnx"
    assert os.listdir(tmp_path / "sub") == ["m.onnx"]  # no temporary files left behind
    back = load_onnx(path)
    assert back.SerializeToString() == model.SerializeToString()
    assert stat.S_IMODE(os.stat(path).st_mode) == _default_mode()


def test_save_with_external_data_leaves_the_model_alone(tmp_path):
    model = _model()
    before = model.SerializeToString()
    path = save_onnx(model, tmp_path / "m.onnx", external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    assert model.SerializeToString() == before
    assert os.path.getsize(tmp_path / "m.onnx") < 16 * 32 * 4 <= os.path.getsize(tmp_path / "m.onnx.data")
    check_same_function(model, load_onnx(path))


@pytest.mark.parametrize("big", [True, False], ids=["external-weights", "inline-weights"])
def test_text_syntax_round_trip(tmp_path, big):
    model = _model(big)
    text = save_onnx_text(model, tmp_path / "m.onnxtxt")
    assert text == tmp_path / "m.onnxtxt"
    body = text.read_text()
    assert "MatMul" in body and "Relu" in body and "<" in body  # onnx.printer's text syntax
    assert (tmp_path / "m.onnx").is_file()  # for Netron
    back = load_onnx(text)
    assert op_types(back) == op_types(model)
    check_same_function(model, back, rel=0)
    check_same_function(model, load_onnx(tmp_path / "m.onnx"), rel=0)


def test_missing_external_data(tmp_path):
    save_onnx_text(_model(), tmp_path / "m.onnxtxt")
    (tmp_path / "m.onnx.data").unlink()
    for f in ("m.onnxtxt", "m.onnx"):
        with pytest.raises(SlimcError) as e:
            load_onnx(tmp_path / f)
        assert f"cannot read '{tmp_path / f}'" in str(e.value) and "m.onnx.data" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(SlimcError, match="does not exist"):
        load_onnx(tmp_path / "nope.onnx")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_truncated_file(tmp_path, keep):
    good = tmp_path / "good.onnx"
    onnx.save(_model(), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SlimcError) as e:
        load_onnx(bad)
    msg = str(e.value)
    assert "bad.onnx" in msg
    assert any(w in msg for w in ("truncated", "no ONNX graph", "not a valid ONNX model")), msg


def test_not_an_onnx_file(tmp_path):
    f = tmp_path / "photo.onnx"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(SlimcError, match="photo.onnx"):
        load_onnx(f)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(SlimcError, match="holds no ONNX graph"):
        load_onnx(empty)
    txt = tmp_path / "bad.onnxtxt"
    txt.write_text("<ir_version: 8> this is not { the text syntax")
    with pytest.raises(SlimcError, match="cannot read .*bad.onnxtxt"):
        load_onnx(txt)


def test_invalid_graph(tmp_path):
    model = _model()
    model.graph.node[1].input[1] = "undefined_tensor"
    f = tmp_path / "invalid.onnx"
    onnx.save(model, f)
    with pytest.raises(SlimcError, match="is not a valid ONNX model"):
        load_onnx(f)


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    with pytest.raises(SlimcError, match="cannot write") as e:
        save_onnx(_model(), blocker / "m.onnx")
    assert "Choose a writable location" in str(e.value)
    with pytest.raises(SlimcError, match="cannot write"):
        save_onnx(_model(), blocker / "m.onnx", external_data=True)
    with pytest.raises(SlimcError, match="cannot write"):
        save_onnx_text(_model(), blocker / "sub" / "m.onnxtxt")


def test_atomic_write_onto_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(SlimcError, match="cannot write .*'.*d'"):
        atomic_write(tmp_path / "d", lambda tmp: open(tmp, "w").close())
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
