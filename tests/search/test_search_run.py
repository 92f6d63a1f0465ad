"""End-to-end searches on ONNX Runtime with a tiny CNN: store, resume, failures, constraints, CLI, Spark."""

from __future__ import annotations

import json

import numpy as np
import pytest

import slimc
from search_support import write_eval, write_tiny_cnn
from slimc.search import search

pytest.importorskip("slimc.passes.fx.prune_channels")  # registers prune-channels
pytest.importorskip("hyperopt")

SHAPE = ["1x3x32x32"]
PER_GROUP = "fuse-bn,prune-channels{ratios=per-group(uniform(0,0.8)) round-to=1 min-channels=1},to-onnx,simplify"
OPSET = "fuse-bn,to-onnx{opset=choice(17,18)},simplify"
FAST = dict(fidelity_samples=4, benchmark_iters=3, progress=False)


def _lines(folder):
    return [json.loads(x) for x in (folder / "trials.jsonl").read_text().splitlines()]


def test_per_group_search_end_to_end(tmp_path, cli):
    spec = write_tiny_cnn(tmp_path)
    run = tmp_path / "run"
    result = search(spec, PER_GROUP, input_shapes=SHAPE, macs_budget="0.7x", trials=6, store=run, seed=1, **FAST)

    recs = _lines(run)
    assert [r["id"] for r in recs] == list(range(6))
    assert all(r["status"] in ("ok", "infeasible") and r["pipeline"] and r["seconds"] > 0 for r in recs)
    dense = json.loads((run / "baseline.json").read_text())
    assert "prune-channels" not in dense["pipeline"]
    for r in recs:  # constraint handling: infeasible exactly when over 0.7x the dense MACs
        assert (r["status"] == "infeasible") == (r["metrics"]["macs"] > 0.7 * dense["macs"]), r
        assert len(r["options"]) >= 2 and all(k.startswith("prune-channels.ratios[") for k in r["options"])
    assert result.best is not None and result.best["status"] == "ok"
    best_text = (run / "best.txt").read_text().strip()
    assert best_text == result.best_pipeline
    summary = (run / "summary.md").read_text()
    assert "| id | status | score" in summary and best_text in summary
    try:
        import matplotlib  # noqa: F401
        assert (run / "pareto.png").stat().st_size > 1000
    except ImportError:
        assert "matplotlib" in summary

    # best.txt is plain pipeline text that `slimc compile` reproduces
    rc, out, err = cli("compile", spec, "--input-shape", SHAPE[0], "--pipeline", best_text)
    assert rc == 0, err
    again = slimc.compile(spec, pipeline=best_text, input_shapes=SHAPE, fidelity_samples=0)
    assert again.report["after"]["macs"] == result.best["metrics"]["macs"]


def test_interrupted_search_resumes_to_the_requested_total(tmp_path):
    spec = write_tiny_cnn(tmp_path)
    run = tmp_path / "run"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    calls = {"n": 0}

    def evaluate(artifact):
        calls["n"] += 1
        if calls["n"] == 4:  # the dense model is call 1: two trials finish, the third is interrupted
            raise KeyboardInterrupt
        return float(np.abs(artifact.run([x])[0]).mean())

    common = dict(input_shapes=SHAPE, eval=evaluate, trials=5, store=run, **FAST)
    with pytest.raises(KeyboardInterrupt):
        search(spec, PER_GROUP, **common)
    assert [r["id"] for r in _lines(run)] == [0, 1]
    assert (run / "summary.md").exists()  # reports are written on the way out

    result = search(spec, PER_GROUP, resume=True, **common)
    ids = [r["id"] for r in _lines(run)]
    assert sorted(ids) == list(range(5)) and len(set(ids)) == len(ids) == 5
    assert len(result.records) == 5
    assert calls["n"] == 4 + 3  # the dense model is not measured again: 3 new trials

    again = search(spec, PER_GROUP, resume=True, **common)  # nothing left to do
    assert len(again.records) == 5 and len(_lines(run)) == 5


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path):
    spec = write_tiny_cnn(tmp_path)
    eval_spec = write_eval(tmp_path, """
evaluate.calls = getattr(evaluate, "calls", 0) + 1
if evaluate.calls == 2:
    return float("nan")
if evaluate.calls == 3:
    raise ValueError("validation data went missing")
return 0.5
""")
    result = search(spec, OPSET, input_shapes=SHAPE, eval=eval_spec, algo="rand", trials=4, store=tmp_path / "run",
                    min_score=0.6, **FAST)
    status = [r["status"] for r in result.records]
    assert status == ["failed", "failed", "infeasible", "infeasible"]
    assert "nan" in result.records[0]["error"] and "validation data went missing" in result.records[1]["error"]
    assert "min-score" in result.records[2]["violations"][0]
    assert result.best is None and not (tmp_path / "run" / "best.txt").exists()
    assert "no feasible trial" in (tmp_path / "run" / "summary.md").read_text()


def test_cli_grid_search_and_print_space(tmp_path, cli):
    spec = write_tiny_cnn(tmp_path)
    rc, out, err = cli("search", spec, "--input-shape", SHAPE[0], "--pipeline", OPSET, "--print-space")
    assert rc == 0, err
    assert "to-onnx.opset" in out and "grid size: 2" in out
    run = tmp_path / "grid"
    rc, out, err = cli("search", spec, "--input-shape", SHAPE[0], "--pipeline", OPSET, "--algo", "grid",
                       "--store", run, "--no-progress", "--fidelity-samples", "4", "--benchmark-iters", "3",
                       "--latency-budget", "1000")
    assert rc == 0, err
    recs = _lines(run)
    assert sorted(r["options"]["to-onnx.opset"] for r in recs) == ["17", "18"]
    assert "2 trials: 2 feasible" in out and "best feasible" in out
    rc, out, err = cli("search", spec, "--input-shape", SHAPE[0], "--pipeline", OPSET, "--store", run)
    assert rc == 2 and "--resume" in err
    rc, out, err = cli("search", spec, "--input-shape", SHAPE[0], "--pipeline", OPSET, "--objective", "accuracy")
    assert rc == 2 and "--eval" in err


@pytest.mark.slow
def test_trial_timeout_stops_a_hung_trial(tmp_path):
    spec = write_tiny_cnn(tmp_path)
    # The dense model is scored first and quickly; every later call hangs.
    eval_spec = write_eval(tmp_path, """
from pathlib import Path
counter = Path(__file__).with_suffix(".count")
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
if n >= 1:
    time.sleep(600)
return 1.0
""")
    result = search(spec, OPSET, input_shapes=SHAPE, eval=eval_spec, trials=1, store=tmp_path / "run",
                    trial_timeout=40, **FAST)
    assert result.baseline is not None and result.baseline["score"] == 1.0
    (rec,) = result.records
    assert rec["status"] == "failed" and "timeout" in rec["error"]


@pytest.mark.slow
def test_spark_local_runs_trials(tmp_path, cli):
    from slimc.search.spark import spark_available

    ok, why = spark_available()
    if not ok:
        pytest.skip(why)
    spec = write_tiny_cnn(tmp_path)
    run = tmp_path / "spark"
    rc, out, err = cli("search", spec, "--input-shape", SHAPE[0], "--pipeline", OPSET, "--trials", "2",
                       "--spark", "local[2]", "--store", run, "--no-progress", "--fidelity-samples", "4",
                       "--benchmark-iters", "3")
    assert rc == 0, err
    recs = _lines(run)
    assert sorted(r["id"] for r in recs) == [0, 1]
    assert all(r["status"] == "ok" for r in recs), recs
    assert (run / "best.txt").read_text().startswith("fuse-bn,to-onnx{opset=")


@pytest.mark.slow
def test_killed_cli_search_resumes_without_loss(tmp_path):
    """SIGKILL the `slimc search` process after k trials; --resume completes the requested total."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = write_tiny_cnn(tmp_path)
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "slimc.cli.main", "search", spec, "--input-shape", SHAPE[0], "--pipeline",
            "fuse-bn,to-onnx,fold-constants{size-threshold-mb=uniform(1,64)},simplify", "--trials", "6",
            "--algo", "rand", "--store", str(run), "--no-progress", "--fidelity-samples", "2",
            "--benchmark-iters", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if (run / "trials.jsonl").exists() and len((run / "trials.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_after = len(_lines(run))
    assert 2 <= killed_after < 6, f"not killed mid-search ({killed_after} trials stored)"
    resume = [a for a in argv if a not in ("--trials", "6")] + ["--resume"]  # the stored total is the default
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ids = [r["id"] for r in _lines(run)]
    assert sorted(ids) == list(range(6)), ids
    assert (run / "summary.md").exists() and (run / "best.txt").exists()
