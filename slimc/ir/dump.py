"""Textual IR dumps that a person reads when something goes wrong.

FX:   `<stem>.py` (the GraphModule's generated Python) and `<stem>.nodes.txt` (a node table).
ONNX: `<stem>.onnxtxt` (ONNX text syntax, weights in `<stem>.onnx.data`) and `<stem>.onnx` for Netron.
"""

from __future__ import annotations

from pathlib import Path

from .onnx_io import atomic_write, save_onnx_text
from .program import Program

__all__ = ["dump_program", "fx_node_table"]


def fx_node_table(gm) -> str:
    """One line per FX node: name, opcode, target, arguments, and the shape when known."""
    rows = [("name", "op", "target", "args", "shape")]
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        shape = "x".join(map(str, meta.shape)) if meta is not None and hasattr(meta, "shape") else ""
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        rows.append((n.name, n.op, str(target), ", ".join(map(str, n.args))[:80], shape))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def dump_program(program: Program, directory: str | Path, stem: str) -> list[Path]:
    """Write the program's IR under `directory` as `stem.*`; returns the files written."""
    import torch.fx

    directory = Path(directory)
    if program.level == "onnx":
        text = save_onnx_text(program.ir, directory / f"{stem}.onnxtxt")
        return [text, text.with_suffix(".onnx")]
    gm = program.ir
    code = gm.code if isinstance(gm, torch.fx.GraphModule) else repr(gm)
    py, table = directory / f"{stem}.py", directory / f"{stem}.nodes.txt"
    atomic_write(py, lambda tmp: Path(tmp).write_text(f"# {type(gm).__name__} after '{stem}'\n{code}"))
    if isinstance(gm, torch.fx.GraphModule):
        atomic_write(table, lambda tmp: Path(tmp).write_text(fx_node_table(gm)))
        return [py, table]
    return [py]
