"""Parse an ONNX model with TensorRT's ONNX parser and say, node by node, what it cannot take.

`capability_report(model)` is the report (`slimc inspect --capability model.onnx --backend tensorrt`);
`parse_network` is what the build uses, and it fails with that same report as one SlimcError.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from ...errors import SlimcError
from ...ir.onnx_io import fits_protobuf, save_onnx
from .flavor import TrtFlavor, import_flavor, make_logger

__all__ = ["ParserIssue", "ParsedNetwork", "parse_network", "capability_report", "format_capability",
           "network_signature"]


@dataclass(frozen=True)
class ParserIssue:
    """One node the parser rejected: index (-1 when not tied to a node), name, op, domain and why."""

    index: int
    name: str
    op_type: str
    domain: str
    reason: str
    code: str

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "op_type": self.op_type, "domain": self.domain,
                "reason": self.reason, "code": self.code}

    def sentence(self) -> str:
        if self.index < 0 and not self.op_type:
            return self.reason
        domain = f", domain {self.domain}" if self.domain else ""
        where = f"node '{self.name or f'#{self.index}'}' ({self.op_type}{domain})"
        return f"{where}: {self.reason}"


@dataclass
class ParsedNetwork:
    """A parsed network; the builder, parser and logger live as long as the network needs them."""

    flavor: TrtFlavor
    builder: object
    network: object
    parser: object
    logger: object


def _reason(op_type: str, domain: str, desc: str, func: str, code: str) -> str:
    """The parser's reason, readable: its raw text is often just 'false' or an assertion."""
    desc = desc.strip()
    if "Plugin not found" in desc:
        where = f" in domain '{domain}'" if domain else ""
        return f"TensorRT has no importer and no registered plugin for op '{op_type}'{where}"
    if code == "UNSUPPORTED_NODE" and desc in ("", "false"):
        return f"TensorRT's ONNX parser does not support op '{op_type}' ({func})" if func else \
            f"TensorRT's ONNX parser does not support op '{op_type}'"
    return desc.removeprefix("Assertion failed: ").strip()


def _issues(parser, model) -> list[ParserIssue]:
    nodes = model.graph.node
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        index = int(err.node())
        name, op_type = err.node_name() or "", err.node_operator() or ""
        domain = ""
        if 0 <= index < len(nodes) and (not name or nodes[index].name == name):
            name, op_type, domain = nodes[index].name or name, nodes[index].op_type or op_type, nodes[index].domain
        code = getattr(err.code(), "name", str(err.code()))
        out.append(ParserIssue(index, name, op_type, domain, _reason(op_type, domain, err.desc(), err.func(), code),
                               code))
    return out


def _create_network(flavor: TrtFlavor, builder):
    trt = flavor.module
    # Strongly typed: the graph's tensor types decide precision (RTX networks always are).
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if flavor.name == "full" else 0
    return builder.create_network(flags)


def _parse(parser, model) -> bool:
    if fits_protobuf(model):
        return bool(parser.parse(model.SerializeToString()))
    with tempfile.TemporaryDirectory(prefix="slimc-trt-") as tmp:
        path = save_onnx(model, os.path.join(tmp, "model.onnx"), external_data=True)
        return bool(parser.parse_from_file(str(path)))


def _require_gpu_for_full(flavor: TrtFlavor, doing: str) -> None:
    if flavor.name != "full":
        return
    from .gpu_probe import probe_gpu

    status = probe_gpu()
    if not status.usable:
        raise SlimcError(f"the full TensorRT needs an NVIDIA GPU for {doing}, and none is usable here "
                         f"({status.reason}). Use flavor=rtx (TensorRT for RTX builds on a CPU).")


def _parse_model(flavor: TrtFlavor, model) -> tuple[ParsedNetwork, list[ParserIssue]]:
    _require_gpu_for_full(flavor, "parsing and building")
    trt = flavor.module
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = _create_network(flavor, builder)
    parser = trt.OnnxParser(network, logger)
    ok = _parse(parser, model)
    issues = _issues(parser, model)
    if not ok and not issues:
        issues = [ParserIssue(-1, "", "", "", "; ".join(logger.errors()[-3:]) or "the parser failed without a reason",
                              "UNKNOWN")]
    return ParsedNetwork(flavor, builder, network, parser, logger), issues


def _message(flavor: TrtFlavor, issues: list[ParserIssue], total: int) -> str:
    listed = "; ".join(i.sentence() for i in issues[:8])
    more = f"; and {len(issues) - 8} more" if len(issues) > 8 else ""
    nodes = [i for i in issues if i.index >= 0 or i.op_type]
    head = (f"{flavor.label} cannot parse {len(nodes)} of the {total} ONNX nodes" if nodes
            else f"{flavor.label} cannot parse this ONNX model")
    return (f"{head}: {listed}{more}. Replace or decompose these ops before the backend (another export, an ONNX "
            "pass), register a TensorRT plugin for them, or use another backend such as onnxruntime; "
            "`slimc inspect --capability model.onnx --backend tensorrt` lists every node TensorRT rejects.")


def parse_network(flavor: TrtFlavor, model) -> ParsedNetwork:
    """Parse `model` into a TensorRT network, or fail with one paragraph naming every rejected node."""
    parsed, issues = _parse_model(flavor, model)
    if issues:
        raise SlimcError(_message(flavor, issues, len(model.graph.node)))
    return parsed


def _dtype_name(dtype) -> str:
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
             "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8_e4m3", "INT4": "int4"}
    name = getattr(dtype, "name", str(dtype))
    return names.get(name, name.lower())


def network_signature(network) -> dict:
    """Inputs and outputs of a parsed network: name, shape (-1 where dynamic) and dtype."""
    def sig(tensor):
        return {"name": tensor.name, "shape": [int(d) for d in tensor.shape], "dtype": _dtype_name(tensor.dtype)}

    return {"inputs": [sig(network.get_input(i)) for i in range(network.num_inputs)],
            "outputs": [sig(network.get_output(i)) for i in range(network.num_outputs)]}


def capability_report(model, flavor: str = "auto") -> dict:
    """What TensorRT's ONNX parser says about each node of `model` (an onnx.ModelProto).

    Example::

        report = capability_report(onnx.load("model.onnx"))
        report["supported"], [(i["name"], i["op_type"], i["reason"]) for i in report["issues"]]
    """
    flav = import_flavor(flavor)
    parsed, issues = _parse_model(flav, model)
    ops = sorted({n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in model.graph.node})
    rejected = {i.index for i in issues if i.index >= 0}
    return {"backend": "tensorrt", **flav.as_dict(), "supported": not issues, "nodes": len(model.graph.node),
            "rejected_nodes": len(rejected), "issues": [i.as_dict() for i in issues], "ops": ops,
            **({"signature": network_signature(parsed.network)} if not issues else {})}


def format_capability(report: dict) -> str:
    """The capability report as text for the terminal."""
    label = "TensorRT" if report["flavor"] == "full" else "TensorRT for RTX"
    lines = [f"{label} {report['version']}: "
             + ("every node parses" if report["supported"] else
                f"{report['rejected_nodes']} of {report['nodes']} nodes rejected")]
    if report["issues"]:
        rows = [["node", "op", "reason"]] + [[i["name"] or (f"#{i['index']}" if i["index"] >= 0 else "-"),
                                             (i["domain"] + "::" if i["domain"] else "") + i["op_type"], i["reason"]]
                                            for i in report["issues"]]
        widths = [max(len(r[c]) for r in rows) for c in range(2)]
        for j, r in enumerate(rows):
            lines.append(f"  {r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip())
            if j == 0:
                lines.append(f"  {'-' * widths[0]}  {'-' * widths[1]}  ------")
    return "\n".join(lines)
