"""tools/real_data.py: IDX files read back exactly; missing data names `make data` (no real data needed)."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from real_data import DataMissing, fashion_mnist, read_idx  # noqa: E402


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def test_idx_round_trip_and_split(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8)),
              "t10k": (rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), rng.integers(0, 10, 3, dtype=np.uint8))}
    for prefix, (images, labels) in arrays.items():
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 0x08)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x08)
    (xtr, ytr), (xte, yte) = fashion_mnist(tmp_path)
    assert np.array_equal(xtr, arrays["train"][0]) and np.array_equal(yte, arrays["t10k"][1])
    assert ytr.dtype == np.int64 and xte.shape == (3, 28, 28)
    floats = rng.standard_normal((2, 5)).astype(np.float32)
    _write_idx(tmp_path / "f.gz", floats, 0x0D)  # big-endian float32 comes back in native order
    assert np.array_equal(read_idx(tmp_path / "f.gz"), floats)


def test_missing_or_broken_data_is_explained(tmp_path):
    with pytest.raises(DataMissing, match="make data"):
        fashion_mnist(tmp_path)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad.gz")
