"""What a profile holds, and how it is aggregated: per runtime layer, per op type, per module.

Layer times are averaged over the typical profiled runs (the middle half ranked by total, see
`run.typical_runs`); `end_to_end_ms` is the median of plain (not profiled) runs of the same model,
interleaved with the profiled ones, so the two can be compared.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["LayerTime", "Profile", "compare", "UNMATCHED"]

UNMATCHED = "<runtime>"  # layers the runtime added (reorders, copies) that match no ONNX node


@dataclass(frozen=True)
class LayerTime:
    """One runtime layer: its name and op there, the ONNX node and module it maps to, ms per typical run."""

    name: str
    op_type: str
    node: str | None
    module: str
    ms: float

    def as_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "node": self.node, "module": self.module,
                "ms": round(self.ms, 5)}


@dataclass
class Profile:
    """Per-layer latency of one model on one backend.

    Example::

        prof = slimc.profile.profile_onnx(model, backend="openvino")
        prof.by_module()[:5]   # [{'module': 'layer4.0.conv2', 'ms': 0.41, 'macs': 115605504}, ...]
    """

    backend: str
    label: str
    layers: list[LayerTime]
    end_to_end_ms: float
    runs: int
    module_macs: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def profiled_ms(self) -> float:
        """Sum of the per-layer times (what the profiler attributes to layers in a typical run)."""
        return sum(layer.ms for layer in self.layers)

    def by_op(self) -> list[dict]:
        """Time per op type, most expensive first."""
        ms, count = defaultdict(float), defaultdict(int)
        for layer in self.layers:
            ms[layer.op_type] += layer.ms
            count[layer.op_type] += 1
        return [{"op_type": op, "ms": ms[op], "layers": count[op]} for op in sorted(ms, key=ms.get, reverse=True)]

    def by_module(self) -> list[dict]:
        """Time and MACs per module path, most expensive first (modules with MACs but no time included)."""
        ms = defaultdict(float)
        for layer in self.layers:
            ms[layer.module] += layer.ms
        for module in self.module_macs:
            ms.setdefault(module, 0.0)
        return [{"module": m, "ms": ms[m], "macs": self.module_macs.get(m, 0)}
                for m in sorted(ms, key=lambda m: (-ms[m], m))]

    def as_dict(self, top: int | None = None) -> dict:
        modules = self.by_module()
        return {
            "backend": self.backend, "label": self.label, "runs": self.runs,
            "end_to_end_ms": round(self.end_to_end_ms, 4), "profiled_ms": round(self.profiled_ms, 4),
            "coverage": round(self.profiled_ms / self.end_to_end_ms, 4) if self.end_to_end_ms else None,
            "by_op": [{**r, "ms": round(r["ms"], 5)} for r in self.by_op()],
            "by_module": [{**r, "ms": round(r["ms"], 5)} for r in (modules[:top] if top else modules)],
            "layers": [layer.as_dict() for layer in self.layers],
            "details": self.details,
        }


def compare(before: Profile, after: Profile, macs_drop: float = 0.8, time_kept: float = 0.9) -> list[dict]:
    """Per module: ms and MACs before and after, and whether it lost MACs but not time.

    A module is flagged when its MACs fell to at most `macs_drop` of before while its time stayed at
    least `time_kept` of before: the pruning made it smaller but not faster.
    """
    a = {r["module"]: r for r in before.by_module()}
    b = {r["module"]: r for r in after.by_module()}
    rows = []
    for module in list(a) + [m for m in b if m not in a]:
        ra, rb = a.get(module, {"ms": 0.0, "macs": 0}), b.get(module, {"ms": 0.0, "macs": 0})
        ms_ratio = rb["ms"] / ra["ms"] if ra["ms"] else None
        macs_ratio = rb["macs"] / ra["macs"] if ra["macs"] else None
        flagged = (macs_ratio is not None and ms_ratio is not None
                   and macs_ratio <= macs_drop and ms_ratio >= time_kept)
        rows.append({"module": module, "ms_before": ra["ms"], "ms_after": rb["ms"], "ms_ratio": ms_ratio,
                     "macs_before": ra["macs"], "macs_after": rb["macs"], "macs_ratio": macs_ratio,
                     "lost_macs_not_time": flagged})
    rows.sort(key=lambda r: -max(r["ms_before"], r["ms_after"]))
    return rows
