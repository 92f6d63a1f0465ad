"""Importing this module registers the backends that ship with slimc."""

from . import onnxruntime, torch_eager  # noqa: F401
from . import openvino  # noqa: F401
from . import tensorrt  # noqa: F401
