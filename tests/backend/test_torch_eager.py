"""The torch backend: the pipeline ends at the FX level and the module itself is the artifact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import slimc
from slimc import SlimcError
from slimc.backend.torch_eager import TorchArtifact
from support import assert_outputs_close, bn_modules, fresh_inputs


def test_torch_backend_keeps_the_module(tmp_path, tiny_cnn, tiny_input):
    result = slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn", backend="torch", output_dir=tmp_path,
                           fidelity_samples=2)
    assert result.report["pipeline"] == "fuse-bn"  # no to-onnx inserted
    assert result.onnx is None and result.program.level == "fx"
    assert isinstance(result.module, nn.Module) and bn_modules(result.module) == []
    art = result.artifact
    assert isinstance(art, TorchArtifact) and art.module is result.module
    assert result.report["backend"]["backend"] == "torch"
    assert result.report["fidelity"]["max_abs_err"] < 1e-4
    xs = fresh_inputs(result.program)
    with torch.no_grad():
        ref = tiny_cnn(torch.from_numpy(xs[0])).numpy()
    assert_outputs_close([ref], art.run(xs), rel=1e-5)
    # saved with torch.save; loads back and computes the same
    assert result.report["artifact"] == str(tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert_outputs_close(art.run(xs), TorchArtifact(loaded, ()).run(xs), rel=0)
    assert json.loads((tmp_path / "model.json").read_text())["backend"] == "torch"
    assert [a.shape for a in art.sample_inputs()] == [tuple(tiny_input.shape)]


def test_torch_backend_refuses_a_pipeline_that_lowers(tiny_cnn, tiny_input):
    with pytest.raises(SlimcError) as e:
        slimc.compile(tiny_cnn, tiny_input, pipeline="fuse-bn,simplify", backend="torch")
    assert "backend 'torch' runs the FX-level module" in str(e.value)
    assert "onnxruntime" in str(e.value)
