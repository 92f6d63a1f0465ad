"""Keep a pruned Hugging Face model's config in step with its layers, so `save_pretrained` +
`from_pretrained` rebuild the pruned widths.

A config holds one width per kind (heads, key/value heads, MLP units, hidden size) for every
layer; the fields are set when every layer agrees, and the model is rebuilt on the meta device
from the new config to check that its parameter shapes match. What cannot be expressed (per-layer
widths; BERT's attention width, which its config ties to the hidden size) becomes a note.
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["update_hf_config"]

# (attention module attribute for q, k, v widths) per family: (q, k) Linear names or the fused GPT-2 Conv1D.
_Q_NAMES = ("q_proj", "query", "q_lin")
_K_NAMES = ("k_proj", "key", "k_lin")
_MLP_IN = ("gate_proj", "c_fc", "lin1", "fc1")


def _width(mod) -> int | None:
    if isinstance(mod, nn.Linear):
        return mod.out_features
    if type(mod).__name__ == "Conv1D":
        return mod.nf
    return None


def _uniform(values):
    values = [v for v in values if v is not None]
    return values[0] if values and all(v == values[0] for v in values) else (None if not values else "mixed")


def update_hf_config(model: nn.Module) -> list[str]:
    """Set head counts, intermediate and hidden sizes on `model.config`; returns notes for the report."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return []
    notes: list[str] = []
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads, kv_heads, inner = [], [], []
    for name, mod in model.named_modules():
        q = next((getattr(mod, n) for n in _Q_NAMES if isinstance(getattr(mod, n, None), nn.Module)), None)
        k = next((getattr(mod, n) for n in _K_NAMES if isinstance(getattr(mod, n, None), nn.Module)), None)
        fused = getattr(mod, "c_attn", None)
        if q is not None and k is not None and _width(q):
            heads.append(_width(q) // head_dim)
            kv_heads.append(_width(k) // head_dim)
            _set_attention_attributes(mod, _width(q) // head_dim, _width(q))
        elif fused is not None and _width(fused) and not getattr(mod, "is_cross_attention", False):
            width = _width(fused) // 3
            heads.append(width // head_dim)
            kv_heads.append(width // head_dim)
            _set_attention_attributes(mod, width // head_dim, width)
        mlp_in = next((getattr(mod, n) for n in _MLP_IN if isinstance(getattr(mod, n, None), nn.Module)), None)
        if mlp_in is not None and _width(mlp_in):
            inner.append(_width(mlp_in))
        elif name.endswith("intermediate") and isinstance(getattr(mod, "dense", None), nn.Linear):
            inner.append(mod.dense.out_features)
    fields = {"num_attention_heads": _uniform(heads), "intermediate_size": _uniform(inner)}
    if hasattr(config, "num_key_value_heads"):
        fields["num_key_value_heads"] = _uniform(kv_heads)
    for key in ("n_inner",) if type(config).__name__ == "GPT2Config" else ():
        fields[key] = fields.pop("intermediate_size")
    if type(config).__name__ == "DistilBertConfig":
        fields["hidden_dim"] = fields.pop("intermediate_size")
    hidden = _hidden_size(model)
    if hidden is not None:
        fields["hidden_size"] = hidden
    for key, value in fields.items():
        if value == "mixed":
            notes.append(f"config.{key}: layers have different widths after pruning; the config cannot say so, "
                         "so save_pretrained's output will not reload with from_pretrained (use scope=local)")
        elif value is not None and hasattr(config, key):
            setattr(config, key, value)
    if hasattr(config, "head_dim") or type(config).__name__ in ("LlamaConfig", "ViTConfig"):
        config.head_dim = head_dim
    mismatch = _reload_mismatch(model)
    if mismatch:
        notes.append(f"save_pretrained's output will not reload with from_pretrained: {mismatch}")
    return notes


def _set_attention_attributes(mod, heads: int, width: int) -> None:
    for attr in ("num_heads", "num_attention_heads", "n_heads", "n_head"):
        if type(getattr(mod, attr, None)) is int:
            setattr(mod, attr, heads)
    for attr in ("all_head_size", "split_size"):
        if type(getattr(mod, attr, None)) is int:
            setattr(mod, attr, width)
    if type(mod).__name__.startswith("GPT2") and type(getattr(mod, "embed_dim", None)) is int:
        mod.embed_dim = width


def _hidden_size(model) -> int | None:
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None
    if isinstance(emb, nn.Embedding):
        return emb.embedding_dim
    proj = getattr(emb, "projection", None)
    return proj.out_channels if isinstance(proj, nn.Conv2d) else None


def _reload_mismatch(model) -> str | None:
    """First parameter whose shape differs in a model rebuilt from the config (built on the meta device)."""
    import torch

    try:
        with torch.device("meta"):
            fresh = type(model)(model.config)
    except Exception as exc:  # the config itself is inconsistent
        return f"the class refuses the pruned config ({str(exc).splitlines()[0]})"
    theirs = dict(fresh.state_dict())
    for name, t in model.state_dict().items():
        if name in theirs and tuple(theirs[name].shape) != tuple(t.shape):
            return f"{name} is {tuple(t.shape)} but the config builds {tuple(theirs[name].shape)}"
    return None
