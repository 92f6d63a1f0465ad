"""TensorRT and user files: timing caches are only read and written when they are timing caches, cache
entries with incomplete metadata are rebuilt, saved engines are one unit with their sidecar."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX builds engines without a GPU")

import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slimc.backend.tensorrt import TensorRTBackend, load_engine  # noqa: E402
from slimc.backend.tensorrt.build import TIMING_CACHE_MAGIC  # noqa: E402
from slimc.errors import SlimcError  # noqa: E402
from slimc.ir.program import Program  # noqa: E402


def _program() -> Program:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 14, 14])
    model = helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "tiny", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    return Program(model, (torch.zeros(1, 3, 16, 16),), ("x",), ("y",))


def _build(tmp_path, **options):
    opts = {"cache_dir": str(tmp_path / "engines"), "flavor": "rtx", **options}
    return TensorRTBackend(options=opts).build(_program())


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_timing_cache_is_created_then_reused(tmp_path):
    timing = tmp_path / "timing.cache"
    _build(tmp_path, timing_cache=str(timing), cache=False)
    assert timing.read_bytes().startswith(TIMING_CACHE_MAGIC)
    _build(tmp_path, timing_cache=str(timing), cache=False)  # read back, accepted, saved again
    assert timing.read_bytes().startswith(TIMING_CACHE_MAGIC)


def test_a_file_that_is_not_a_timing_cache_is_never_read_or_overwritten(tmp_path):
    precious = tmp_path / "model.onnx"
    precious.write_bytes(_program().ir.SerializeToString())
    before = _digest(precious)
    with pytest.raises(SlimcError, match="not a TensorRT timing cache"):
        _build(tmp_path, timing_cache=str(precious), cache=False)
    assert _digest(precious) == before


def test_a_timing_cache_path_that_is_not_a_regular_file_is_refused(tmp_path):
    with pytest.raises(SlimcError, match="directory"):
        _build(tmp_path, timing_cache=str(tmp_path), cache=False)
    with pytest.raises(SlimcError, match="character device"):
        _build(tmp_path, timing_cache="/dev/null", cache=False)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SlimcError, match="fifo"):  # reading it would block forever
        _build(tmp_path, timing_cache=str(tmp_path / "fifo"), cache=False)


@pytest.mark.parametrize("key", ["inputs", "outputs"])
def test_cache_entry_without_io_is_rebuilt_not_a_key_error(tmp_path, key):
    first = _build(tmp_path)
    meta = Path(first.describe()["cache_entry"]).with_suffix(".json")
    record = json.loads(meta.read_text())
    del record[key]  # the engine's checksum still matches
    meta.write_text(json.dumps(record))
    second = _build(tmp_path)
    assert second.describe()["cache_hit"] is False and "inputs or outputs" in second.describe()["cache_note"]
    assert _build(tmp_path).describe()["cache_hit"] is True


def test_saved_engine_is_checked_against_its_sidecar(tmp_path):
    art = _build(tmp_path)
    path = Path(art.save(tmp_path / "out"))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["files"]["model.engine"]["sha256"] == hashlib.sha256(art.engine).hexdigest()
    assert load_engine(path).engine == art.engine
    path.write_bytes(art.engine[:-10])  # an engine from elsewhere, or cut short
    with pytest.raises(SlimcError, match="does not match its sidecar"):
        load_engine(path)
