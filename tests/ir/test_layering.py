"""Layers point one way: `slimc.ir` is below passes, backends, search and the CLI, and imports none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import slimc

ABOVE_IR = ("backend", "passes", "cli", "search", "compiler", "compile_options", "frontend", "finetune", "profile",
            "report", "explore")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file of the slimc.ir package, lazy ones included."""
    package = ["slimc", "ir"]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            if not node.module:  # `from .. import backend`
                out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def test_ir_imports_nothing_from_the_layers_above_it():
    ir_dir = Path(slimc.__file__).parent / "ir"
    bad = [f"{path.name}:{line} imports {module}"
           for path in sorted(ir_dir.glob("*.py")) for line, module in _imports(path)
           if any(module == f"slimc.{room}" or module.startswith(f"slimc.{room}.") for room in ABOVE_IR)]
    assert not bad, "slimc.ir must not import from the layers above it: " + "; ".join(bad)


def test_the_walk_sees_relative_and_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..backend.onnxruntime import session_for\n    from . import stats\n")
    assert (2, "slimc.backend.onnxruntime") in _imports(probe) and (3, "slimc.ir.stats") in _imports(probe)
