"""Per-layer latency on the real backend, aggregated by op type and by the original module.

Sits above `backend` (it times built artifacts) and `ir` (node MACs); `cli` and `report` use it.
"""

from .names import GraphIndex, module_from_scoped_name, module_of_node
from .result import LayerTime, Profile, compare
from .run import ProfileOptions, profile_artifact, profile_models

__all__ = ["GraphIndex", "LayerTime", "Profile", "ProfileOptions", "compare", "module_from_scoped_name",
           "module_of_node", "profile_artifact", "profile_models"]
