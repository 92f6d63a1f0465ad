"""Tiny nested models exported by both torch.onnx exporters, for the profile/report/explore tests."""

from __future__ import annotations

import functools
import os
import tempfile
import warnings

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


class Nested(nn.Module):
    """stem conv, a Sequential of two blocks, pooled, one linear: module paths `layers.1.conv` etc."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.layers = nn.Sequential(Block(width, width), Block(width, 2 * width))
        self.head = nn.Linear(2 * width, 5)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


SHAPE = (1, 3, 16, 16)


@functools.lru_cache(maxsize=None)
def exported(exporter: str, width: int = 8) -> bytes:
    """The serialized ONNX of Nested(width) from 'torchscript' or 'dynamo' (cached per session)."""
    torch.manual_seed(0)
    model = Nested(width).eval()
    x = torch.randn(*SHAPE)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "m.onnx")
        if exporter == "dynamo":
            prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["input"],
                                     output_names=["output"], verbose=False)
            prog.save(path)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["output"])
        import onnx

        return onnx.load(path).SerializeToString()


def model(exporter: str, width: int = 8):
    import onnx

    return onnx.load_from_string(exported(exporter, width))


def save(model_proto, path) -> str:
    import onnx

    onnx.save(model_proto, str(path))
    return str(path)
