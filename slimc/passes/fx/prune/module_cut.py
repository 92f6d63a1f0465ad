"""The cut on the user's own module: slice parameters, then update what the classes read.

The analysis ran on the exported graph; its slots are parameter axes. Here every parameter
(and buffer) with removed indices is sliced, tied parameters stay tied (GPT-2's lm_head and
wte), and the attributes a layer's forward reads are set from the new shapes (Conv
in/out_channels and groups, Linear in/out_features, BatchNorm num_features, LayerNorm
normalized_shape, GroupNorm groups, Embedding embedding_dim, transformers' Conv1D nf/nx).
The size attributes a module's own forward reads (a head count in a reshape, GPT-2's split_size,
timm's attn_dim and split lists) follow the new widths (module_attrs.py). Hugging Face
configs follow (hf_config.py), so `save_pretrained` writes the pruned widths.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import AttentionHandler
from .handlers import handler_for
from .module_attrs import update_module_attributes
from .shrink import Cut, _cut_param

__all__ = ["cut_module"]


def _tensor(root: nn.Module, fqn: str):
    owner, _, attr = fqn.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, attr)


def _aliases(root: nn.Module) -> dict[str, list[str]]:
    """FQN -> every FQN holding the same tensor (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, t in list(root.named_parameters(remove_duplicate=False)) + list(root.named_buffers(remove_duplicate=False)):
        by_id.setdefault(id(t), []).append(name)
    return {n: names for names in by_id.values() for n in names}


def _assign(root: nn.Module, fqn: str, value: torch.Tensor, like) -> None:
    owner, _, attr = fqn.rpartition(".")
    mod = root.get_submodule(owner) if owner else root
    if attr in mod._parameters:
        mod._parameters[attr] = value
    elif attr in mod._buffers:
        mod._buffers[attr] = value
    else:
        setattr(mod, attr, value)


def cut_module(analysis, removed_units: dict[str, torch.Tensor]) -> list[str]:
    """Shrink `analysis.module` in place; returns the names of the modules that changed."""
    root, tracker = analysis.module, analysis.tracker
    cut = Cut(analysis, removed_units)
    per_param: dict[str, dict[int, torch.Tensor]] = {}
    for (fqn, axis), atoms in tracker.slots.items():
        if not isinstance(axis, int) or fqn.endswith(("#in", "#all")):
            continue
        gone = cut.removed_at(atoms)
        if bool(gone.any()):
            per_param.setdefault(fqn, {})[axis] = (~gone).nonzero().flatten()
    elements = {}
    atoms_per_class = torch.bincount(analysis.class_of)
    for fqn, label in tracker.params.items():
        gone = cut.removed_at(label)
        if bool(gone.any()):
            elements[fqn] = (gone, atoms_per_class[analysis.class_of[label]] == 1)  # (removed, tied to nothing)
    analysis.walk.literals.clear()
    for rewrite in tracker.rewrites:
        rewrite(cut)
    aliases = _aliases(root)
    changed_modules: set[str] = set()
    done: set[str] = set()
    old_shapes: dict[str, tuple] = {}
    mha = _multihead_owners(root, set(per_param) | set(elements))
    for fqn in sorted(set(per_param) | set(elements)):
        if fqn in done or any(fqn.startswith(o + ".") for o in mha):
            continue
        old = _tensor(root, fqn)
        new = old.detach()
        if fqn in elements:
            gone, free = elements[fqn]
            new = _cut_param(new, gone, fqn, free)
        for axis, keep in sorted(per_param.get(fqn, {}).items()):
            if new.shape[axis] != keep.numel():
                new = new.index_select(axis, keep)
        new = nn.Parameter(new.clone(), requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new.clone()
        for name in aliases.get(fqn, [fqn]):
            old_shapes[name] = tuple(old.shape)
            _assign(root, name, new, old)
            done.add(name)
            changed_modules.add(name.rpartition(".")[0])
    for owner in sorted(mha):
        _cut_multihead(root, owner, per_param)
        changed_modules.add(owner)
    handled = _module_level_keeps(tracker, cut)
    for path, keep in handled.items():  # modules cut by a user's handler
        mod = root.get_submodule(path) if path else root
        new = handler_for(mod).shrink(mod, keep)
        if new is not None and new is not mod:
            parent, _, attr = path.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, attr, new)
        changed_modules.add(path)
    for name in sorted(changed_modules):
        if not any(name == o or name.startswith(o + ".") for o in mha) and name not in handled:
            _fix_layer(root.get_submodule(name) if name else root, name, old_shapes)
    analysis.attribute_changes = update_module_attributes(root, analysis.walk.literals, old_shapes)
    return sorted(changed_modules)


def _module_level_keeps(tracker, cut) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {slot: kept indices}} for slots named by a module handler (not parameter axes)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for (path, slot), atoms in tracker.slots.items():
        if isinstance(slot, str):
            out.setdefault(path, {})[slot] = (~cut.removed_at(atoms)).nonzero().flatten()
    removed = {p for p, keep in out.items() if any(k.numel() < tracker.slots[(p, s)].numel() for s, k in keep.items())}
    return {p: k for p, k in out.items() if p in removed}


def _fix_layer(mod: nn.Module, name: str, old_shapes: dict) -> None:
    w = getattr(mod, "weight", None)
    if isinstance(mod, nn.modules.conv._ConvNd) and isinstance(w, torch.Tensor):
        per_group_out = mod.out_channels // mod.groups
        old = old_shapes.get(f"{name}.weight" if name else "weight", tuple(w.shape))
        if mod.transposed:
            mod.in_channels, mod.out_channels = w.shape[0], w.shape[1] * mod.groups
        else:
            if mod.groups > 1 and w.shape[1] == old[1]:  # whole groups went; a cut inside groups keeps them
                mod.groups = max(1, w.shape[0] // per_group_out)
            mod.out_channels, mod.in_channels = w.shape[0], w.shape[1] * mod.groups
    elif isinstance(mod, nn.Linear) and isinstance(w, torch.Tensor):
        mod.out_features, mod.in_features = w.shape
    elif isinstance(mod, (nn.modules.batchnorm._NormBase,)):
        ref = w if isinstance(w, torch.Tensor) else getattr(mod, "running_mean", None)
        if ref is not None:
            mod.num_features = ref.shape[0]
    elif isinstance(mod, nn.LayerNorm) and isinstance(w, torch.Tensor) and len(mod.normalized_shape) == 1:
        mod.normalized_shape = (w.shape[0],)
    elif isinstance(mod, nn.GroupNorm) and isinstance(w, torch.Tensor):
        per = mod.num_channels // mod.num_groups
        mod.num_channels, mod.num_groups = w.shape[0], max(1, w.shape[0] // per)  # one group stays one
    elif isinstance(mod, nn.Embedding) and isinstance(w, torch.Tensor):
        mod.embedding_dim = w.shape[1]
    elif type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and isinstance(w, torch.Tensor):
        mod.nx, mod.nf = w.shape  # transformers' Conv1D: weight is (in, out)
    elif isinstance(mod, nn.PReLU) and isinstance(w, torch.Tensor):
        mod.num_parameters = w.numel()
    else:
        # Other normalisation layers (RMSNorm, timm's norms) read their width from attributes of these names.
        for attr in ("normalized_shape", "num_features", "hidden_size", "dim"):
            value = getattr(mod, attr, None)
            if isinstance(w, torch.Tensor) and w.dim() == 1:
                if isinstance(value, int):
                    setattr(mod, attr, w.shape[0])
                elif isinstance(value, (tuple, list)) and len(value) == 1:
                    setattr(mod, attr, type(value)([w.shape[0]]))


def _multihead_owners(root: nn.Module, fqns: set) -> set:
    owners = {name for name, m in root.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return {o for o in owners if any(f.startswith(o + ".") for f in fqns)}


def _owner_module(root, name):
    try:
        return root.get_submodule(name) if name else root
    except AttributeError:
        return None


def _cut_multihead(root: nn.Module, owner: str, per_param) -> None:
    """nn.MultiheadAttention cannot hold fewer heads than embed_dim // head_dim: cut heads and
    embedding from its packed weights and replace it by SlimMultiheadAttention."""
    m = root.get_submodule(owner)
    e, h = m.embed_dim, m.num_heads
    d = e // h
    w_cut = per_param.get(f"{owner}.in_proj_weight", {})
    rows_kept = w_cut.get(0, torch.arange(3 * e))
    q_rows = rows_kept[rows_kept < e]
    heads = torch.unique(q_rows // d)
    embed = w_cut.get(1, per_param.get(f"{owner}.out_proj.weight", {}).get(0, torch.arange(e)))
    new = AttentionHandler().shrink(m, {"embed": embed, "heads": heads})
    parent, _, attr = owner.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)
