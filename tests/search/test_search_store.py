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
