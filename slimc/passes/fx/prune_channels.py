"""`prune-channels`: structured pruning that returns a smaller dense model (fewer channels, heads).

The analysis (prune/graph.py) finds groups of channels that must go together; a criterion
scores each unit of each group; the lowest are removed at `ratio` (per group, or ranked
across groups with scope=global); the layers are then rebuilt smaller. Whatever the analysis
cannot follow is left whole, and `explain=true` lists which node kept which group whole.

    prune-channels{ratio=0.5 criterion=l2 round-to=8 ratios=layer4:0.3}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ...errors import SlimcError
from ..registry import Pass, PassResult, register_pass
from ._graph import private_copy, require_traced, single_threaded, unshare

__all__ = ["PruneChannels"]


@register_pass
@dataclass(frozen=True)
class PruneChannels(Pass):
    """Remove the least important channels (and attention heads), keeping output shapes.

    ratio:        share of each group's channels to remove (0..1)
    criterion:    l1 | l2 (weight magnitude over the whole group) | bn (BatchNorm scale) |
                  taylor (|w * grad|, random calibration inputs) | random
    scope:        local (every group at `ratio`) | global (one ranking across groups)
    round_to:     kept channel counts are multiples of this (hardware-friendly widths)
    min_channels: no group keeps fewer channels than this
    ignore:       layers whose output channels are never pruned (model outputs never are)
    ratios:       per-group ratios by group name or name prefix, e.g. layer4:0.3
    explain:      put every group, and why blocked ones are blocked, in the report
    seed:         for criterion=random and taylor's calibration inputs
    """

    name: ClassVar[str] = "prune-channels"
    level: ClassVar[str] = "fx"
    lossless: ClassVar[bool] = False
    summary: ClassVar[str] = "structured pruning of channels and attention heads into a smaller dense model"

    ratio: float = 0.5
    criterion: Literal["l1", "l2", "bn", "taylor", "random"] = "l2"
    scope: Literal["local", "global"] = "local"
    round_to: int = 8
    min_channels: int = 8
    ignore: tuple[str, ...] = ()
    ratios: dict[str, float] = field(default_factory=dict)
    explain: bool = False
    seed: int = 0

    def __post_init__(self):
        bad = [f"{k}={v}" for k, v in {"ratio": self.ratio, **self.ratios}.items() if not 0.0 <= v < 1.0]
        if bad:
            raise ValueError(f"ratios must be in [0, 1): {', '.join(bad)}")
        if self.round_to < 1 or self.min_channels < 1:
            raise ValueError("round-to and min-channels must be at least 1")

    def apply(self, program) -> PassResult:
        with single_threaded():
            return self._apply(program)

    def _apply(self, program) -> PassResult:
        from .prune import analyze, apply_cut, choose_removals, unit_scores
        from .prune.graph import output_shapes

        require_traced(program, "prune-channels")
        gm = private_copy(program.ir, share_weights=self.criterion != "taylor").eval()
        params_before = sum(p.numel() for p in gm.parameters())
        analysis = analyze(gm, program.example_inputs, ignore=self.ignore)
        reference = analysis.output_shapes
        self._check_names(analysis)
        scores, notes = unit_scores(analysis, self.criterion, program.example_inputs, self.seed)
        removed = choose_removals(analysis.groups, scores, self.ratio, self.scope, self.round_to,
                                  self.min_channels, self.ratios)
        changed = apply_cut(analysis, removed) if removed else []
        unshare(gm, program.ir)
        try:
            got = output_shapes(gm, program.example_inputs)
        except Exception as exc:  # a rewrite the analysis missed: say where, do not return a broken model
            raise SlimcError(f"prune-channels produced a model that does not run ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}). Put the layers involved in "
                             f"ignore=..., or register a handler for the op that was not followed.") from exc
        if got != reference:
            raise SlimcError(f"prune-channels changed the output shapes from {reference} to {got}; "
                             "this is a bug in a prune handler. Use ignore=... on the last layers meanwhile.")
        details = self._details(analysis, removed, notes, params_before, sum(p.numel() for p in gm.parameters()))
        details["layers_changed"] = len(changed)
        return PassResult(program.with_ir(gm), changed=bool(changed), details=details)

    def _check_names(self, analysis) -> None:
        names = {g.name for g in analysis.groups}
        unknown = [k for k in self.ratios if k not in names and not any(n.startswith(k + ".") for n in names)]
        if unknown:
            from ...errors import closest

            hint = closest(unknown[0], names)
            raise SlimcError(f"prune-channels: ratios name group(s) that do not exist: {', '.join(unknown)}"
                             f"{hint}. slimc.passes.fx.prune.channel_groups(model, inputs) lists the groups.")

    def _details(self, analysis, removed, notes, params_before, params_after) -> dict:
        groups = analysis.groups
        before = sum(g.channels for g in groups)
        gone = sum(int(removed[g.name].numel()) * g.width for g in groups if g.name in removed)
        blocked = [g for g in groups if not g.prunable]
        details = {
            "groups_found": len(groups),
            "groups_pruned": len(removed),
            "groups_blocked": len(blocked),
            "channels_before": before,
            "channels_after": before - gone,
            "params_before": params_before,
            "params_after": params_after,
            "analysis_seconds": round(analysis.seconds, 3),
        }
        if notes:
            details["notes"] = notes
        if self.explain:
            details["groups"] = [
                {"name": g.name, "channels": g.channels, "kept": g.channels - (
                    int(removed[g.name].numel()) * g.width if g.name in removed else 0),
                 "pinned_units": g.pinned, "members": list(g.members)} for g in groups]
            details["blocked"] = [f"{g.name} ({g.channels} ch) kept whole: " + "; ".join(g.reasons) for g in blocked]
            details["partly_pinned"] = [f"{g.name}: {g.pinned} of {g.size} units pinned: " + "; ".join(g.reasons)
                                        for g in groups if g.prunable and g.pinned]
        return details



