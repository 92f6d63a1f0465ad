"""Pass manager: --verify-each, reproducers for passes that raise (and their replay), IR dumps, records."""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

import slimc
from slimc import Instrumentation, PassManager, Pipeline, SlimcError
from slimc.ir.onnx_io import load_onnx
from slimc.passes.manager import PassFailed, VerificationError, outputs_close
from slimc.passes.registry import PassResult
from support import assert_outputs_close, bn_modules, fresh_inputs, program_of, temporary_pass


# ---- test-only passes (registered per test, removed afterwards) ---------------------------

def _perturbed(gm):
    new = copy.deepcopy(gm)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return new


@dataclass(frozen=True)
class _BrokenLossless(slimc.Pass):
    """Claims to be lossless but perturbs every weight."""

    name: ClassVar[str] = "test-manager-broken-lossless"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = True

    def apply(self, program):
        return PassResult(program.with_ir(_perturbed(program.ir)), True)


@dataclass(frozen=True)
class _CorruptOnnx(slimc.Pass):
    """Claims to be lossless but writes an op no runtime knows."""

    name: ClassVar[str] = "test-manager-corrupt-onnx"
    level: ClassVar[str] = "onnx"

    def apply(self, program):
        model = copy.deepcopy(program.ir)
        model.graph.node[0].op_type = "NoSuchOp"
        return PassResult(program.with_ir(model), True)


@dataclass(frozen=True)
class _HonestLossy(slimc.Pass):
    """Perturbs weights and says so."""

    name: ClassVar[str] = "test-manager-honest-lossy"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = False

    def apply(self, program):
        return PassResult(program.with_ir(_perturbed(program.ir)), True)


_EXPLODE = {"on": True}


@dataclass(frozen=True)
class _ExplodeOnnx(slimc.Pass):
    """Raises a plain exception while _EXPLODE['on'] (a crash in a pass); else changes nothing."""

    name: ClassVar[str] = "test-manager-explode-onnx"
    level: ClassVar[str] = "onnx"

    def apply(self, program):
        if _EXPLODE["on"]:
            raise RuntimeError("boom in the onnx pass\nsecond line")
        return PassResult(program, False)


@dataclass(frozen=True)
class _ExplodeFx(slimc.Pass):
    name: ClassVar[str] = "test-manager-explode-fx"
    level: ClassVar[str] = "fx"

    def apply(self, program):
        if _EXPLODE["on"]:
            raise ValueError("boom in the fx pass")
        return PassResult(program, False)


@dataclass(frozen=True)
class _UserError(slimc.Pass):
    name: ClassVar[str] = "test-manager-user-error"
    level: ClassVar[str] = "fx"

    def apply(self, program):
        raise SlimcError("this layer cannot be pruned")


@pytest.fixture
def explode():
    _EXPLODE["on"] = True
    yield _EXPLODE
    _EXPLODE["on"] = True


# ---- verify-each -------------------------------------------------------------------------

def test_verify_each_catches_a_broken_lossless_pass(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_BrokenLossless):
        pipeline = Pipeline.parse("fuse-bn,test-manager-broken-lossless,to-onnx")
        with pytest.raises(VerificationError) as e:
            PassManager(pipeline, Instrumentation(verify_each=True)).run(program)
        msg = str(e.value)
        assert "--verify-each" in msg and "'test-manager-broken-lossless' (#2)" in msg
        assert "lossless but changed the outputs" in msg and "max abs error" in msg
        assert isinstance(e.value, SlimcError)
        # without the check the same pipeline runs through (the bug goes unnoticed)
        final, records = PassManager(pipeline).run(program)
        assert [r.name for r in records] == ["fuse-bn", "test-manager-broken-lossless", "to-onnx"]
    assert "test-manager-broken-lossless" not in slimc.registered_passes()


def test_verify_each_names_a_pass_whose_output_does_not_run(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_CorruptOnnx):
        pm = PassManager(Pipeline.parse("to-onnx,test-manager-corrupt-onnx").lowered("fx"),
                         Instrumentation(verify_each=True))
        with pytest.raises(VerificationError) as e:
            pm.run(program)
    msg = str(e.value)
    assert "'test-manager-corrupt-onnx' (#2) does not run" in msg and "NoSuchOp" in msg


def test_verify_each_lets_lossy_passes_change_outputs(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_HonestLossy):
        pm = PassManager(Pipeline.parse("test-manager-honest-lossy,fuse-bn"), Instrumentation(verify_each=True))
        final, records = pm.run(program)
    lossy, fuse = records
    assert not lossy.lossless and lossy.max_abs_err is None
    # fuse-bn after the lossy pass is checked against the lossy pass's outputs, not the original's
    assert fuse.lossless and fuse.max_abs_err is not None and fuse.max_abs_err < 1e-4
    xs = fresh_inputs(program)
    ok, err, _ = outputs_close(program.run(xs), final.run(xs), 1e-3, 1e-4)
    assert not ok and err > 1e-3  # the lossy change is really there


def test_verify_each_through_compile_and_cli(tmp_path, cli, tiny_cnn, tiny_input):
    with temporary_pass(_BrokenLossless):
        with pytest.raises(SlimcError, match="test-manager-broken-lossless"):
            slimc.compile(tiny_cnn, tiny_input, pipeline="test-manager-broken-lossless", backend=None,
                          instrumentation=Instrumentation(verify_each=True), fidelity_samples=0)
        f = tmp_path / "tiny.py"
        f.write_text("import support\n\ndef make():\n    return support.randomize_bn(support.TinyCNN())\n")
        rc, out, err = cli("opt", f"{f}:make", "--input-shape", "1x3x8x8", "--pipeline",
                           "fuse-bn,test-manager-broken-lossless", "-o", tmp_path / "o.pt", "--verify-each")
    assert rc == 2
    assert err.startswith("slimc: error:") and "test-manager-broken-lossless" in err and "Traceback" not in err
    assert not (tmp_path / "o.pt").exists()


def test_outputs_close_reports_shape_and_count_changes():
    a = [np.ones((2, 3), np.float32)]
    assert outputs_close(a, [np.ones((2, 3), np.float32)], 1e-3, 1e-4)[0]
    ok, err, why = outputs_close(a, [np.ones((3, 2), np.float32)], 1e-3, 1e-4)
    assert not ok and "shape" in why
    ok, _, why = outputs_close(a, a + a, 1e-3, 1e-4)
    assert not ok and "1 outputs before, 2 after" in why
    ok, err, why = outputs_close(a, [np.full((2, 3), np.nan, np.float32)], 1e-3, 1e-4)
    assert not ok


# ---- reproducers ---------------------------------------------------------------------

def _replay_argv(message: str) -> list[str]:
    cmd = message.split("replay it with: ", 1)[1].strip()
    argv = shlex.split(cmd)
    assert argv[:2] == ["slimc", "opt"]
    return argv[1:]


def test_crashing_onnx_pass_writes_a_reproducer_that_replays(tmp_path, cli, explode, tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_ExplodeOnnx):
        pipeline = Pipeline.parse("fuse-bn,to-onnx,test-manager-explode-onnx,simplify{check-n=0}")
        inst = Instrumentation(reproducer_dir=tmp_path)
        with pytest.raises(PassFailed) as e:
            PassManager(pipeline, inst).run(program)
        msg = str(e.value)
        assert "pass 'test-manager-explode-onnx' (#3) raised RuntimeError: boom in the onnx pass." in msg
        assert "second line" not in msg
        assert "slimc opt " in msg
        dirs = [d for d in tmp_path.iterdir() if d.name.startswith("slimc-repro-test-manager-explode-onnx-")]
        assert len(dirs) == 1
        repro = dirs[0]
        assert str(repro) in msg
        assert {p.name for p in repro.iterdir()} >= {"input.onnx", "pipeline.txt", "inputs.npz", "error.txt"}

        # the input IR is the program the failing pass got: to-onnx's output, same function
        model = load_onnx(repro / "input.onnx")
        xs = fresh_inputs(program)
        assert_outputs_close(program.run(xs), program.with_ir(model).run(xs), rel=1e-4)
        # the pipeline from the failing pass on, canonical text
        rest = Pipeline.parse((repro / "pipeline.txt").read_text())
        assert rest == Pipeline.parse("test-manager-explode-onnx,simplify{check-n=0}")
        inputs = np.load(repro / "inputs.npz")
        assert [inputs[k].shape for k in inputs.files] == [tuple(tiny_input.shape)]
        error = (repro / "error.txt").read_text()
        assert "Traceback" in error and "RuntimeError: boom in the onnx pass" in error

        # replay: still failing while the bug is there, through the CLI with a clean error
        argv = _replay_argv(msg)
        rc, out, err = cli(*argv)
        assert rc == 2 and "slimc: error:" in err and "boom in the onnx pass" in err
        # ... and runs through once the pass is fixed
        explode["on"] = False
        rc, out, err = cli(*argv)
        assert rc == 0, err
        output = argv[argv.index("-o") + 1]
        assert_outputs_close(program.run(xs), program.with_ir(load_onnx(output)).run(xs), rel=1e-4)


def test_crashing_fx_pass_writes_a_torch_reproducer(tmp_path, cli, explode, tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_ExplodeFx):
        pipeline = Pipeline.parse("fuse-bn,test-manager-explode-fx,simplify{check-n=0}").lowered("fx")
        with pytest.raises(PassFailed) as e:
            PassManager(pipeline, Instrumentation(reproducer_dir=tmp_path)).run(program)
        msg = str(e.value)
        assert "'test-manager-explode-fx' (#2) raised ValueError: boom in the fx pass" in msg
        repro = next(tmp_path.glob("slimc-repro-test-manager-explode-fx-*"))
        gm = torch.load(repro / "input.pt", weights_only=False)
        assert bn_modules(gm) == []  # fuse-bn had run before the failing pass
        xs = fresh_inputs(program)
        assert_outputs_close(program.run(xs), program.with_ir(gm).run(xs), rel=1e-5)
        assert Pipeline.parse((repro / "pipeline.txt").read_text()).passes[0].name == "test-manager-explode-fx"
        assert "--input-shape 2x3x8x8:float32" in msg  # a torch reproducer needs its input shapes

        explode["on"] = False
        argv = _replay_argv(msg)
        rc, out, err = cli(*argv)
        assert rc == 0, err
        output = argv[argv.index("-o") + 1]
        assert output.endswith(".onnx")  # the pipeline from the failing pass on ends at ONNX
        assert_outputs_close(program.run(xs), program.with_ir(load_onnx(output)).run(xs), rel=1e-4)


def test_reproducer_dir_is_created_and_a_failing_reproducer_keeps_the_pass_error(tmp_path, explode, tiny_cnn,
                                                                                 tiny_input):
    import torch.nn as nn

    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_ExplodeFx):
        pm = PassManager(Pipeline.parse("test-manager-explode-fx"), Instrumentation(reproducer_dir=tmp_path / "new"))
        with pytest.raises(PassFailed, match="boom in the fx pass"):
            pm.run(program)
        assert len(list((tmp_path / "new").glob("slimc-repro-test-manager-explode-fx-*"))) == 1
        # a module torch.save cannot pickle: the pass's error is still what the user sees
        unpicklable = program.with_ir(copy.deepcopy(program.ir))
        unpicklable.ir.add_module("hook", nn.Identity())
        unpicklable.ir.hook.fn = lambda x: x
        pm = PassManager(Pipeline.parse("test-manager-explode-fx"), Instrumentation(reproducer_dir=tmp_path))
        with pytest.raises(PassFailed) as e:
            pm.run(unpicklable)
    msg = str(e.value)
    assert "'test-manager-explode-fx' (#1) raised ValueError: boom in the fx pass" in msg
    assert "Writing a reproducer failed too" in msg


def test_user_errors_from_a_pass_name_the_pass_and_write_no_reproducer(tmp_path, tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_UserError):
        with pytest.raises(SlimcError) as e:
            PassManager(Pipeline.parse("test-manager-user-error"), Instrumentation(reproducer_dir=tmp_path)).run(program)
    assert not isinstance(e.value, PassFailed)
    assert str(e.value) == "pass 'test-manager-user-error': this layer cannot be pruned"
    assert list(tmp_path.iterdir()) == []


# ---- dumps, records ------------------------------------------------------------------

def test_dump_ir_writes_numbered_files_that_load_back(tmp_path, tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    dump = tmp_path / "dump"
    pipeline = Pipeline.parse("fuse-bn,fuse-bn,to-onnx,eliminate-dead")
    final, records = PassManager(pipeline, Instrumentation(dump_ir=dump)).run(program)
    files = {p.name for p in dump.iterdir()}
    for stem in ("00-input", "01-fuse-bn", "02-fuse-bn"):
        assert {f"{stem}.py", f"{stem}.nodes.txt"} <= files
    for stem in ("03-to-onnx", "04-eliminate-dead"):
        assert {f"{stem}.onnxtxt", f"{stem}.onnx"} <= files
    assert "bn1" in (dump / "00-input.nodes.txt").read_text()
    assert "bn1" not in (dump / "01-fuse-bn.nodes.txt").read_text()
    assert "bn1" in (dump / "00-input.py").read_text() and "bn1" not in (dump / "01-fuse-bn.py").read_text()
    xs = fresh_inputs(program)
    for stem in ("03-to-onnx", "04-eliminate-dead"):
        model = load_onnx(dump / f"{stem}.onnxtxt")
        assert_outputs_close(final.run(xs), program.with_ir(model).run(xs), rel=1e-6)


def test_dump_ir_changed_only_skips_passes_that_changed_nothing(tmp_path, tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    dump = tmp_path / "dump"
    pipeline = Pipeline.parse("fuse-bn,fuse-bn,to-onnx,eliminate-dead")
    final, records = PassManager(pipeline, Instrumentation(dump_ir=dump, dump_ir_changed_only=True)).run(program)
    assert [r.changed for r in records] == [True, False, True, False]
    stems = {p.name.split(".")[0] for p in dump.iterdir() if not p.name.startswith(".")}
    assert stems == {"00-input", "01-fuse-bn", "03-to-onnx"}


def test_records_and_progress_callback(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    seen = []
    pm = PassManager(Pipeline.parse("fuse-bn,to-onnx,eliminate-dead").lowered("fx"),
                     Instrumentation(on_pass=seen.append, verify_each=True))
    final, records = pm.run(program)
    assert seen == records
    assert [(r.name, r.level, r.changed) for r in records] == [
        ("fuse-bn", "fx", True), ("to-onnx", "onnx", True), ("eliminate-dead", "onnx", False)]
    assert all(r.seconds >= 0 for r in records)
    assert records[0].stats.params == sum(p.numel() for p in final.metadata["fx_module"].parameters())
    assert records[0].details["fused"] == 2
    assert records[1].max_abs_err is not None and records[1].max_abs_err < 1e-4
    assert records[2].stats == records[1].stats  # unchanged: stats carried over
    d = records[0].as_dict()
    assert set(d) >= {"name", "level", "lossless", "seconds", "changed", "stats", "details"}
    assert final.level == "onnx" and program.level == "fx"
    assert bn_modules(program.ir) == ["bn1", "bn2"]  # the input program is untouched


# ---- lowering, every lossless pass verified, failures in the table, parameter growth ------------

@dataclass(frozen=True)
class _SilentLossless(slimc.Pass):
    """Claims to be lossless and to change nothing, but scales every weight (a wrong `changed`)."""

    name: ClassVar[str] = "test-manager-silent-lossless"
    level: ClassVar[str] = "onnx"

    def apply(self, program):
        from onnx import numpy_helper

        model = copy.deepcopy(program.ir)
        for i, t in enumerate(model.graph.initializer):
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
        return PassResult(program.with_ir(model), False)


@dataclass(frozen=True)
class _CopyWeight(slimc.Pass):
    """Lossless, but gives the first node's weight its own copy (more parameters, same function)."""

    name: ClassVar[str] = "test-manager-copy-weight"
    level: ClassVar[str] = "onnx"

    def apply(self, program):
        model = copy.deepcopy(program.ir)
        init = {t.name: t for t in model.graph.initializer}
        node = next(n for n in model.graph.node if any(i in init for i in n.input))
        slot = next(k for k, i in enumerate(node.input) if i in init)
        twin = copy.deepcopy(init[node.input[slot]])
        twin.name = node.input[slot] + "_copy"
        model.graph.initializer.append(twin)
        node.input[slot] = twin.name
        return PassResult(program.with_ir(model), True)


def test_the_pass_manager_lowers_by_itself(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    pm = PassManager(Pipeline.parse("fuse-bn,simplify"))
    assert pm.lowered_for(program).print().startswith("fuse-bn,to-onnx{opset=17 ")
    final, records = pm.run(program)
    assert [r.name for r in records] == ["fuse-bn", "to-onnx", "simplify"]
    assert final.level == "onnx"
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), final.run(xs), rel=1e-4)
    # an FX pass after the program became ONNX is refused before anything runs
    with pytest.raises(SlimcError, match="already ONNX"):
        PassManager(Pipeline.parse("simplify,fuse-bn")).run(program)
    # end_level='onnx' lowers at the end, too
    _, records = PassManager(Pipeline.parse("fuse-bn"), end_level="onnx").run(program)
    assert [r.name for r in records] == ["fuse-bn", "to-onnx"]


def test_verify_each_checks_a_lossless_pass_that_says_it_changed_nothing(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    seen = []
    with temporary_pass(_SilentLossless):
        pm = PassManager(Pipeline.parse("to-onnx,test-manager-silent-lossless"),
                         Instrumentation(verify_each=True, on_pass=seen.append))
        with pytest.raises(VerificationError, match="'test-manager-silent-lossless' \\(#2\\) is lossless"):
            pm.run(program)
    # the failing pass reached the progress callback (the CLI's table row) before the error
    assert [r.name for r in seen] == ["to-onnx", "test-manager-silent-lossless"]
    assert seen[0].verified is True and seen[1].verified is False
    assert seen[1].as_dict()["verified"] is False


def test_a_lossless_pass_that_grows_the_parameters_is_flagged(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    with temporary_pass(_CopyWeight):
        _, records = PassManager(Pipeline.parse("to-onnx,test-manager-copy-weight")).run(program)
    grown = records[1]
    assert grown.stats.params > records[0].stats.params
    assert grown.warnings and "grew the parameters" in grown.warnings[0]
    assert "warnings" in grown.as_dict() and not records[0].warnings


def test_progress_bar_names_the_running_pass(tiny_cnn, tiny_input, capsys):
    program = program_of(tiny_cnn, tiny_input)
    PassManager(Pipeline.parse("fuse-bn,to-onnx"), Instrumentation(progress=True)).run(program)
    err = capsys.readouterr().err
    assert "to-onnx" in err and "pass" in err
