"""After the cut, the size attributes a plain module's forward reads follow its new widths.

The cut slices parameters, and module_cut.py updates what torch's own layer classes read (Conv
in/out_channels, Linear in/out_features, norms). A user's module often sizes things from its own
attributes too: timm's Attention reshapes to `(B, N, 3, self.num_heads, self.head_dim)` and back to
`(B, N, self.attn_dim)`, CrossStage splits at `self.expand_chs // 2`, MixedConv2d splits by the list
`self.splits`. Those attributes must follow the cut or the smaller model fails at run time. This is
the plain-module counterpart of hf_config.py (which does the same for a transformers config).

Which attribute gets which new value is decided by evidence of what changed, per module:

* **strong**: a size the module's own forward spelled in a reshape or split that shrank (old -> new),
  the whole size list of such a reshape or split (LayerScale2d's `shape` (64, 1, 1), MixedConv2d's
  `splits`) - recorded by the label walk (aten_movement.py);
* **weak**: every axis of every parameter and buffer of the module and of all its submodules, old
  size -> new size, including the axes that did not change (so a width that stayed somewhere in the
  module while an equal one shrank elsewhere is ambiguous, not a match).

An int attribute (a list or tuple of ints) whose value equals an old size is set to the new one when
the evidence agrees on a single new value: strong evidence first, weak evidence otherwise. Two
different new values for one old size (the residual width and the attention width were both 192)
leave the attribute alone. Only names that read like widths are touched (`num_heads`, `head_dim`,
`attn_dim`, `expand_chs`, `hidden_features`, `splits` ...; never `kernel_size`, `stride`, `window_size`
...), and never on torch's own layer classes, whose attributes module_cut.py sets from the weights.
If an attribute is still wrong, the pass's retry loop keeps that module whole (prune_channels.py).

One rule is specific to attention: slimc removes whole heads, never part of one, so attributes that
name a per-head width (`head_dim`, `key_dim`, `val_dim`, `attention_head_size` ...) never change -
LeViT's downsampling attention has 16 heads of `key_dim` 16, and only the head count halves.

A per-call cache of tensors computed from parameters (LeViT's `attention_bias_cache`) would serve
stale, uncut values: dict attributes whose name says "cache" are emptied on every changed module.
"""

from __future__ import annotations

import re

import torch.nn as nn

__all__ = ["update_module_attributes", "SIZE_WORDS", "NOT_SIZE_WORDS", "PER_HEAD_WIDTHS"]

# Words (split on "_" and case changes) that make an attribute name read like a width or a count of heads.
SIZE_WORDS = frozenset({
    "head", "heads", "dim", "dims", "chs", "ch", "chans", "channels", "channel", "features", "feature", "width",
    "widths", "split", "splits", "hidden", "embed", "inner", "planes", "mid", "attn", "groups", "nh", "dh",
    "kd", "hd", "units", "neurons", "shape"})
# Words that mark geometry, counts of things other than channels, or ratios: never touched.
NOT_SIZE_WORDS = frozenset({
    "kernel", "stride", "strides", "pad", "padding", "dilation", "window", "patch", "img", "image", "resolution",
    "res", "token", "tokens", "pos", "position", "depth", "layer", "layers", "idx", "index", "seq", "len", "length",
    "classes", "class", "drop", "scale", "ratio", "reduction", "prefix", "grid", "stage", "stages", "block",
    "blocks", "pool", "batch", "vocab", "max", "min", "eps", "seed", "step", "steps", "rank", "shift", "offset",
    "num_classes", "output", "input", "cls", "reg", "feat", "pretrained"})
# Per-head widths: attention is cut by whole heads, so these stay (see the module docstring).
PER_HEAD_WIDTHS = frozenset({"head_dim", "dim_head", "head_size", "attention_head_size", "key_dim", "val_dim",
                             "value_dim", "qk_dim", "v_dim", "d_k", "d_v", "d_head", "dh", "kd", "attn_head_dim"})
_EXTRA_NAMES = frozenset({"d_model", "all_head_size", "split_size", "n_head", "n_heads"})
_CACHE = re.compile(r"cache", re.IGNORECASE)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip("_"))
    return [w for w in spaced.lower().split("_") if w]


def _is_size_name(name: str) -> bool:
    if name.lower() in PER_HEAD_WIDTHS:
        return False
    if name in _EXTRA_NAMES:
        return True
    words = _words(name)
    if not words or any(w in NOT_SIZE_WORDS for w in words):
        return False
    return any(w in SIZE_WORDS for w in words)


def _builtin_layer(mod: nn.Module) -> bool:
    """torch's layer classes (and subclasses): module_cut._fix_layer sets their attributes from the weights."""
    return isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm,
                            nn.GroupNorm, nn.Embedding, nn.MultiheadAttention, nn.PReLU))


def _is_int(v) -> bool:
    return type(v) is int


def _is_int_seq(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(type(i) is int for i in v)


class _Evidence:
    """old size -> set of new sizes, strong (literals) and weak (parameter axes), per module path."""

    def __init__(self):
        self.strong: dict[str, dict] = {}
        self.weak: dict[str, dict] = {}

    def add(self, table: dict, path: str, old, new) -> None:
        table.setdefault(path, {}).setdefault(old, set()).add(new)

    def new_value(self, path: str, old):
        for table in (self.strong, self.weak):
            news = table.get(path, {}).get(old)
            if news:
                return next(iter(news)) if len(news) == 1 else _AMBIGUOUS
        return None


_AMBIGUOUS = object()


def _ancestors(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts))]


def update_module_attributes(root: nn.Module, literals, old_shapes: dict[str, tuple]) -> list[str]:
    """Set the size attributes of `root`'s modules to the cut widths; returns 'path.attr old -> new' lines.

    literals:   (module path, old, new) sizes a module's forward spelled that changed with the cut
                (ints, or tuples: the whole size list of a reshape or split)
    old_shapes: parameter or buffer FQN -> its shape before the cut (the cut ones)
    """
    evidence = _Evidence()
    for path, old, new in literals:
        if old != new:
            evidence.add(evidence.strong, path, old, new)
    touched: set[str] = set()
    for fqn, tensor in list(root.named_parameters(remove_duplicate=False)) + list(root.named_buffers(
            remove_duplicate=False)):
        owner = fqn.rpartition(".")[0]
        old = old_shapes.get(fqn, tuple(tensor.shape))
        if fqn in old_shapes:
            touched.update([owner, *_ancestors(owner)])
        if len(old) != tensor.dim():
            continue
        for path in [owner, *_ancestors(owner)]:
            for o, n in zip(old, tensor.shape):
                evidence.add(evidence.weak, path, int(o), int(n))
    changes: list[str] = []
    for path in sorted(touched | set(evidence.strong)):
        try:
            mod = root.get_submodule(path) if path else root
        except AttributeError:
            continue
        if _builtin_layer(mod):
            continue
        changes += _update_one(mod, path, evidence)
    return changes


def _update_one(mod: nn.Module, path: str, evidence: _Evidence) -> list[str]:
    changes = []
    for attr, value in list(vars(mod).items()):
        if isinstance(value, dict) and _CACHE.search(attr) and value:
            value.clear()  # tensors computed from the uncut parameters
            changes.append(f"{path or '<root>'}.{attr} cleared")
            continue
        if not _is_size_name(attr):
            continue
        new = None
        if _is_int(value) and value > 1:
            new = evidence.new_value(path, value)
        elif _is_int_seq(value):
            new = evidence.new_value(path, tuple(value))
            if new is not None and new is not _AMBIGUOUS:
                new = type(value)(new)
        if new is None or new is _AMBIGUOUS or new == value:
            continue
        setattr(mod, attr, new)
        changes.append(f"{path or '<root>'}.{attr} {value} -> {new}")
    return changes
