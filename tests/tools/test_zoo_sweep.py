"""tools/zoo_sweep.py: a row goes through slimc.compile, is counted on the artifact's ONNX and checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import zoo_sweep  # noqa: E402


def _args(*extra):
    import argparse

    args = argparse.Namespace(ratio=0.5, round_to=8, min_channels=8, timeout=120, torch_pruning=False, verbose=False)
    for k, v in extra:
        setattr(args, k, v)
    return args


def test_a_torchvision_row_is_pruned_through_compile_and_counted_on_its_onnx():
    pytest.importorskip("torchvision")
    row = zoo_sweep.sweep_one("tv", "squeezenet1_1", _args())
    assert row["status"] == "ok" and row["counts"] is True
    assert row["input"] == "64x64"
    assert row["facts"]["frontend"] == "torch.export" and row["facts"]["warning"] == ""
    # MACs and parameters counted on the ONNX models: the pruned one is about a quarter of the dense one
    assert 0.15 * row["macs0"] < row["macs1"] <= 0.55 * row["macs0"]
    assert row["params1"] < 0.5 * row["params0"]


class _TwoHeads(nn.Module):
    """Two outputs: a conv's output through ReLU and pooling, and a linear's output; a hidden conv before both."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.out_conv = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        a = torch.nn.functional.max_pool2d(torch.relu(self.out_conv(h)), 2)
        b = self.fc(h.mean((2, 3)))
        return {"a": a + 1.0, "b": b}


def test_output_layers_are_the_layers_that_feed_the_outputs_without_another_layer_between():
    model = _TwoHeads().eval()
    found = zoo_sweep.output_layers(model, torch.randn(1, 3, 8, 8))
    assert set(found) == {model.out_conv, model.fc}  # not the stem: a layer stands between it and the outputs


def test_shape_error_names_the_first_output_that_differs():
    assert zoo_sweep.shape_error("onnx", [(1, 4), (1, 8)], [(1, 4), (1, 8)]) == ""
    msg = zoo_sweep.shape_error("onnx", [(1, 4), (1, 6)], [(1, 4), (1, 8)])
    assert msg == "onnx output 1: (1, 6) != (1, 8) (2 vs 2 outputs)"
    assert "output 1: None != (1, 8)" in zoo_sweep.shape_error("torch", [(1, 4)], [(1, 4), (1, 8)])


def test_child_argv_drops_the_options_the_parent_sets_per_model():
    argv = ["--lists", "tv", "--torch-pruning", "--out=a.md", "--models", "x,y", "--timeout", "60"]
    assert zoo_sweep._without(argv, ("--lists", "--models", "--out", "--facts")) == ["--torch-pruning", "--timeout",
                                                                                       "60"]
