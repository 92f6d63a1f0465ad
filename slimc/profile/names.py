"""From an ONNX node (or a runtime's layer name) back to the PyTorch module it came from.

Both torch.onnx exporters leave the module path behind, in different places:

* TorchScript exporter: in the node name, one scope per module level, e.g.
  `/layer3/layer3.1/conv2/Conv` -> `layer3.1.conv2`.
* Dynamo exporter (torch.export): in node metadata, `pkg.torch.onnx.name_scopes`
  (`['layer3', 'layer3.1', 'layer3.1.conv2', 'convolution_7']`) and `namespace`
  (`layer3: Sequential/layer3.1: Bottleneck/layer3.1.conv2: Conv2d/convolution_7: aten...`);
  the node name itself (`node_Conv_292`) says nothing.

Runtimes rename what they fuse: ONNX Runtime's NCHWc transformer names a fused Conv+Relu after
its output tensor (`/relu/Relu_output_0_nchwc`), OpenVINO appends `/WithoutBiases` or prefixes a
reorder (`input_f32_abcd_..._/conv1/Conv/WithoutBiases`). `GraphIndex.match` maps such a name to
the ONNX node it stands for.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["module_of_node", "module_from_scoped_name", "GraphIndex", "ROOT"]

ROOT = "<root>"  # ops called in the top-level forward(), outside any submodule


def module_from_scoped_name(name: str) -> str | None:
    """The module path in a TorchScript-exporter node name, or None if the name has no scopes.

    Scopes are either local names (`/layer1/0/conv1/Conv`) or qualified ones
    (`/layer1/layer1.0/conv1/Conv`); both give `layer1.0.conv1`.
    """
    if not name.startswith("/"):
        return None
    scopes = name.strip("/").split("/")[:-1]  # the last part is the op ('Conv', 'Add_3')
    path = ""
    for scope in scopes:
        if path and scope.startswith(path + "."):
            path = scope  # a qualified name already includes its parents
        else:
            path = f"{path}.{scope}" if path else scope
    return path or ROOT


def _from_name_scopes(text: str) -> str | None:
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or not scopes:
        return None
    # The last scope is the FX node (the op); the one before it is the innermost module's full path.
    # The root module's scope is '' when the exporter records it (an nn.Module), absent otherwise.
    return (str(scopes[-2]) or ROOT) if len(scopes) >= 2 else ROOT


def _from_namespace(text: str) -> str | None:
    parts = [p.split(":", 1)[0].strip() for p in text.split("/") if p.strip()]
    if not parts:
        return None
    return (parts[-2] or ROOT) if len(parts) >= 2 else ROOT


def module_of_node(node) -> str:
    """The module path of an onnx.NodeProto: from dynamo metadata, else the scoped name, else the name."""
    meta = {p.key: p.value for p in node.metadata_props}
    for key, parse in (("pkg.torch.onnx.name_scopes", _from_name_scopes), ("namespace", _from_namespace)):
        if key in meta:
            found = parse(meta[key])
            if found:
                return found
    return module_from_scoped_name(node.name) or node.name or f"<{node.op_type}>"


@dataclass
class GraphIndex:
    """Node names, producers and module paths of one ONNX graph, for matching runtime layer names."""

    nodes: dict = field(default_factory=dict)      # node name -> NodeProto
    producer: dict = field(default_factory=dict)   # tensor name -> node name
    modules: dict = field(default_factory=dict)    # node name -> module path

    @classmethod
    def of(cls, model, graph_module=None) -> "GraphIndex":
        """graph_module: the FX GraphModule the graph was exported from, when known; it restores the
        module paths of TorchScript-exported GraphModules (see fx_scopes)."""
        from .fx_scopes import resolve_flat_scopes

        index = cls()
        restored = resolve_flat_scopes(model, graph_module) if graph_module is not None else {}
        for i, node in enumerate(model.graph.node):
            name = node.name or f"{node.op_type}_{i}"
            index.nodes[name] = node
            index.modules[name] = restored.get(name) or module_of_node(node)
            for out in node.output:
                index.producer[out] = name
        # Longest first: a reorder named after '/layer1/conv1/Conv' must not match '/layer1/conv1' first.
        index._by_length = sorted(index.nodes, key=len, reverse=True)
        return index

    def match(self, runtime_name: str, op_type: str | None = None) -> str | None:
        """The ONNX node a runtime layer stands for, or None.

        op_type (the runtime's op, e.g. 'Conv' for a fused Conv+Relu named after the Relu's output)
        walks back from the matched node to the producer of that type, so fused time lands on the conv.
        """
        found = self._match_name(runtime_name)
        if found is None or not op_type:
            return found
        node = found
        for _ in range(4):  # fused chains are short: Conv(+Add)(+Relu)
            if self.nodes[node].op_type == op_type:
                return node
            first = next((i for i in self.nodes[node].input if i in self.producer), None)
            if first is None:
                break
            node = self.producer[first]
        return found

    def _match_name(self, name: str) -> str | None:
        if name in self.nodes:
            return name
        for suffix in ("_nchwc", "_token"):
            stem = name.split(suffix)[0] if suffix in name else None
            if stem:
                if stem in self.producer:
                    return self.producer[stem]
                if stem in self.nodes:
                    return stem
        if name in self.producer:  # layers named after their output tensor
            return self.producer[name]
        for candidate in self._by_length:  # '/conv1/Conv/WithoutBiases' -> '/conv1/Conv'
            if name.startswith(candidate + "/") or name.startswith(candidate + "_"):
                return candidate
        for candidate in self._by_length:  # reorders: '<src>_<layouts>_/conv1/Conv/WithoutBiases'
            if len(candidate) > 4 and candidate in name:
                return candidate
        return None
