"""Structured channel pruning for FX graphs: dependency analysis, importance, module surgery.

`channel_groups(gm, example_inputs)` lists the groups a search can tune; `register_handler`
teaches the analysis a new layer or function. The pass itself is `prune-channels`
(slimc/passes/fx/prune_channels.py).
"""

from .attention import SlimMultiheadAttention
from .graph import ChannelAnalysis, ChannelGroup, analyze, channel_groups
from .handlers import Handler, register_handler
from .importance import CRITERIA, choose_removals, unit_scores
from .shrink import apply_cut

__all__ = ["ChannelAnalysis", "ChannelGroup", "Handler", "SlimMultiheadAttention", "CRITERIA", "analyze",
           "apply_cut", "channel_groups", "choose_removals", "register_handler", "unit_scores"]
