"""`prune-channels`: structured pruning that returns a smaller dense model (fewer channels, heads).

The analysis (prune/graph.py) finds groups of channels that must go together; a criterion
scores each unit of each group; the lowest are removed at `ratio` (per group, or ranked
across groups with scope=global); the layers are then rebuilt smaller. Whatever the analysis
cannot follow is left whole, and `explain=true` lists which node kept which group whole.

    prune-channels{ratio=0.5 criterion=l2 round-to=8 ratios=layer4:0.3}
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch.fx

from ...errors import SlimcError
from ..registry import Pass, PassResult, register_pass
from ._graph import private_copy, require_traced, single_threaded, unshare

__all__ = ["PruneChannels", "PruneWarning"]


_MAX_RETRIES = 8  # cuts retried with one more module kept whole


def _does_not_run(exc: Exception) -> SlimcError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return SlimcError(f"prune-channels produced a model that does not run ({type(exc).__name__}: {first}). Put the "
                      "layers involved in ignore=..., or register a handler for the op that was not followed.")


def _shapes_changed(want, got) -> SlimcError:
    return SlimcError(f"prune-channels changed the output shapes from {want} to {got}; this is a bug in a prune "
                      "handler. Use ignore=... on the last layers meanwhile.")


class PruneWarning(UserWarning):
    """prune-channels removed much less than asked; the message names what held the channels."""


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while the pass runs. The analysis allocates many small
    objects (labels, graph values), which sets off full collections that scan every object torch and
    the export left behind: 0.3-0.6 s of a 1-2 s first pass on resnet50. Reference counting still frees
    what the pass drops; cycles wait for the next collection after the pass."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
        with single_threaded(), _collector_paused():
            return self._apply(program)

    def _apply(self, program) -> PassResult:
        import torch.nn as nn

        if not isinstance(program.ir, nn.Module):
            raise SlimcError(f"prune-channels works on a PyTorch module, got {type(program.ir).__name__}.")
        if not program.example_inputs:
            raise SlimcError("prune-channels needs example inputs to follow channels through the graph; "
                             "give the model's input shape when compiling.")
        self._check_ignore(program.ir)
        from ...frontend.export import export_module

        try:
            # The frontend's export of this very module object, cached: the private copy below has the
            # same parameter names, so the graph's parameter owners name its modules too. The analysis
            # only reads the graph; the cut replaces tensors of the copy, never the program's.
            exported = (program.exported() if not any(m.training for m in program.ir.modules()) else
                        export_module(self._work_copy(program), program.example_inputs))  # analysed in eval mode
        except SlimcError:
            if isinstance(program.ir, torch.fx.GraphModule):  # a traced graph export refuses: the FX walk
                return self._apply_traced(program)
            raise
        try:
            return self._apply_exported(program, self._work_copy(program), exported)
        except SlimcError as exc:
            # A traced graph bakes sizes in as constants that only the FX walk rewrites.
            if isinstance(program.ir, torch.fx.GraphModule) and "prune-channels produced" in str(exc):
                result = self._apply_traced(program)
                result.details["frontend"] += f"; the exported-graph cut failed: {str(exc)[:200]}"
                return result
            raise

    def _apply_exported(self, program, work, exported) -> PassResult:
        from .prune import choose_removals, unit_scores
        from .prune.aten_graph import analyze_module, failing_module, pin_module
        from .prune.hf_config import update_hf_config
        from .prune.module_cut import cut_module
        from .prune.report import blockers, mac_estimate

        retried: list[str] = []
        params_before = sum(p.numel() for p in work.parameters())
        analysis = analyze_module(work, program.example_inputs, ignore=self.ignore, exported=exported)
        self._check_names(analysis)
        for attempt in range(_MAX_RETRIES + 1):
            scores, notes = unit_scores(analysis, self.criterion, program.example_inputs, self.seed)
            removed = choose_removals(analysis.groups, scores, self.ratio, self.scope, self.round_to,
                                      self.min_channels, self.ratios)
            changed = cut_module(analysis, removed) if removed else []
            culprit, error = failing_module(work, lambda: self._check_runs(work, program.example_inputs,
                                                                          analysis.output_shapes))
            if error is None or not culprit or attempt == _MAX_RETRIES:
                break
            # A module that sizes a reshape from another tensor's width at run time (Swin's C // num_heads)
            # ties widths the graph does not show: keep that module whole and cut again.
            work = self._work_copy(program)  # the program's module is untouched: start again from it
            analysis.module = work
            why = f"did not run with fewer channels ({str(error).splitlines()[0][:120]}); kept whole"
            kind = type(work.get_submodule(culprit) if culprit else work)
            if sum(type(work.get_submodule(r) if r else work) is kind for r in retried) >= 2:
                # The third failure of one class: keep every module of that class whole at once.
                for name, mod in work.named_modules():
                    if type(mod) is kind and name not in retried:
                        pin_module(analysis, name, f"module '{name}' ({kind.__name__}, like '{culprit}') {why}")
                        retried.append(name)
            else:
                pin_module(analysis, culprit, f"module '{culprit}' {why}")
                retried.append(culprit)
        if error is not None:
            raise error
        unshare(work, program.ir)
        notes += update_hf_config(work) if changed else []
        if retried:
            notes.append(f"kept whole after a failed cut (widths tied at run time): {', '.join(retried)}")
        details = self._details(analysis, removed, notes, params_before, sum(p.numel() for p in work.parameters()))
        details["frontend"] = "torch.export"
        details["layers_changed"] = len(changed)
        attrs = getattr(analysis, "attribute_changes", [])  # size attributes a module's forward reads
        if attrs:
            details["attributes_changed"] = attrs if self.explain else attrs[:10] + ([f"... {len(attrs) - 10} more"]
                                                                                    if len(attrs) > 10 else [])
        dense, after = mac_estimate(analysis, removed)
        details["layer_macs_before"], details["layer_macs_after"] = dense, after
        asked = 1 - (1 - self.ratio) ** 2  # cutting every group by `ratio` cuts a conv chain's MACs by this
        got = 1 - after / dense if dense else 0.0
        top = blockers(analysis, full=self.explain)
        if self.explain:
            details["blockers"] = top
        if self.ratio > 0 and not self.ratios and got < 0.5 * asked:
            details["blockers"] = top if self.explain else top[:5]
            lines = "; ".join(f"{b['reason']} ({b['macs_held'] / 1e6:.1f} M MACs held)" for b in top[:3])
            warning = (f"prune-channels{{ratio={self.ratio}}} cut only {got:.0%} of the layer MACs (cutting every "
                       f"group by {self.ratio:.0%} would cut about {asked:.0%}). Top blockers: {lines or 'none found'}. "
                       "explain=true lists them all; register_handler teaches slimc an op it does not follow.")
            details["warning"] = warning
            warnings.warn(warning, PruneWarning, stacklevel=2)
        return PassResult(program.with_ir(work), changed=bool(changed), details=details)

    def _work_copy(self, program):
        """The module the cut rewrites: private modules; tensors shared with the program's until
        `unshare` (the cut replaces them, never writes into them), except for taylor, whose scoring
        swaps parameter data for a moment."""
        return private_copy(program.ir, share_weights=self.criterion != "taylor").eval()

    @staticmethod
    def _check_runs(module, example_inputs, reference) -> None:
        import torch
        from torch.utils._pytree import tree_leaves

        try:
            with torch.no_grad():
                out = module(*example_inputs)
        except TimeoutError:  # the caller's time limit, not a broken model
            raise
        except Exception as exc:  # a size the analysis missed: say where, do not return a broken model
            raise _does_not_run(exc) from exc
        got = tuple(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        want = tuple(s for s in tree_leaves(reference, is_leaf=lambda x: isinstance(x, tuple) and all(
            isinstance(i, int) for i in x)) if isinstance(s, tuple))
        if got != want:
            raise _shapes_changed(want, got)

    def _apply_traced(self, program) -> PassResult:
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
        except TimeoutError:  # the caller's time limit, not a broken model
            raise
        except Exception as exc:  # a rewrite the analysis missed: say where, do not return a broken model
            raise _does_not_run(exc) from exc
        if got != reference:
            raise _shapes_changed(reference, got)
        details = self._details(analysis, removed, notes, params_before, sum(p.numel() for p in gm.parameters()))
        details["frontend"] = "torch.fx.symbolic_trace graph"
        details["layers_changed"] = len(changed)
        return PassResult(program.with_ir(gm), changed=bool(changed), details=details)

    def _check_ignore(self, module) -> None:
        """An `ignore=` entry that names no submodule would keep nothing whole, silently: say so."""
        names = [n for n, _ in module.named_modules() if n]
        unknown = [i for i in self.ignore if not any(n == i or n.startswith(i + ".") for n in names)]
        if unknown:
            from ...errors import closest

            raise SlimcError(f"prune-channels: ignore names no submodule: {', '.join(unknown)}"
                             f"{closest(unknown[0], names)}. Give module names or prefixes such as 'fc' or "
                             "'layer4' (print(model) lists them).")

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



