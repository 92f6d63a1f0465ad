"""Textual IR dumps that a person reads when something goes wrong.

FX:   `<stem>.py` (the GraphModule's generated Python) and `<stem>.nodes.txt` (a node table).
ONNX: `<stem>.onnxtxt` (ONNX text syntax, weights in `<stem>.onnx.data`) and `<stem>.onnx` for Netron.
"""

from __future__ import annotations

from pathlib import Path

from .onnx_io import atomic_write, save_onnx_text
from .program import Program

__all__ = ["dump_program", "fx_node_table", "prepare_dump_dir", "DUMP_MANIFEST"]

# Lists the files slimc wrote into a dump folder, so the next run can clear exactly those and no others.
DUMP_MANIFEST = ".slimc-dump.json"


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
        written = [text, text.with_suffix(".onnx"), text.with_suffix(".onnx.data")]
    else:
        gm = program.ir
        code = gm.code if isinstance(gm, torch.fx.GraphModule) else repr(gm)
        py, table = directory / f"{stem}.py", directory / f"{stem}.nodes.txt"
        atomic_write(py, lambda tmp: Path(tmp).write_text(f"# {type(gm).__name__} after '{stem}'\n{code}"))
        written = [py]
        if isinstance(gm, torch.fx.GraphModule):
            atomic_write(table, lambda tmp: Path(tmp).write_text(fx_node_table(gm)))
            written.append(table)
    _record(directory, [p for p in written if p.exists()])
    return [p for p in written if p.suffix != ".data"]


def _manifest(directory: Path) -> list[str]:
    import json

    try:
        names = json.loads((directory / DUMP_MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]


def _record(directory: Path, files: list[Path]) -> None:
    import json

    names = list(dict.fromkeys(_manifest(directory) + [p.name for p in files]))
    text = json.dumps({"written_by": "slimc --dump-ir", "files": names}, indent=1)
    atomic_write(directory / DUMP_MANIFEST, lambda tmp: Path(tmp).write_text(text))


def prepare_dump_dir(directory: str | Path) -> None:
    """Make `directory` ready for a new run's dumps without mixing two runs.

    Absent or empty: fine. Holding an earlier slimc dump (its manifest): exactly the files that
    manifest lists are removed, nothing else. Holding anything else: refused, so no file of the
    user's is removed or mixed with the dumps.
    """
    from ..errors import SlimcError

    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise SlimcError(f"--dump-ir '{directory}' is a file, not a directory; give a directory for the IR dumps.")
    if (directory / DUMP_MANIFEST).is_file():
        for name in _manifest(directory):
            f = directory / name
            if f.is_file() and not f.is_symlink():
                f.unlink()
        (directory / DUMP_MANIFEST).unlink()
    left = sorted(p.name for p in directory.iterdir())
    if left:
        shown = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
        raise SlimcError(f"--dump-ir '{directory}' already holds files that are not an earlier slimc dump ({shown}); "
                         "dumps of two runs would mix there. Give an empty or new directory.")
