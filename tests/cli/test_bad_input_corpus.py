"""The bad-input corpus: one table of hostile and mistaken command lines, growing with every bug found.

Every case ends either in success or in exactly one `slimc: error:` paragraph with exit code 2 — and
never in a traceback, a changed user file (every file in the workspace is hashed before and after),
a replaced device node, an artifact whose files do not match its sidecar, or a lost search trial.
Cases run in-process through `slimc.cli.main.main`; models are tiny so the whole table stays fast.

To add a case: append a `Case` to CASES. `argv` may use `{ws}` for the case's workspace folder;
`setup(ws, monkeypatch)` prepares anything special (and may return a cleanup function); `changes`
lists workspace paths (globs) the case may legitimately write or change.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from slimc.ir.files import verify_unit
from support import init, make_onnx

MODELS_PY = textwrap.dedent('''
    import sys

    import torch
    import torch.nn as nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


    def tiny():
        torch.manual_seed(0)
        return Tiny()


    def exits():
        sys.exit(3)


    def raises():
        raise RuntimeError("the factory failed")


    def not_a_module():
        return [1, 2, 3]
''')

SEARCH_PIPELINE = "fuse-bn,to-onnx{opset=choice(17,18)}"
SEARCH_FAST = ["--no-progress", "--fidelity-samples", "1", "--benchmark-iters", "1", "--algo", "rand"]


class _Evil:
    """Unpickling this creates the file MARKER: what a hostile .pt file can do when loaded with weights_only=False."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_onnx() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("Add", ["h", "b"], ["y"])]
    return make_onnx(nodes, [("x", [1, 4])], [("y", [1, 3])],
                     [init("w", rng.standard_normal((4, 3))), init("b", rng.standard_normal(3))])


def _workspace(ws: Path) -> None:
    """The user's files every case starts from."""
    (ws / "models.py").write_text(MODELS_PY)
    (ws / "exits_at_import.py").write_text("import sys\nsys.exit(4)\n")
    onnx.save(_tiny_onnx(), ws / "tiny.onnx")
    (ws / "m").mkdir()
    onnx.save(_tiny_onnx(), ws / "m" / "model.onnx")
    os.symlink(ws / "m", ws / "link")
    os.link(ws / "tiny.onnx", ws / "hardlink.onnx")
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), ws / "good.pt")
    torch.save(_Evil(str(ws / "PWNED")), ws / "evil.pt")
    (ws / "pipe.txt").write_text("simplify  # a pipeline script\n")
    (ws / "latin1.txt").write_bytes("simplify # caf\xe9\n".encode("latin-1"))
    (ws / "notes.txt").write_text("the user's own notes\n")
    (ws / "used").mkdir()
    (ws / "used" / "mine.txt").write_text("not slimc's\n")
    os.mkfifo(ws / "fifo")


# ---- setups for single cases ----------------------------------------------------------------

def _big_pipeline_file(ws, mp):
    (ws / "big.txt").write_bytes(b"simplify\n" * (300 * 1024))  # 2.6 MiB


def _earlier_dump(ws, mp):
    from slimc.cli.main import main

    assert main(["opt", str(ws / "tiny.onnx"), "--pipeline", "simplify,eliminate-dead", "--dump-ir", str(ws / "d"),
                 "-o", str(ws / "first.onnx")]) == 0
    assert (ws / "d" / "02-eliminate-dead.onnxtxt").is_file()


def _earlier_artifact(ws, mp):
    from slimc.cli.main import main

    assert main(["compile", str(ws / "tiny.onnx"), "--pipeline", "simplify", "-o", str(ws / "out")]) == 0


def _disk_full_on_save(ws, mp):
    _earlier_artifact(ws, mp)
    import onnx as onnx_module

    real = onnx_module.save_model

    def full(model, f, *args, **kwargs):
        real(model, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(onnx_module, "save_model", full)


def _store_holder(ws, mp):
    from slimc.search.store import TrialStore

    held = TrialStore(ws / "run")
    held.open({"pipeline": SEARCH_PIPELINE, "dimensions": []}, resume=False)
    return held.close


def _copy_store(mutate: Callable[[Path], None] | None = None):
    def setup(ws, mp):
        shutil.copytree(_STORED_SEARCH, ws / "run")
        if mutate:
            mutate(ws / "run")
    return setup


def _torn_tail(run: Path) -> None:
    with open(run / "trials.jsonl", "a") as fh:
        fh.write('{"id": 2, "status": "ok", "pipe')  # killed mid-write


def _garbage_middle(run: Path) -> None:
    lines = (run / "trials.jsonl").read_text().splitlines(keepends=True)
    (run / "trials.jsonl").write_text(lines[0] + "garbage that is not a record\n" + "".join(lines[1:]))


def _bad_meta(run: Path) -> None:
    (run / "search.json").write_text('{"pipeline": "fuse-bn", "dimen')


def _trt_entry_without_inputs(ws, mp):
    from slimc.cli.main import main

    assert main(["compile", str(ws / "tiny.onnx"), "--pipeline", "simplify", "--backend", "tensorrt",
                 "--backend-option", f"cache_dir={ws / 'cache'}"]) == 0
    (meta,) = (ws / "cache").glob("*.json")
    record = json.loads(meta.read_text())
    del record["inputs"]  # the engine's checksum still matches: only the metadata is incomplete
    meta.write_text(json.dumps(record))


def _truncated_onnx(ws, mp):
    (ws / "cut.onnx").write_bytes((ws / "tiny.onnx").read_bytes()[:40])


def _not_a_timing_cache(ws, mp):
    shutil.copy(ws / "tiny.onnx", ws / "precious.bin")


# ---- extra checks ---------------------------------------------------------------------------

def _pair_matches(folder: str):
    def check(ws, out, err):
        verify_unit(ws / folder / "model.onnx")  # raises when model.onnx and model.json are not one save
    return check


def _only_new_dumps(ws, out, err):
    names = {p.name for p in (ws / "d").iterdir()}
    assert "01-simplify.onnxtxt" in names and not any(n.startswith("02-") for n in names), names


def _no_marker(ws, out, err):
    assert not (ws / "PWNED").exists(), "the pickle's code ran"


def _no_output_dir(ws, out, err):
    assert not (ws / "new" / "out").exists() and not (ws / "new").exists(), "a failed compile left a folder"


def _records(ws) -> list[dict]:
    return [json.loads(line) for line in (ws / "run" / "trials.jsonl").read_text().splitlines()]


def _resumed_without_loss(ws, out, err):
    recs = _records(ws)
    assert [r["id"] for r in recs] == [0, 1, 2], recs  # the two stored trials kept, the torn one cut, one new


def _trt_rebuilt(ws, out, err):
    assert "corrupt cache entry" in (ws / "r.json").read_text()


# ---- the table ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    argv: list
    error: tuple = ()           # words the one `slimc: error:` paragraph must contain; () = must succeed
    setup: Callable | None = None
    check: Callable | None = None
    changes: tuple = ()         # workspace globs the case may write or change
    needs: str | None = None    # a module to import, else the case is skipped


TINY = ["{ws}/models.py:tiny", "--input-shape", "1x3x8x8"]
ONNX = ["{ws}/tiny.onnx", "--pipeline", "simplify"]

CASES = [
    # 1. outputs onto inputs
    Case("opt-output-is-input", ["opt", *ONNX, "-o", "{ws}/tiny.onnx"], ("input model", "never overwrites")),
    Case("opt-output-is-hardlink-of-input", ["opt", *ONNX, "-o", "{ws}/hardlink.onnx"], ("input model",)),
    Case("opt-onnxtxt-binary-is-input", ["opt", *ONNX, "-o", "{ws}/tiny.onnxtxt"], ("input model",)),
    Case("compile-output-dir-holds-input", ["compile", "{ws}/m/model.onnx", "--pipeline", "simplify", "-o", "{ws}/m"],
         ("input model",)),
    Case("compile-output-dir-through-symlink", ["compile", "{ws}/link/model.onnx", "--pipeline", "simplify",
                                                "-o", "{ws}/m"], ("input model",)),
    Case("report-is-input", ["compile", *ONNX, "--report", "{ws}/tiny.onnx"], ("--report", "input model")),
    Case("report-is-artifact-sidecar", ["compile", *ONNX, "-o", "{ws}/out", "--report", "{ws}/out/model.json"],
         ("--report", "also writes")),
    Case("report-is-pipeline-file", ["compile", "{ws}/tiny.onnx", "--pipeline-file", "{ws}/pipe.txt",
                                     "--report", "{ws}/pipe.txt"], ("input --pipeline-file",)),
    Case("opt-report-is-output", ["opt", *ONNX, "-o", "{ws}/o.onnx", "--report", "{ws}/o.onnx"], ("also writes",)),
    Case("dump-ir-is-input-folder", ["opt", *ONNX, "-o", "{ws}/o.onnx", "--dump-ir", "{ws}"], ("--dump-ir",)),
    Case("dump-ir-is-output-dir", ["compile", *ONNX, "-o", "{ws}/out", "--dump-ir", "{ws}/out"],
         ("--dump-ir", "a directory of their own")),
    # 2. never replace what is not a regular file
    Case("report-dev-null", ["compile", *ONNX, "--report", "/dev/null"], ("character device",)),
    Case("report-fifo", ["compile", *ONNX, "--report", "{ws}/fifo"], ("fifo",)),
    Case("report-directory", ["compile", *ONNX, "--report", "{ws}/m"], ("directory",)),
    # 3. timing caches
    Case("timing-cache-is-a-model", ["compile", *ONNX, "--backend", "tensorrt", "--backend-option",
                                     "timing_cache={ws}/precious.bin", "--backend-option", "cache=false"],
         ("not a TensorRT timing cache",), setup=_not_a_timing_cache, needs="tensorrt_rtx"),
    Case("timing-cache-is-a-directory", ["compile", *ONNX, "--backend", "tensorrt", "--backend-option",
                                         "timing_cache={ws}/m", "--backend-option", "cache=false"],
         ("directory",), needs="tensorrt_rtx"),
    # 4. artifacts as one unit
    Case("ok-compile-writes-a-matching-pair", ["compile", *ONNX, "-o", "{ws}/out", "--report", "{ws}/r.json"],
         check=_pair_matches("out"), changes=("out/*", "r.json")),
    Case("disk-full-during-save-keeps-old-pair", ["compile", *ONNX, "-o", "{ws}/out"], ("disk is full",),
         setup=_disk_full_on_save, check=_pair_matches("out")),
    # 5. the search store
    Case("search-store-in-use", ["search", *TINY, "--pipeline", SEARCH_PIPELINE, "--store", "{ws}/run",
                                 "--trials", "1", *SEARCH_FAST], ("in use by another search", "pid"),
         setup=_store_holder),
    Case("search-resume-missing-store", ["search", *TINY, "--pipeline", SEARCH_PIPELINE, "--store", "{ws}/nothing",
                                         "--resume", *SEARCH_FAST], ("holds no search",),
         check=lambda ws, out, err: not (ws / "nothing").exists() or pytest.fail("created the store")),
    Case("search-garbage-middle-line", ["search", *TINY, "--pipeline", SEARCH_PIPELINE, "--store", "{ws}/run",
                                        "--resume", "--trials", "3", *SEARCH_FAST], ("line 2", "not JSON"),
         setup=_copy_store(_garbage_middle), changes=("run/.lock",)),
    Case("search-malformed-search-json", ["search", *TINY, "--pipeline", SEARCH_PIPELINE, "--store", "{ws}/run",
                                          "--resume", *SEARCH_FAST], ("search.json", "not valid JSON"),
         setup=_copy_store(_bad_meta), changes=("run/.lock",)),
    Case("ok-search-resume-cuts-torn-tail", ["search", *TINY, "--pipeline", SEARCH_PIPELINE, "--store", "{ws}/run",
                                             "--resume", "--trials", "3", *SEARCH_FAST],
         setup=_copy_store(_torn_tail), check=_resumed_without_loss, changes=("run/*",)),
    # 6. limits
    Case("pipeline-file-dev-zero", ["opt", "{ws}/tiny.onnx", "--pipeline-file", "/dev/zero", "-o", "{ws}/o.onnx"],
         ("larger than",)),
    Case("pipeline-file-too-big", ["opt", "{ws}/tiny.onnx", "--pipeline-file", "{ws}/big.txt", "-o", "{ws}/o.onnx"],
         ("larger than",), setup=_big_pipeline_file),
    Case("pipeline-file-not-utf8", ["opt", "{ws}/tiny.onnx", "--pipeline-file", "{ws}/latin1.txt",
                                    "-o", "{ws}/o.onnx"], ("not UTF-8", "line 1")),
    Case("pipeline-file-is-fifo-dir", ["opt", "{ws}/tiny.onnx", "--pipeline-file", "{ws}/m", "-o", "{ws}/o.onnx"],
         ("cannot read pipeline file",)),
    Case("shape-2-pow-40", ["compile", "{ws}/models.py:tiny", "--input-shape", str(2**40)], ("would take", "GiB")),
    Case("shape-20-digit-dim", ["compile", "{ws}/models.py:tiny", "--input-shape", "99999999999999999999x3x32x32"],
         ("would take", "GiB")),
    Case("factory-calls-sys-exit", ["compile", "{ws}/models.py:exits", "--input-shape", "1x3x8x8"],
         ("sys.exit(3)", "models.py:exits")),
    Case("module-calls-sys-exit-at-import", ["compile", "{ws}/exits_at_import.py:f", "--input-shape", "1x3x8x8"],
         ("sys.exit(4)",)),
    # 7. pickles
    Case("pickle-that-runs-code", ["compile", "{ws}/evil.pt", "--input-shape", "1x3x8x8"], ("--trust-pickle",),
         check=_no_marker),
    Case("pickled-module-without-opt-in", ["compile", "{ws}/good.pt", "--input-shape", "1x3x8x8"],
         ("--trust-pickle",)),
    Case("ok-pickled-module-with-trust-pickle", ["compile", "{ws}/good.pt", "--input-shape", "1x3x8x8",
                                                 "--trust-pickle", "-o", "{ws}/out"],
         check=_pair_matches("out"), changes=("out/*",)),
    # 8. smaller ones
    Case("trial-timeout-negative", ["search", *TINY, "--pipeline", SEARCH_PIPELINE, "--trial-timeout", "-1",
                                    "--store", "{ws}/run", *SEARCH_FAST], ("--trial-timeout -1",)),
    Case("benchmark-negative", ["compile", *ONNX, "--benchmark", "-5"], ("--benchmark -5",)),
    Case("threads-negative", ["compile", *ONNX, "--backend-option", "threads=-3"], ("threads=-3",)),
    Case("search-threads-negative", ["search", *TINY, "--pipeline", SEARCH_PIPELINE, "--backend-option",
                                     "threads=-3", *SEARCH_FAST], ("threads=-3",)),
    Case("leaf-module-matches-nothing", ["compile", *TINY, "--leaf-module", "NoSuchModule"], ("NoSuchModule",)),
    Case("output-dir-is-existing-file", ["compile", *TINY, "-o", "{ws}/notes.txt"], ("existing file",)),
    Case("failed-compile-leaves-no-folder", ["compile", "{ws}/models.py:raises", "--input-shape", "1x3x8x8",
                                             "-o", "{ws}/new/out"], ("the factory failed",), check=_no_output_dir),
    Case("dump-ir-into-used-folder", ["opt", *ONNX, "-o", "{ws}/o.onnx", "--dump-ir", "{ws}/used"],
         ("already holds files",)),
    Case("ok-dump-ir-replaces-earlier-dump", ["opt", *ONNX, "-o", "{ws}/o.onnx", "--dump-ir", "{ws}/d"],
         setup=_earlier_dump, check=_only_new_dumps, changes=("d/*", "d/.*", "o.onnx", "first.onnx")),
    Case("ok-print-pipeline-touches-no-dump", ["compile", *ONNX, "--dump-ir", "{ws}/d", "--print-pipeline"],
         setup=_earlier_dump),  # the hashes check that the earlier dump is still all there
    Case("ok-trt-cache-entry-without-inputs-rebuilt",
         ["compile", *ONNX, "--backend", "tensorrt", "--backend-option", "cache_dir={ws}/cache",
          "--report", "{ws}/r.json"], setup=_trt_entry_without_inputs, check=_trt_rebuilt,
         changes=("cache/*", "r.json"), needs="tensorrt_rtx"),
    # the classics
    Case("factory-returns-a-list", ["compile", "{ws}/models.py:not_a_module", "--input-shape", "1x3x8x8"],
         ("not a torch.nn.Module",)),
    Case("unknown-pass", ["opt", "{ws}/tiny.onnx", "--pipeline", "simplfy", "-o", "{ws}/o.onnx"],
         ("did you mean 'simplify'",)),
    Case("truncated-onnx", ["opt", "{ws}/cut.onnx", "--pipeline", "simplify", "-o", "{ws}/o.onnx"],
         ("cut.onnx",), setup=_truncated_onnx),
]


def _hashes(ws: Path) -> dict[str, str]:
    out = {}
    for p in sorted(ws.rglob("*")):
        rel = str(p.relative_to(ws))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif stat.S_ISFIFO(p.lstat().st_mode):
            out[rel] = "fifo"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def stored_search(tmp_path_factory):
    """A finished two-trial search store the store cases copy and damage."""
    global _STORED_SEARCH
    from slimc.cli.main import main

    ws = tmp_path_factory.mktemp("stored")
    (ws / "models.py").write_text(MODELS_PY)
    argv = ["search", f"{ws}/models.py:tiny", "--input-shape", "1x3x8x8", "--pipeline", SEARCH_PIPELINE,
            "--store", str(ws / "run"), "--trials", "2", *SEARCH_FAST]
    assert main(argv) == 0
    assert [r["id"] for r in (json.loads(x) for x in (ws / "run" / "trials.jsonl").read_text().splitlines())] == [0, 1]
    _STORED_SEARCH = ws / "run"
    return _STORED_SEARCH


_STORED_SEARCH: Path | None = None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_corpus(case, tmp_path, capsys, monkeypatch, stored_search):
    from slimc.cli.main import main

    if case.needs:
        pytest.importorskip(case.needs)
    ws = tmp_path / "ws"
    ws.mkdir()
    _workspace(ws)
    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path / "engine-cache"))  # never the user's real cache
    cleanup = case.setup(ws, monkeypatch) if case.setup else None
    before = _hashes(ws)
    dev_null = os.stat("/dev/null")
    capsys.readouterr()
    try:
        try:
            rc = main([a.replace("{ws}", str(ws)) for a in case.argv])
        except SystemExit as exc:  # argparse's own usage errors
            rc = exc.code
    finally:
        if cleanup:
            cleanup()
        monkeypatch.undo()
    out, err = capsys.readouterr()

    assert "Traceback" not in err + out, err
    if case.error:
        assert rc == 2, f"exit {rc}, stderr: {err}"
        assert err.count("slimc: error:") == 1, err
        paragraph = err[err.index("slimc: error:"):]
        assert paragraph.strip().count("\n") == 0, f"not one paragraph: {paragraph!r}"
        for word in case.error:
            assert word in paragraph, f"{word!r} not in {paragraph!r}"
    else:
        assert rc == 0, f"exit {rc}, stderr: {err}"
    # no user file changed, moved or lost (beyond the outputs this case is meant to write)
    after = _hashes(ws)
    for rel, digest in before.items():
        if any(fnmatch.fnmatch(rel, g) for g in case.changes):
            continue
        assert after.get(rel) == digest, f"user file '{rel}' was changed or removed"
    st = os.stat("/dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == dev_null.st_rdev, "/dev/null was replaced"
    assert not list(ws.rglob(".*.tmp")), "temporary files left behind"
    if case.check:
        case.check(ws, out, err)
