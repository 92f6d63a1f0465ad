"""Inputs that could hurt: absurd shapes, factories that exit, pickles that run code."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn as nn

import slimc
from slimc.errors import SlimcError
from slimc.frontend.inputs import available_memory_bytes, check_tensor_fits, parse_input_shape
from slimc.frontend.specs import load_model, trusted_pickles


@pytest.mark.parametrize("text", [str(2**40), "99999999999999999999x3x32x32", "1x3x100000x100000:float64"])
def test_shapes_too_big_for_memory_fail_before_allocating(text):
    with pytest.raises(SlimcError, match=r"would take [\d,.e+]+ GiB .* of memory available here"):
        parse_input_shape(text)


def test_memory_check_counts_bytes_per_dtype():
    have = available_memory_bytes()
    assert have > 0
    check_tensor_fits([have // 8], 4, "x")  # half of what is there
    with pytest.raises(SlimcError, match="would take"):
        check_tensor_fits([have // 2 + 1], 2, "x")  # a bit more than there is
    assert parse_input_shape("2x3:int64").dtype == torch.int64


def test_factory_exit_is_a_user_error_naming_the_factory(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent("""
        import sys
        def make():
            sys.exit(3)
        def make_none():
            sys.exit()
    """))
    with pytest.raises(SlimcError, match=r"m.py:make' called sys.exit\(3\)"):
        load_model(f"{f}:make")
    with pytest.raises(SlimcError, match=r"sys.exit\(None\)"):
        load_model(f"{f}:make_none")
    g = tmp_path / "g.py"
    g.write_text("raise SystemExit('bye')\n")
    with pytest.raises(SlimcError, match="called sys.exit"):
        load_model(f"{g}:anything")


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_does_not_run_without_the_opt_in(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save(_WritesMarker(str(marker)), evil)
    with pytest.raises(SlimcError, match="--trust-pickle"):
        load_model(str(evil))
    with pytest.raises(SlimcError, match="--trust-pickle"):
        slimc.compile(str(evil), input_shapes=["1x3x8x8"])
    assert not marker.exists()
    with trusted_pickles(), pytest.raises(SlimcError):  # trusted: the file's code runs (what the opt-in means)
        load_model(str(evil))
    assert marker.exists()


def test_trusted_pickled_module_compiles(tmp_path):
    good = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), good)
    with trusted_pickles():
        result = slimc.compile(str(good), input_shapes=["1x3x8x8"], pipeline="fuse-bn,to-onnx", backend=None)
    assert result.report["after"]["params"] == 3 * 4 * 9 + 4
