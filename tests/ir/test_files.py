"""slimc.ir.files: outputs never land on inputs or device nodes, bounded reads, artifacts written as one unit."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slimc.errors import SlimcError
from slimc.ir.files import RunPaths, check_replaceable, read_text_bounded, verify_unit, write_unit
from slimc.ir.onnx_io import atomic_write, write_json


# ---- outputs onto inputs -----------------------------------------------------------------

def test_output_that_is_an_input_is_refused_by_path_symlink_and_inode(tmp_path):
    (tmp_path / "m").mkdir()
    model = tmp_path / "m" / "model.onnx"
    model.write_bytes(b"model")
    os.symlink(tmp_path / "m", tmp_path / "link")
    os.link(model, tmp_path / "hard.onnx")
    for out in (model, tmp_path / "link" / "model.onnx", tmp_path / "hard.onnx", tmp_path / "m" / ".." / "m" / "model.onnx"):
        with pytest.raises(SlimcError, match="input model"):
            RunPaths().input("model", model).output("-o", out).check()
    RunPaths().input("model", model).output("-o", tmp_path / "other.onnx").check()  # a new file is fine
    assert model.read_bytes() == b"model"


def test_two_outputs_of_one_run_are_refused(tmp_path):
    with pytest.raises(SlimcError, match="--report .* which --output-dir also writes"):
        RunPaths().output("--output-dir", tmp_path / "out" / "model.json").output("--report", tmp_path / "out" / "model.json").check()


def test_spec_inputs():
    from slimc.ir.files import input_files_of_spec

    assert input_files_of_spec("a/b.py:make") == [Path("a/b.py")]
    assert Path("m.onnx") in input_files_of_spec("m.onnx") and input_files_of_spec("torchvision:resnet18") == []
    assert Path("d.onnx") in input_files_of_spec("d.onnxtxt")


# ---- what is not a regular file is never replaced ----------------------------------------------

def test_device_node_fifo_and_directory_are_refused(tmp_path):
    before = os.stat("/dev/null")
    with pytest.raises(SlimcError, match="character device"):
        write_json("/dev/null", {"a": 1})  # refused before anything is written beside it
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SlimcError, match="fifo"):
        atomic_write(tmp_path / "fifo", lambda tmp: Path(tmp).write_text("x"))
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    (tmp_path / "d").mkdir()
    with pytest.raises(SlimcError, match="directory"):
        check_replaceable(tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "fifo"]  # no temporary file left


def test_symlink_target_is_written_through_and_the_link_stays(tmp_path):
    (tmp_path / "real.json").write_text("{}")
    os.symlink(tmp_path / "real.json", tmp_path / "link.json")
    write_json(tmp_path / "link.json", {"a": 1})
    assert os.path.islink(tmp_path / "link.json")
    assert json.loads((tmp_path / "real.json").read_text()) == {"a": 1}


def test_full_disk_while_writing_is_a_user_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")

    def fill(tmp):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SlimcError, match="disk is full"):
        atomic_write(target, fill)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ---- bounded text reads ------------------------------------------------------------------------

def test_dev_zero_and_big_files_fail_fast(tmp_path):
    code = ("from slimc.ir.files import read_text_bounded\n"
            "from slimc.errors import SlimcError\n"
            "try:\n    read_text_bounded('/dev/zero', 'pipeline file')\nexcept SlimcError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert "larger than 1024 KiB" in done.stdout, done.stderr
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (2 << 20))
    with pytest.raises(SlimcError, match="larger than"):
        read_text_bounded(big, "pipeline file")


def test_non_utf8_names_the_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"fuse-bn\nsimplify # caf\xe9\n")
    with pytest.raises(SlimcError, match=r"not UTF-8 text \(byte 0xe9 at line 2\)"):
        read_text_bounded(f, "pipeline file")


# ---- artifacts as one unit -----------------------------------------------------------------------

def _save(folder: Path, tag: str, size: int = 200_000) -> None:
    def write(staging: Path) -> None:
        (staging / "model.bin").write_bytes(tag.encode() * size)
    write_unit(folder / "model.bin", write, {"tag": tag})


def test_unit_has_a_manifest_and_a_changed_file_is_caught(tmp_path):
    _save(tmp_path, "a")
    side = verify_unit(tmp_path / "model.bin")
    assert side["tag"] == "a" and set(side["files"]) == {"model.bin"}
    (tmp_path / "model.bin").write_bytes(b"b" * 200_000)
    with pytest.raises(SlimcError, match="does not match its sidecar"):
        verify_unit(tmp_path / "model.bin")


def test_concurrent_saves_never_mix_a_pair(tmp_path):
    tags = [chr(ord("a") + i) for i in range(8)]
    for _ in range(5):
        threads = [threading.Thread(target=_save, args=(tmp_path, t)) for t in tags]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        side = verify_unit(tmp_path / "model.bin")  # the sidecar describes exactly the model beside it
        assert (tmp_path / "model.bin").read_bytes()[:1] == side["tag"].encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.json"]


def _process_saves(folder: str, tag: str) -> None:
    for _ in range(30):
        _save(Path(folder), tag, 20_000)


def test_concurrent_saves_from_processes_never_mix_a_pair(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_saves, args=(str(tmp_path), t)) for t in "xyz"]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):  # read while they write: a reader never sees a save half-renamed
        verify_unit(tmp_path / "model.bin")
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    side = verify_unit(tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes()[:1] == side["tag"].encode()


def test_failed_unit_write_keeps_the_old_pair(tmp_path):
    _save(tmp_path, "a")

    def fail(staging: Path) -> None:
        (staging / "model.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SlimcError, match="disk is full"):
        write_unit(tmp_path / "model.bin", fail, {"tag": "b"})
    assert verify_unit(tmp_path / "model.bin")["tag"] == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.json"]
