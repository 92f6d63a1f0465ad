"""One trial: its options objects reach the compile, and a failed fidelity check is a failed trial."""

from __future__ import annotations

import pytest

import slimc
from slimc.search.objective import TRIAL_REPORT, TrialTask, run_trial, score_of


def test_score_of_refuses_a_failed_or_unmeasured_fidelity():
    assert score_of({"ok": True, "top1_agreement": 0.5, "cosine": 0.9}) == (0.5, "top1_agreement")
    assert score_of({"ok": True, "top1_agreement": None, "cosine": 0.9}) == (0.9, "cosine")
    with pytest.raises(slimc.SlimcError, match="fidelity check failed: 3 output values are NaN"):
        score_of({"ok": False, "failure": "3 output values are NaN or Inf", "top1_agreement": 1.0, "cosine": 1.0})
    with pytest.raises(slimc.SlimcError, match="could not be measured: failed to measure"):
        score_of({"error": "failed to measure: no"})


def test_a_trial_carries_the_compile_options(tmp_path):
    f = tmp_path / "factory.py"
    f.write_text("import torch.nn as nn\n\ndef make():\n    return nn.Sequential(nn.Linear(6, 5), nn.Tanh())\n")
    task = TrialTask(f"{f}:make", inputs=slimc.InputOptions(shapes=("3x6",), seed=5),
                     backend=slimc.BackendSpec("onnxruntime", {"threads": 1}),
                     report=slimc.ReportOptions(fidelity_samples=2, benchmark_iters=2))
    out = run_trial(task, "to-onnx,simplify")
    assert out["error"] is None, out["error"]
    m = out["metrics"]
    assert m["score_kind"] == "top1_agreement" and m["score"] == 1.0  # [3, 5] outputs: classifier-like
    assert m["latency_ms"] is not None and m["params"] == 6 * 5 + 5
    assert TrialTask("x").report == TRIAL_REPORT  # trials default to 16 fidelity samples, 20 timed runs
