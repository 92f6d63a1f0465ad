"""Hyperopt search over pipeline options: spaces written in pipeline text, trials measured on the
real backend, a resumable trial store, SparkTrials for many machines.

    slimc.search("torchvision:resnet18", "fuse-bn,prune-channels{ratio=uniform(0.1,0.7)},to-onnx",
                 input_shapes=["1x3x224x224"], trials=20, store="runs/r18")
"""

from .objective import Budget, Constraints, TrialTask
from .runner import ALGORITHMS, SearchResult, build_space, search
from .space import Dimension, SearchSpace

__all__ = ["ALGORITHMS", "Budget", "Constraints", "Dimension", "SearchResult", "SearchSpace", "TrialTask",
           "build_space", "search"]
