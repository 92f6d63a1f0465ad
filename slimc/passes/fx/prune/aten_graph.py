"""The channel analysis on a `torch.export` ATen graph (analysis on the graph, rewrite on the module).

The model is exported (non-strict); the label walk of graph.py then runs over the exported
graph's ATen ops. A layer op (aten.conv2d, aten.linear, aten.batch_norm ...) reads its weight
from a placeholder that `graph_signature` maps to a parameter of the user's module
('layer1.0.conv1.weight'): the slots are *parameter axes* ("layer1.0.conv1.weight", axis 0),
so a subclass of Conv2d or BatchNorm prunes like the built-in and the cut (module_cut.py)
slices the parameters of the user's own module. Parameters read by other ops (layer scales,
class tokens, relative position tables) get one atom per element, as in graph.py.

The walk runs under FakeTensorMode (shapes only). Values computed from buffers and constants
alone (index tables, position ids, masks) are computed for real, so ops that index with them
(Swin's relative position bias) follow channels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from .graph import ChannelAnalysis, NodeContext, _groups, _ignored, _LabelInterpreter, shapes_of
from .labels import Tracker, _components, _mirror

__all__ = ["AtenAnalysis", "analyze_module", "module_of", "pin_module", "failing_module", "LAYER_PARAM_ARGS"]

_MAX_PARAM_ATOMS = 1 << 20
_MAX_CONCRETE = 1 << 22  # constant-derived values larger than this stay shapes only

# Layer ops and the argument positions where they read parameters handled through slots.
LAYER_PARAM_ARGS: dict[str, tuple[int, ...]] = {
    "conv1d": (1, 2), "conv2d": (1, 2), "conv3d": (1, 2), "convolution": (1, 2),
    "conv_transpose1d": (1, 2), "conv_transpose2d": (1, 2), "conv_transpose3d": (1, 2),
    "linear": (1, 2), "addmm": (0, 2), "batch_norm": (1, 2, 3, 4),
    "_native_batch_norm_legit_no_training": (1, 2, 3, 4), "_native_batch_norm_legit_functional": (1, 2, 3, 4),
    "instance_norm": (1, 2, 3, 4), "layer_norm": (2, 3), "group_norm": (2, 3), "embedding": (0,),
}


@dataclass
class AtenAnalysis(ChannelAnalysis):
    """ChannelAnalysis of an exported module: slots are (parameter FQN, axis)."""

    module: Any = None
    exported: Any = None
    fqn_of: dict = field(default_factory=dict)  # placeholder name -> parameter/buffer FQN
    macs: dict = field(default_factory=dict)  # node name -> MACs, for the blockers report
    layer_slots: dict = field(default_factory=dict)  # node name -> slot keys the layer reads/writes
    walk: Any = None


def module_of(node: torch.fx.Node) -> str:
    """The innermost module path in `nn_module_stack` ('' for the root), without '@n' call counters."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return ".".join(p.split("@")[0] for p in str(path).split("."))


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


class _AtenInterpreter(_LabelInterpreter):
    def __init__(self, gm, tracker, lookup, walk):
        super().__init__(gm, tracker, lookup, meta=False)
        self.walk = walk
        self.concrete: dict = {}

    def run_node(self, n):
        if n.op == "placeholder":
            return super().run_node(n)
        if n.op == "call_function" and n in self.walk.constant_nodes:
            from torch._subclasses.fake_tensor import unset_fake_temporarily

            args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: self.concrete.get(a, self.env[a]))
            try:
                with unset_fake_temporarily():
                    value = n.target(*args, **kwargs)
                if isinstance(value, torch.Tensor) and value.numel() <= _MAX_CONCRETE:
                    self.concrete[n] = value
            except Exception:
                pass
        return super().run_node(n)

    def _label(self, n, out):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():  # labels are real int tensors; only the model's values are fake
            return self._label_real(n, out)

    def _label_real(self, n, out):
        t = self.tracker
        custom = self.walk.custom_call(n)
        if custom is not None:
            return self._custom_module(n, out, *custom)
        if n.op == "placeholder":
            fqn = self.walk.fqn_of.get(n.name)
            if fqn is None:
                return _mirror(out)
            if fqn in t.params:
                return t.params[fqn]
            if self.walk.element_labelled(n) and isinstance(out, torch.Tensor) and 0 < out.numel() <= _MAX_PARAM_ATOMS:
                lab = t.fresh(out.numel()).view(out.shape)
                t.params[fqn] = lab
                return lab
            return _mirror(out)
        if n.op == "call_function" and n in self.walk.constant_nodes:
            return _mirror(out)  # index tables, masks, positions: no channels
        if n.op == "call_module" or (n.op == "call_function" and not isinstance(n.target, torch._ops.OpOverload)
                                     and n.target.__module__ == "torch._higher_order_ops.wrap"):
            ctx = self._ctx(n, out)
            ctx.pin_inputs(f"{ctx.describe()} is not followed")
            return ctx.untracked_out()
        return super()._label(n, out)

    def _custom_module(self, n, out, path, module, handler):
        """A node inside a module the user registered a handler for: the module's subgraph is one call.
        Its inner nodes get no labels; the nodes leaving it get what the handler says."""
        inside = self.walk.custom_nodes[path]
        if all(u in inside for u in n.users) and n.users:
            return None
        # Values of the module's inputs may be freed by now: their recorded fake values give the shapes.
        inputs = [a for a in self.walk.custom_inputs[path] if isinstance(a.meta.get("val"), torch.Tensor)]
        args = [self.concrete.get(a, a.meta.get("val")) for a in inputs]
        labels = [self.labels.get(a) for a in inputs]
        if isinstance(module, torch.nn.MultiheadAttention) or type(module).__name__ == "SlimMultiheadAttention":
            args, labels = (args * 3)[:3], (labels * 3)[:3]  # self-attention: query = key = value
            if not getattr(module, "batch_first", False) and args and args[0].dim() == 3:
                labels = [lab.transpose(0, 1) if isinstance(lab, torch.Tensor) else lab for lab in labels]
        ctx = NodeContext(n, module, tuple(args), {}, out, tuple(labels), {}, self.tracker, qualname=path,
                          walk=self.walk)
        if isinstance(out, torch.Tensor):  # the layer's only output leaving it (need_weights=False)
            ctx.out = (out, None)
            result = handler.propagate(ctx)
            return result[0] if isinstance(result, tuple) else result
        return handler.propagate(ctx)

    def _ctx(self, n, out):
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        arg_labels = torch.fx.node.map_arg(n.args, lambda a: self.labels.get(a))
        kwarg_labels = torch.fx.node.map_arg(n.kwargs, lambda a: self.labels.get(a))
        return NodeContext(n, None, args, kwargs, out, arg_labels, kwarg_labels, self.tracker, walk=self.walk)


class _Walk:
    """What handlers may ask about the exported graph (NodeContext.walk)."""

    def __init__(self, exported, module):
        self.exported, self.module = exported, module
        sig = exported.graph_signature
        self.fqn_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.param_names = set(sig.inputs_to_parameters)
        self.interp = None
        self.macs: dict[str, int] = {}
        self.layer_slots: dict[str, list] = {}
        self.scales: set = set()  # BatchNorm weight slots, for criterion=bn
        self.literals: list = []  # (module path, old size, new size) filled in by the cut
        self.constant_nodes = self._constant_nodes(exported.graph_module.graph, sig)
        self.custom_nodes, self.custom_inputs, self.custom_of = self._custom_modules(exported.graph_module.graph)

    def _custom_modules(self, graph):
        """Modules whose class has a user-registered module handler: their nodes and outside inputs."""
        from .handlers import user_module_handler

        nodes: dict[str, set] = {}
        owner: dict = {}
        for n in graph.nodes:
            for path, _ in (n.meta.get("nn_module_stack") or {}).values():
                path = ".".join(p.split("@")[0] for p in str(path).split("."))
                try:
                    mod = self.module.get_submodule(path) if path else self.module
                except AttributeError:
                    continue
                handler = user_module_handler(mod)
                if handler is not None:
                    nodes.setdefault(path, set()).add(n)
                    owner[n] = (path, mod, handler)
                    break  # the outermost registered module takes the node
        inputs = {}
        for path, members in nodes.items():
            seen = []
            for n in graph.nodes:
                if n in members:
                    for a in n.all_input_nodes:
                        if a not in members and a not in seen and not (a.op == "placeholder" and a.name in self.fqn_of):
                            seen.append(a)
            inputs[path] = seen
        return nodes, inputs, owner

    def custom_call(self, node):
        return self.custom_of.get(node)

    def _constant_nodes(self, graph, sig):
        """Nodes computed from buffers, constants and literals alone (no user input, no parameter)."""
        user = set(sig.user_inputs) | set(sig.inputs_to_parameters)
        varying: set = set()
        out = set()
        for n in graph.nodes:
            if n.op == "placeholder":
                if n.name in user:
                    varying.add(n)
                continue
            if n.op != "call_function":
                continue
            if any(a in varying for a in n.all_input_nodes) or not isinstance(n.target, torch._ops.OpOverload):
                varying.add(n)
            else:
                out.add(n)
        return out

    def param(self, node) -> str | None:
        """FQN of the parameter or buffer a placeholder holds, else None."""
        return self.fqn_of.get(node.name) if isinstance(node, torch.fx.Node) and node.op == "placeholder" else None

    def element_labelled(self, node) -> bool:
        """A parameter gets per-element atoms when some op other than a layer op reads it."""
        for u in node.users:
            if u.op != "call_function":
                return True
            positions = LAYER_PARAM_ARGS.get(_op_name(u.target))
            if positions is None or not any(i < len(u.args) and u.args[i] is node for i in positions):
                return True
        return False

    def concrete(self, node):
        return self.interp.concrete.get(node) if isinstance(node, torch.fx.Node) else node

    def value(self, node):
        return self.interp.env.get(node) if isinstance(node, torch.fx.Node) else node

    def label(self, node):
        return self.interp.labels.get(node) if isinstance(node, torch.fx.Node) else None

    def root_param(self, node) -> str | None:
        """The parameter a computed weight comes from (weight standardisation: reshape, norm, scale)."""
        want = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
        seen, todo = set(), [node]
        while todo:
            n = todo.pop()
            if not isinstance(n, torch.fx.Node) or n in seen:
                continue
            seen.add(n)
            fqn = self.fqn_of.get(n.name) if n.op == "placeholder" and n.name in self.param_names else None
            v = n.meta.get("val")
            if fqn and isinstance(v, torch.Tensor) and isinstance(want, torch.Tensor) and v.numel() == want.numel():
                return fqn
            todo.extend(n.all_input_nodes)
        return None


def _inputs(exported, example_inputs, example_kwargs=None):
    sig = exported.graph_signature
    from torch.utils._pytree import tree_leaves

    user = iter(tree_leaves((tuple(example_inputs), dict(example_kwargs or {}))))
    state = exported.state_dict
    values = []
    for spec in sig.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            values.append(next(user))
        elif kind in ("PARAMETER", "BUFFER"):
            values.append(state[spec.target] if spec.target in state else exported.constants[spec.target])
        elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            values.append(exported.constants[spec.target])
        else:
            values.append(None)
    return values


def analyze_module(module: torch.nn.Module, example_inputs, ignore=(), exported=None,
                   example_kwargs=None) -> AtenAnalysis:
    """Export `module` (unless `exported` is given) and find its channel groups on the ATen graph.

    Example::

        analysis = analyze_module(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 64, 64),))
        [(g.name, g.size) for g in analysis.groups]
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ....frontend.export import export_module
    from .handlers import lookup_handler

    start = time.perf_counter()
    if exported is None:
        exported = export_module(module, example_inputs, example_kwargs=example_kwargs)
    walk = _Walk(exported, module)
    tracker = Tracker()
    gm = exported.graph_module
    interp = _AtenInterpreter(gm, tracker, lookup_handler, walk)
    walk.interp = interp
    values = _inputs(exported, example_inputs, example_kwargs)
    buffers = exported.graph_signature.inputs_to_buffers  # a property that rebuilds its dict on every read
    concrete_inputs = {n.name for n in gm.graph.nodes if n.op == "placeholder" and n.name in buffers}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in values]
            for n, v in zip(placeholders, values):
                if n.name in concrete_inputs and isinstance(v, torch.Tensor):
                    interp.concrete[n] = v
            outputs = interp.run(*fake)
    except Exception:  # data-dependent code (.item()) needs real values: walk again for real
        tracker = Tracker()
        interp = _AtenInterpreter(gm, tracker, lookup_handler, walk)
        walk.interp, walk.macs, walk.layer_slots, walk.scales = interp, {}, {}, set()
        for n, v in zip(placeholders, values):
            if n.name in concrete_inputs and isinstance(v, torch.Tensor):
                interp.concrete[n] = v
        with torch.no_grad():
            outputs = interp.run(*values)
    for (fqn, axis), atoms in list(tracker.slots.items()):
        owner = fqn.rpartition(".")[0]
        if _ignored(owner, ignore) and any(m == fqn and s == axis for _, m, s in tracker.producers):
            tracker.pin(atoms, f"module '{owner}' is in the ignore list")
    a, b = tracker.edges()
    class_of = _components(tracker.count, a, b)
    analysis = AtenAnalysis(gm, tracker, interp.labels, class_of, [], output_shapes=shapes_of(outputs),
                            module=module, exported=exported, fqn_of=walk.fqn_of, macs=walk.macs,
                            layer_slots=walk.layer_slots, walk=walk)
    for check in tracker.constraints:
        check(analysis)
    analysis.groups = _groups(tracker, class_of, a, b)
    analysis.seconds = time.perf_counter() - start
    return analysis


def pin_module(analysis: AtenAnalysis, prefix: str, reason: str) -> None:
    """Keep every channel of the parameters under module `prefix` and recompute the groups."""
    t = analysis.tracker
    for (fqn, axis), atoms in t.slots.items():
        if fqn.startswith(prefix + ".") or not prefix:
            t.pin(atoms, reason)
    for fqn, label in t.params.items():
        if fqn.startswith(prefix + "."):
            t.pin(label, reason)
    a, b = t.edges()
    analysis.groups = _groups(t, analysis.class_of, a, b)


def failing_module(module: torch.nn.Module, run) -> tuple[str | None, Exception | None]:
    """Call `run()`; if it raises, the innermost module whose forward was running, and the error."""
    stack: list[str] = []
    names = {m: n for n, m in module.named_modules()}
    handles = []
    deepest: list = [None]

    def enter(m, args):
        stack.append(names.get(m, ""))

    def leave(m, args, out):
        stack.pop()

    for m in names:
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    try:
        run()
        return None, None
    except TimeoutError:  # the caller's time limit (a sweep's alarm), not a failure of the cut model
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        deepest[0] = stack[-1] if stack else None
        return deepest[0], exc
    finally:
        for h in handles:
            h.remove()
