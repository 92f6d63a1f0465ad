"""`artifact.run` takes numpy arrays or torch tensors (one, or a list/tuple), on every backend, and
returns a list of numpy arrays, one per model output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimc
from slimc import SlimcError
from slimc.backend.base import as_numpy, input_list
from support import assert_outputs_close

PIPELINES = {"onnxruntime": "fuse-bn,to-onnx,simplify", "openvino": "fuse-bn,to-onnx,simplify", "torch": "fuse-bn"}


@pytest.fixture(params=sorted(PIPELINES))
def compiled(request, tiny_cnn, tiny_input):
    if request.param == "openvino":
        pytest.importorskip("openvino")
    result = slimc.compile(tiny_cnn, tiny_input, pipeline=PIPELINES[request.param], backend=request.param,
                           fidelity_samples=0)
    return result.artifact, tiny_cnn


def _reference(module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy()


def test_every_spelling_of_the_inputs_gives_numpy_outputs(compiled, tiny_input):
    art, module = compiled
    x = torch.randn(*tiny_input.shape, generator=torch.Generator().manual_seed(5))
    ref = [_reference(module, x)]
    for inputs in (x, [x], (x,), x.numpy(), [x.numpy()], x.requires_grad_(False).clone().requires_grad_(True)):
        out = art.run(inputs)
        assert isinstance(out, list) and len(out) == 1, type(inputs)
        assert isinstance(out[0], np.ndarray) and out[0].shape == (2, 10)
        assert_outputs_close(ref, out, rel=1e-4)


def test_wrong_inputs_are_slimc_errors(compiled, tiny_input):
    art, _ = compiled
    with pytest.raises(SlimcError, match="numpy array or torch tensor, or a list of them"):
        art.run({"input": tiny_input})
    with pytest.raises(SlimcError, match="a list holding float"):
        art.run([1.0, 2.0])


def test_benchmark_takes_tensors_too(compiled, tiny_input):
    art, _ = compiled
    assert art.benchmark(tiny_input, warmup=1, iters=2).iters == 2


def test_input_helpers():
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    assert input_list(t) == [t] and len(input_list((t, t))) == 2
    arr = as_numpy(t)
    assert arr.dtype == np.float32 and arr.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert as_numpy(np.ones(2)) is not None and input_list(np.ones(2))[0].shape == (2,)
