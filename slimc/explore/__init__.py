"""`slimc explore`: IR dumps in Model Explorer with node-data overlays (the `explore` extra).

Sits above `profile` (reads its reports) and `ir`; the heavy Model Explorer import is lazy.
"""

from .overlays import overlays_for
from .server import ExploreSession, onnx_dumps, prepare, serve

__all__ = ["ExploreSession", "onnx_dumps", "overlays_for", "prepare", "serve"]
