"""The trial store and constraints: appends survive a torn line, Hyperopt's Trials rebuild, budgets."""

from __future__ import annotations

import json
import math

import pytest

from slimc.errors import SlimcError
from slimc.search.objective import Budget, Constraints, loss_of
from slimc.search.store import TrialStore, rebuild_trials


def _rec(i, status="ok", loss=-0.5):
    return {"id": i, "status": status, "pipeline": "fuse-bn", "options": {"x": 0.1 * i}, "vals": {"x": 0.1 * i},
            "metrics": None if status == "failed" else {"score": -loss}, "loss": None if status == "failed" else loss,
            "error": "boom" if status == "failed" else None}


def test_append_and_read_back_skips_a_torn_last_line(tmp_path):
    store = TrialStore(tmp_path / "run")
    assert store.open({"pipeline": "p", "dimensions": ["x"]}, resume=False) == []
    store.append(_rec(0))
    store.append(_rec(1, "failed"))
    with open(store.trials_path, "a") as fh:  # killed in the middle of a write
        fh.write('{"id": 2, "stat')
    assert [r["id"] for r in store.records()] == [0, 1]
    store.append(_rec(2))  # the torn line is cut, the new record starts on its own line
    assert [r["id"] for r in store.records()] == [0, 1, 2]
    assert all(json.loads(line) for line in store.trials_path.read_text().splitlines())


def test_open_refuses_to_overwrite_and_checks_resume_matches(tmp_path):
    store = TrialStore(tmp_path / "run")
    store.open({"pipeline": "p", "dimensions": ["x"]}, resume=False)
    store.append(_rec(0))
    store.close()
    with pytest.raises(SlimcError, match="--resume"):
        TrialStore(tmp_path / "run").open({"pipeline": "p", "dimensions": ["x"]}, resume=False)
    with pytest.raises(SlimcError, match="another search"):
        TrialStore(tmp_path / "run").open({"pipeline": "q", "dimensions": ["x"]}, resume=True)
    assert [r["id"] for r in TrialStore(tmp_path / "run").open({"pipeline": "p", "dimensions": ["x"]}, True)] == [0]


def test_rebuilt_trials_count_and_never_reuse_ids():
    from hyperopt import Trials

    trials = Trials()
    rebuild_trials([_rec(0), _rec(1, "failed"), _rec(3, loss=-0.9)], trials)
    assert len(trials) == 3
    assert trials.best_trial["tid"] == 3
    new = trials.new_trial_ids(2)
    assert not set(new) & {0, 1, 3}


def test_budgets_parse_absolute_and_relative():
    assert Budget.parse("0.5x", "latency budget") == Budget(0.5, relative=True)
    assert Budget.parse("12.5ms", "latency budget") == Budget(12.5)
    assert Budget.parse("300M", "MACs budget") == Budget(3e8)
    assert Budget.parse("1.2G", "MACs budget").value == pytest.approx(1.2e9)
    assert Budget.parse(None, "MACs budget") is None
    with pytest.raises(SlimcError, match="ratio"):
        Budget.parse("half", "latency budget")


def test_constraints_mark_violations_and_rank_losses():
    c = Constraints.parse("0.5x", "1M", 0.9)
    dense = {"latency_ms": 10.0, "macs": 4e6}
    assert c.check({"latency_ms": 4.0, "macs": 9e5, "score": 0.95}, dense) == ([], 0.0)
    violations, amount = c.check({"latency_ms": 6.0, "macs": 2e6, "score": 0.5}, dense)
    assert len(violations) == 3 and amount > 0
    assert any("latency" in v for v in violations) and any("MACs" in v for v in violations)
    assert "cannot be checked" in c.check({"latency_ms": 1.0, "macs": 1.0, "score": 1.0}, None)[0][0]
    # every feasible trial ranks before every infeasible one, whatever the scores
    assert loss_of(0.01, 0.0, True) < loss_of(0.99, 0.01, False) < loss_of(0.99, 0.5, False)
    assert math.isfinite(loss_of(-5.0, 2.0, False))


# ---- one writer, validation, repair only of a torn tail ----------------------------------------

META = {"pipeline": "p", "dimensions": ["x"]}


def _stored(tmp_path, n=3):
    with TrialStore(tmp_path / "run") as store:
        store.open(META, resume=False)
        for i in range(n):
            store.append(_rec(i))
    return tmp_path / "run"


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    run = _stored(tmp_path, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom slimc.search.store import TrialStore\n"
         f"s = TrialStore({str(run)!r}); s.open({META!r}, resume=True); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**__import__("os").environ,
                                                "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SlimcError, match=f"in use by another search \\(pid {holder.pid} on "):
            TrialStore(run).open(META, resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert [r["id"] for r in TrialStore(run).open(META, resume=True)] == [0]  # free again once it exits


def test_torn_tail_is_cut_on_resume_and_said(tmp_path):
    run = _stored(tmp_path)
    with open(run / "trials.jsonl", "a") as fh:
        fh.write('{"id": 3, "sta')
    with TrialStore(run) as store:
        assert [r["id"] for r in store.open(META, resume=True)] == [0, 1, 2]
        assert "torn last line" in store.notes[0]
    assert (run / "trials.jsonl").read_text().endswith("}\n")  # cut back to the last whole record


def test_whole_last_record_missing_only_its_newline_is_kept(tmp_path):
    run = _stored(tmp_path, 1)
    with open(run / "trials.jsonl", "a") as fh:
        fh.write(json.dumps(_rec(1)))
    with TrialStore(run) as store:
        assert [r["id"] for r in store.open(META, resume=True)] == [0, 1]
        store.append(_rec(2))
    assert [json.loads(x)["id"] for x in (run / "trials.jsonl").read_text().splitlines()] == [0, 1, 2]


@pytest.mark.parametrize("bad, words", [
    ("garbage\n", "line 2: not JSON"),
    ('[1, 2]\n', "line 2: a JSON list"),
    ('{"id": "x", "status": "ok"}\n', "line 2: 'id' is 'x'"),
    ('{"id": 7, "status": "great"}\n', "line 2: 'status' is 'great'"),
    ('{"id": 7, "status": "ok", "loss": "low"}\n', "line 2: 'loss' is 'low'"),
    (json.dumps({**_rec(0), "loss": -0.1}) + "\n", "line 2: trial id 0 was already used on line 1"),
])
def test_a_bad_line_in_the_middle_is_an_error_naming_it_and_nothing_is_changed(tmp_path, bad, words):
    run = _stored(tmp_path, 2)
    lines = (run / "trials.jsonl").read_text().splitlines(keepends=True)
    (run / "trials.jsonl").write_text(lines[0] + bad + lines[1])
    before = (run / "trials.jsonl").read_bytes(), (run / "search.json").read_bytes()
    with pytest.raises(SlimcError, match=words.replace("(", r"\(").replace("[", r"\[")):
        TrialStore(run).open(META, resume=True)
    assert ((run / "trials.jsonl").read_bytes(), (run / "search.json").read_bytes()) == before


def test_malformed_side_files_are_user_errors(tmp_path):
    run = _stored(tmp_path, 1)
    (run / "search.json").write_text('{"pipeline": ')
    with pytest.raises(SlimcError, match="search.json' is not valid JSON"):
        TrialStore(run).open(META, resume=True)
    (run / "search.json").write_text("[1]")
    with pytest.raises(SlimcError, match="holds a JSON list"):
        TrialStore(run).load_meta()
    (run / "baseline.json").write_text("nope")
    with pytest.raises(SlimcError, match="baseline.json' is not valid JSON"):
        TrialStore(run).load_baseline()


def test_resume_needs_an_existing_search(tmp_path):
    with pytest.raises(SlimcError, match="holds no search"):
        TrialStore(tmp_path / "nothing").open(META, resume=True)
    assert not (tmp_path / "nothing").exists()


def test_two_concurrent_searches_on_one_store(tmp_path, cli):
    """The second search stops at once naming the first; the first finishes with every trial, ids unique."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from search_support import write_tiny_cnn

    spec, run = write_tiny_cnn(tmp_path), tmp_path / "run"
    argv = ["search", spec, "--input-shape", "1x3x16x16", "--pipeline", "fuse-bn,to-onnx{opset=choice(17,18)}",
            "--store", str(run), "--trials", "3", "--algo", "rand", "--no-progress", "--fidelity-samples", "1",
            "--benchmark-iters", "1"]
    first = subprocess.Popen([sys.executable, "-m", "slimc.cli.main", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        deadline = time.monotonic() + 120
        while not ((run / ".lock").is_file() and f"pid {first.pid} " in (run / ".lock").read_text()):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        rc, out, err = cli(*argv)
        assert rc == 2 and err.startswith("slimc: error:") and f"pid {first.pid}" in err, err
        _, first_err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, first_err
    ids = [json.loads(x)["id"] for x in (run / "trials.jsonl").read_text().splitlines()]
    assert ids == [0, 1, 2]
