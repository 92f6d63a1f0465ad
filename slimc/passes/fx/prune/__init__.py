"""Structured channel pruning: dependency analysis (on the torch.export ATen graph, or a torch.fx
graph where export refuses), importance, and the cut of the user's own module.

`channel_groups(model, example_inputs)` lists the groups a search can tune; `register_handler`
teaches the analysis a new ATen op, layer or function. The pass itself is `prune-channels`
(slimc/passes/fx/prune_channels.py).
"""

from .attention import SlimMultiheadAttention
from .aten_graph import analyze_module
from .graph import ChannelAnalysis, ChannelGroup, analyze, channel_groups
from .handlers import Handler, register_handler
from .importance import CRITERIA, choose_removals, unit_scores
from .shrink import apply_cut

__all__ = ["ChannelAnalysis", "ChannelGroup", "Handler", "SlimMultiheadAttention", "CRITERIA", "analyze",
           "analyze_module", "apply_cut", "channel_groups", "choose_removals", "register_handler", "unit_scores"]
