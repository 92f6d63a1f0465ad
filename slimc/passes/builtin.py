"""Importing this module registers the passes that ship with slimc."""

from . import lower  # noqa: F401
from .fx import fuse_bn  # noqa: F401
from .onnx import dedupe_weights, eliminate_dead, fold_constants, simplify  # noqa: F401
from .fx import finetune  # noqa: F401
from .onnx import fuse  # noqa: F401  (fusion rules: slimc/passes/onnx/fuse/)
from .onnx import precision  # noqa: F401  (to-fp16, to-bf16)
from .fx import fuse_bn_conv  # noqa: F401  (bn -> conv/linear)
from .fx import prune_channels  # noqa: F401
from .fx import group_conv  # noqa: F401
from .onnx import quantize  # noqa: F401  (quantize-int8: slimc/passes/onnx/quantize/)
from .fx import bn_recal  # noqa: F401
