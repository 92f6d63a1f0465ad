"""The fidelity check: valid inputs for index-like inputs, NaN is a failure, and the check never raises."""

from __future__ import annotations

import numpy as np
import torch

from slimc.ir.fidelity import fidelity
from slimc.ir.runner import random_like


def _identity(xs):
    return [np.asarray(xs[0])]


def test_index_like_inputs_keep_the_example_values_and_ids_stay_in_range():
    axes = torch.tensor([0, 2])                         # Squeeze/Unsqueeze axes: a draw would be invalid
    k = torch.tensor([3])                               # TopK's k
    ids = torch.randint(5, 50, (2, 64))                 # token ids inside a vocabulary of 50
    scales = torch.tensor([1.0, 1.0, 2.0, 2.0])         # Resize scales: negative draws are invalid
    for seed in range(5):
        a, kk, t, s = random_like([axes, k, ids, scales], seed=seed)
        assert a.tolist() == [0, 2] and kk.tolist() == [3] and s.tolist() == [1.0, 1.0, 2.0, 2.0]
        assert t.shape == (2, 64) and t.dtype == np.int64 and 5 <= t.min() and t.max() <= 49
    # still random where it is data: two seeds give different ids
    assert not np.array_equal(random_like([ids], seed=0)[0], random_like([ids], seed=1)[0])


def test_nan_in_the_candidate_is_a_failure_not_a_small_error():
    def overflowing(xs):
        out = np.asarray(xs[0], dtype=np.float64).copy()
        out[0, 0] = np.inf
        return [out]

    sets = [[np.ones((2, 3))] for _ in range(2)]
    fid = fidelity(_identity, overflowing, sets)
    assert fid["ok"] is False and fid["nonfinite"] == 2 and "NaN or Inf" in fid["failure"]
    good = fidelity(_identity, _identity, sets)
    assert good["ok"] is True and good["failure"] is None and good["max_abs_err"] == 0.0


def test_nan_where_the_original_has_nan_is_agreement():
    def acosh(xs):
        return [np.arccosh(xs[0])]

    sets = [[np.array([[0.5, 2.0, 3.0]])]]
    fid = fidelity(acosh, acosh, sets)
    assert fid["ok"] is True and fid["nonfinite"] == 0 and fid["max_abs_err"] == 0.0


def test_empty_scalar_and_varying_shape_outputs():
    empty = fidelity(lambda xs: [np.zeros((0, 3))], lambda xs: [np.zeros((0, 3))], [[np.ones(1)]] * 2)
    assert empty["ok"] is True and empty["max_abs_err"] == 0.0
    scalar = fidelity(lambda xs: [np.float32(2.0)], lambda xs: [np.float32(2.5)], [[np.ones(1)]] * 3)
    assert scalar["ok"] is True and scalar["max_abs_err"] == 0.5 and scalar["samples"] == 3
    # NonZero-like: the output length follows the input, so samples differ in shape
    nz = fidelity(lambda xs: [np.flatnonzero(xs[0])], lambda xs: [np.flatnonzero(xs[0])],
                  [[np.array([1, 0, 1])], [np.array([1, 1, 1])]])
    assert nz["ok"] is True and nz["samples"] == 2
    changed = fidelity(_identity, lambda xs: [np.ones(4)], [[np.ones(3)]])
    assert changed["ok"] is False and "shape" in changed["failure"]


def test_the_check_never_raises_and_falls_back_to_the_examples():
    def picky(xs):
        if xs[0][0] == 0:
            raise RuntimeError("Integer division by zero")
        return [np.asarray(xs[0]) * 2]

    bad = [[np.array([0])]]
    fid = fidelity(picky, picky, bad, fallback=[np.array([4])])
    assert fid["ok"] is True and fid["inputs"] == "examples"
    fid = fidelity(picky, picky, bad)
    assert fid == {"error": "failed to measure: the original model does not run on the check's inputs "
                            "(Integer division by zero)"}
    broken = fidelity(_identity, lambda xs: 1 / 0, [[np.ones(2)]])
    assert broken["ok"] is False and "fails on inputs the original runs on" in broken["failure"]
