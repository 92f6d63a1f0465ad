"""Fixtures shared by every test; plain helpers are in support.py (importable as `support`)."""

from __future__ import annotations

import pytest
import torch

from support import TinyCNN, randomize_bn


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return randomize_bn(TinyCNN())


@pytest.fixture
def tiny_input():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def cli(capsys):
    """Run `slimc ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from slimc.cli.main import main

    def run(*argv):
        capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run
