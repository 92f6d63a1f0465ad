"""Channel dependency analysis: which channels of an FX graph must be removed together.

Every channel a layer creates is an *atom* (an integer id). Each node's output gets a *label*:
an int64 tensor of the node's shape holding, at every position, the atom whose removal
deletes that position (-1: not removable, e.g. the image's colour channels). Labels are
mostly expanded views (a conv's output label is `arange(C)` broadcast over batch and space),
so they cost little memory (labels.py). Handlers (layers.py, functional.py, attention.py) compute a
node's label from its inputs' labels and record what couples atoms: an add *unions* its
inputs position by position, a conv *consumes* its input's channel axis. Data-movement ops
(reshape, permute, cat, split, slicing, channel shuffle) run on the labels themselves, so
channels are followed through them without a rule per op. The walk runs the graph on meta
tensors (shapes, no arithmetic), falling back to the example inputs for data-dependent code.

After the walk, connected components of the union edges are *classes* (channels that leave
together); classes tied through one layer's outputs form a *group*, the unit pruned at one
ratio and the unit a hyperparameter search tunes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from .labels import SizeLabel, Tracker, _components, _flat_labels, _has_tensor, _mirror, _size_labels, rows, untracked

__all__ = ["ChannelGroup", "ChannelAnalysis", "NodeContext", "analyze", "channel_groups", "output_shapes", "shapes_of"]

_MAX_PARAM_ATOMS = 1 << 20  # parameters larger than this are never followed (memory)


# ---- results -----------------------------------------------------------------------------

@dataclass
class ChannelGroup:
    """Channels that are pruned together: removing unit i removes it from every member.

    name:     stable name (the first layer, in graph order, whose outputs are in the group)
    size:     number of prunable units (a unit is `width` channels of the first layer)
    members:  "module:slot" parameter axes that shrink with the group
    pinned:   units that must stay; `reasons` says why (readable, one line each)
    """

    name: str
    size: int
    width: int
    members: tuple[str, ...]
    pinned: int
    reasons: tuple[str, ...]
    classes: torch.Tensor = field(repr=False)  # class id of each unit, in the first layer's order
    pinned_mask: torch.Tensor = field(repr=False)

    @property
    def channels(self) -> int:
        return self.size * self.width

    @property
    def prunable(self) -> bool:
        return self.pinned < self.size


@dataclass
class ChannelAnalysis:
    """The outcome of `analyze`: groups, plus what shrinking needs (atom classes, records)."""

    gm: torch.fx.GraphModule
    tracker: Tracker
    labels: dict
    class_of: torch.Tensor  # atom -> class id
    groups: list[ChannelGroup]
    output_shapes: Any = None
    seconds: float = 0.0

    def classes(self, label: torch.Tensor) -> torch.Tensor:
        """Class id at each position of `label` (-1 where untracked)."""
        return torch.where(label >= 0, self.class_of[label.clamp(min=0)], label)

    def class_rows(self, label: torch.Tensor, dim: int) -> torch.Tensor:
        r = self.classes(rows(label, dim))
        return r.amax(1)

    def varies(self, label: torch.Tensor, dim: int) -> bool:
        """Whether axis `dim` of `label` carries more than one class (i.e. could shrink)."""
        r = self.class_rows(label, dim)
        return bool((r >= 0).any()) and r.unique().numel() > 1


# ---- the walk ---------------------------------------------------------------------------

@dataclass
class NodeContext:
    """What a handler sees for one node: its values (meta tensors during the walk: only shapes
    and python ints are meaningful), their labels, and the tracker."""

    node: torch.fx.Node
    module: Any
    args: tuple
    kwargs: dict
    out: Any
    arg_labels: tuple
    kwarg_labels: dict
    tracker: Tracker
    qualname: str | None = None  # set when a handler runs another on a submodule (encoder layers)
    walk: Any = None  # on an exported ATen graph: parameter FQNs, owning modules, concrete values

    @property
    def name(self) -> str:
        if self.qualname:
            return self.qualname
        return str(self.node.target) if self.node.op == "call_module" else self.node.name

    def input_label(self, i: int = 0) -> torch.Tensor:
        lab = self.arg_labels[i] if i < len(self.arg_labels) else None
        if lab is None:
            val = self.args[i]
            return untracked(val.shape)
        return lab

    def pin_inputs(self, reason: str) -> None:
        for lab in _flat_labels((self.arg_labels, self.kwarg_labels)):
            self.tracker.pin(lab, reason)

    def untracked_out(self):
        return _mirror(self.out)

    def describe(self) -> str:
        if self.walk is not None:
            from .aten_graph import module_of

            where = module_of(self.node)
            return f"node '{self.node.name}' ({_target_name(self.node.target)}) in '{where or '<root>'}'"
        if self.node.op == "call_module":
            return f"node '{self.node.name}' (module {type(self.module).__name__})"
        target = self.node.target if isinstance(self.node.target, str) else getattr(
            self.node.target, "__name__", str(self.node.target))
        return f"node '{self.node.name}' ({self.node.op} {target})"


def _target_name(target) -> str:
    return str(target) if not hasattr(target, "__name__") else (
        str(target) if type(target).__module__.startswith("torch._ops") else target.__name__)


# Exact classes only: a subclass may change shapes.
_SAME_SHAPE_TYPES = {torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.InstanceNorm2d,
                     torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU,
                     torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.Sigmoid, torch.nn.GELU, torch.nn.Dropout,
                     torch.nn.Identity}


class _ShapeInterpreter(torch.fx.Interpreter):
    def __init__(self, gm, meta=False):
        super().__init__(gm, garbage_collect_values=True)
        self.meta = meta

    def call_module(self, target, args, kwargs):
        # On meta tensors these layers only copy the shape; their decompositions are slow.
        if self.meta and args and isinstance(args[0], torch.Tensor) and not kwargs and len(args) == 1 \
                and type(self.module.get_submodule(target)) in _SAME_SHAPE_TYPES:
            return torch.empty_like(args[0])
        return super().call_module(target, args, kwargs)


class _LabelInterpreter(_ShapeInterpreter):
    def __init__(self, gm, tracker, lookup, meta=False):
        super().__init__(gm, meta)
        self.tracker, self.lookup, self.labels = tracker, lookup, {}

    def run_node(self, n):
        out = super().run_node(n)
        self.labels[n] = self._label(n, out)
        return out

    def _label(self, n, out):
        t = self.tracker
        if n.op == "placeholder":
            return _mirror(out)
        if n.op == "get_attr":
            if n.target in t.params:  # one parameter read twice is still one set of channels
                return t.params[n.target]
            # A parameter only read by ops without a handler stays whole anyway: no atoms for it
            # (Swin passes its qkv weights to one opaque function; that would be millions of atoms).
            followed = any(u.op not in ("call_function", "call_method") or self.lookup(u, None) is not None
                           for u in n.users)
            if followed and isinstance(out, torch.Tensor) and 0 < out.numel() <= _MAX_PARAM_ATOMS:
                lab = t.fresh(out.numel()).view(out.shape)
                t.params[n.target] = lab
                return lab
            return _mirror(out)
        arg_labels = torch.fx.node.map_arg(n.args, lambda a: self.labels.get(a))
        kwarg_labels = torch.fx.node.map_arg(n.kwargs, lambda a: self.labels.get(a))
        if n.op == "output":
            for lab in _flat_labels((arg_labels, kwarg_labels)):
                t.pin(lab, "it is a model output (output shapes must stay as they are)")
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        ctx = NodeContext(n, module, args, kwargs, out, arg_labels, kwarg_labels, t, walk=getattr(self, "walk", None))
        if not _has_tensor(out) and n.op != "call_module":
            return _size_label(n, args, arg_labels)  # sizes, shapes, asserts: no data flows on
        handler = self.lookup(n, module)
        if handler is None:
            ctx.pin_inputs(f"{ctx.describe()} has no prune handler (register_handler can add one)")
            return ctx.untracked_out()
        return handler.propagate(ctx)


def _size_label(n, args, arg_labels):
    """Labels for `x.size()`, `x.size(d)`, `x.shape` and picking from them; None for other values."""
    import operator

    first = arg_labels[0] if arg_labels else None
    if n.op == "call_method" and n.target == "size" and isinstance(first, torch.Tensor):
        dim = args[1] if len(args) > 1 else n.kwargs.get("dim")
        return _size_labels(first, dim)
    if n.op == "call_function" and n.target is getattr and args[1] == "shape" and isinstance(first, torch.Tensor):
        return _size_labels(first)
    if n.op == "call_function" and n.target is operator.getitem and isinstance(first, tuple) \
            and isinstance(args[1], int) and any(isinstance(x, SizeLabel) for x in first):
        return first[args[1]]
    return None


def analyze(gm: torch.fx.GraphModule, example_inputs, ignore=()) -> ChannelAnalysis:
    """Walk `gm` on `example_inputs` and find its channel groups.

    Example::

        analysis = analyze(torch.fx.symbolic_trace(model.eval()), (torch.randn(1, 3, 32, 32),))
        [(g.name, g.size) for g in analysis.groups]
    """
    import time

    from .handlers import lookup_handler

    start = time.perf_counter()
    try:
        tracker, interp, outputs = _walk(gm, example_inputs, lookup_handler, fake=True)
    except Exception:  # data-dependent code (e.g. .item()) needs real values: walk again for real
        tracker, interp, outputs = _walk(gm, example_inputs, lookup_handler, fake=False)
    for module, slot in list(tracker.slots):
        if _ignored(module, ignore) and any(m == module and s == slot for _, m, s in tracker.producers):
            tracker.pin(tracker.slots[(module, slot)], f"module '{module}' is in the ignore list")
    a, b = tracker.edges()
    class_of = _components(tracker.count, a, b)
    analysis = ChannelAnalysis(gm, tracker, interp.labels, class_of, [], output_shapes=shapes_of(outputs))
    for check in tracker.constraints:
        check(analysis)
    analysis.groups = _groups(tracker, class_of, a, b)
    analysis.seconds = time.perf_counter() - start
    return analysis


def _walk(gm, example_inputs, lookup, fake: bool):
    tracker = Tracker()
    interp = _LabelInterpreter(gm, tracker, lookup, meta=fake)
    with torch.no_grad(), _on_meta(gm, fake) as to_meta:
        outputs = interp.run(*(to_meta(x) for x in example_inputs))
    return tracker, interp, outputs


@contextlib.contextmanager
def _on_meta(module: torch.nn.Module, enabled: bool = True):
    """Temporarily give `module` meta-device weights: the walk needs shapes, not arithmetic."""
    if not enabled:
        yield lambda x: x
        return
    from torch.nn.utils.stateless import _reparametrize_module

    state = {k: torch.empty_like(v, device="meta") for k, v in
             list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))}
    with _reparametrize_module(module, state, tie_weights=True):
        yield lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x


def shapes_of(value):
    """Nested tuple of the shapes in a model output."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return tuple(shapes_of(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, shapes_of(v)) for k, v in value.items())
    return None


def output_shapes(gm: torch.nn.Module, example_inputs):
    """Output shapes of `gm` on `example_inputs`, computed without arithmetic where possible."""
    try:
        with torch.no_grad(), _on_meta(gm) as to_meta:
            run = _ShapeInterpreter(gm, meta=True).run if isinstance(gm, torch.fx.GraphModule) else gm
            return shapes_of(run(*(to_meta(x) for x in example_inputs)))
    except Exception:
        with torch.no_grad():
            return shapes_of(gm(*example_inputs))


def _ignored(module: str, ignore) -> bool:
    return any(module == i or module.startswith(i + ".") for i in ignore)


def _groups(tracker: Tracker, class_of: torch.Tensor, a, b) -> list[ChannelGroup]:
    # Groups: classes linked through one producer's outputs. Chain each producer's atoms.
    chain_a, chain_b = [a], [b]
    for _, module, slot in tracker.producers:
        atoms = tracker.slots[(module, slot)]
        atoms = atoms[atoms >= 0]
        chain_a.append(atoms[:-1])
        chain_b.append(atoms[1:])
    group_of = _components(tracker.count, torch.cat(chain_a), torch.cat(chain_b))
    n_classes = int(class_of.max()) + 1 if class_of.numel() else 0
    class_group = torch.zeros(n_classes, dtype=torch.long)
    class_group[class_of] = group_of
    pinned_class = torch.zeros(n_classes, dtype=torch.bool)
    group_reasons: dict[int, list[str]] = {}
    for atoms, reason in tracker.pins:
        cls = class_of[atoms].unique()
        pinned_class[cls] = True
        for g in class_group[cls].unique().tolist():
            reasons = group_reasons.setdefault(g, [])
            if reason not in reasons and len(reasons) < 6:
                reasons.append(reason)
    members: dict[int, list[str]] = {}
    for key, atoms in tracker.slots.items():
        valid = atoms[atoms >= 0]
        if valid.numel():
            for g in group_of[valid].unique().tolist():
                members.setdefault(g, []).append(f"{key[0]}:{key[1]}")
    # A unit's width is its widest producer's: round-to and min-channels then speak of the main layer, not of
    # a narrow one that happens to run first (Swin V2's cpb_mlp, one channel per head, before its qkv).
    widest: dict[int, int] = {}
    for _, module, slot in tracker.producers:
        atoms = tracker.slots[(module, slot)]
        atoms = atoms[atoms >= 0]
        if atoms.numel():
            g, cls = int(group_of[atoms[0]]), class_of[atoms]
            w = tracker.widths.get((module, slot), max(1, cls.numel() // max(1, cls.unique().numel())))
            widest[g] = max(widest.get(g, 1), w)
    groups, seen = [], set()
    for name, module, slot in tracker.producers:
        atoms = tracker.slots[(module, slot)]
        atoms = atoms[atoms >= 0]
        if not atoms.numel():
            continue
        g = int(group_of[atoms[0]])
        if g in seen:
            continue
        seen.add(g)
        cls = class_of[atoms]
        classes = _first_occurrence(cls)
        width = widest[g]
        pinned = pinned_class[classes]
        reasons = tuple(group_reasons.get(g, ())) if bool(pinned.any()) else ()
        taken = {x.name for x in groups}
        base, n = name, 2
        while name in taken:  # names key the removals: they must be unique
            name, n = f"{base}#{n}", n + 1
        groups.append(ChannelGroup(name, int(classes.numel()), width, tuple(members.get(g, ())),
                                   int(pinned.sum()), reasons, classes, pinned))
    return groups


def _first_occurrence(values: torch.Tensor) -> torch.Tensor:
    """Unique values in order of first appearance."""
    uniq, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((uniq.numel(),), values.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel()), reduce="amin")
    return uniq[first.argsort()]


def channel_groups(gm: torch.nn.Module, example_inputs, ignore=()) -> list[ChannelGroup]:
    """The prunable channel groups of `gm`, in graph order, each with a stable `.name` and `.size`.

    Example::

        for g in channel_groups(gm, (torch.randn(1, 3, 224, 224),)):
            print(g.name, g.size, g.prunable)
    """
    from ....errors import SlimcError
    from .aten_graph import analyze_module

    try:  # the groups prune-channels cuts: found on the exported graph, as the pass does
        return analyze_module(gm, example_inputs, ignore).groups
    except SlimcError:  # export refused: the torch.fx walk (the pass falls back to it too)
        if not isinstance(gm, torch.fx.GraphModule):
            raise
        return analyze(gm, example_inputs, ignore).groups
