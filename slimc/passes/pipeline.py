"""Pipeline text in MLIR's shape: `fuse-bn,prune-channels{ratio=0.5 round-to=8},to-onnx,simplify`.

Parsing gives a list of `PassSpec` (name + raw option texts + where they were written),
so tools such as the search can read option texts before they become typed values;
`Pipeline.parse` then builds the typed pass objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import SlimcError
from .registry import Pass, get_pass

__all__ = ["Pipeline", "PassSpec", "PipelineFileText", "parse_pipeline_text", "read_pipeline_file"]


@dataclass(frozen=True)
class PassSpec:
    """One pass as written: its name, its options as texts, and its position in the text."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    position: int = 0


class PipelineFileText(str):
    """Pipeline text joined from a file's lines, which remembers where each character was written,
    so errors name the file's line and column instead of a column of the joined text."""

    path: str
    origins: tuple[tuple[int, int], ...]  # (line, column), 1-based, per character of the text
    lines: tuple[str, ...]

    def __new__(cls, text: str, path: str, origins, lines):
        obj = super().__new__(cls, text)
        obj.path, obj.origins, obj.lines = path, tuple(origins), tuple(lines)
        return obj

    def locate(self, pos: int) -> tuple[str, str, int]:
        """(where, the source line, 0-based column in it) of character `pos`."""
        if not self.origins:
            return f"{self.path}", "", 0
        line, col = self.origins[min(pos, len(self.origins) - 1)]
        if pos >= len(self.origins):  # the end of the text: just after the last character
            col += 1
        return f"{self.path}, line {line}, column {col}", self.lines[line - 1], col - 1


def _where(text: str, pos: int) -> str:
    if isinstance(text, PipelineFileText):
        return text.locate(pos)[0]
    return f"pipeline text, column {pos + 1}"


def _error(text: str, pos: int, message: str) -> SlimcError:
    if isinstance(text, PipelineFileText):
        where, line, col = text.locate(pos)
        return SlimcError(f"{where}: {message}\n  {line}\n  {' ' * col}^")
    caret = " " * pos + "^"
    return SlimcError(f"pipeline text, column {pos + 1}: {message}\n  {text}\n  {caret}")


def parse_pipeline_text(text: str) -> list[PassSpec]:
    """Parse pipeline text into pass specs; raise `SlimcError` naming the column on bad syntax."""
    specs: list[PassSpec] = []
    i, n = 0, len(text)

    def skip_space(j: int) -> int:
        while j < n and text[j].isspace():
            j += 1
        return j

    def read_name(j: int, what: str) -> tuple[str, int]:
        start = j
        while j < n and (text[j].isalnum() or text[j] in "-_."):
            j += 1
        if j == start:
            got = repr(text[j]) if j < n else "the end of the text"
            raise _error(text, j, f"expected {what}, found {got}")
        return text[start:j], j

    i = skip_space(i)
    if i == n:
        raise _error(text, 0, "the pipeline is empty; write passes separated by commas, e.g. 'fuse-bn,to-onnx,simplify'")
    while True:
        i = skip_space(i)
        start = i
        name, i = read_name(i, "a pass name")
        options: dict[str, str] = {}
        i = skip_space(i)
        if i < n and text[i] == "{":
            i += 1
            while True:
                i = skip_space(i)
                if i < n and text[i] == "}":
                    i += 1
                    break
                if i >= n:
                    raise _error(text, i, f"'{{' of pass '{name}' is never closed with '}}'")
                key_pos = i
                key, i = read_name(i, "an option name or '}'")
                if i >= n or text[i] != "=":
                    raise _error(text, i, f"expected '=' after option '{key}'")
                i += 1
                value, i = _read_value(text, i)
                if key in options:
                    raise _error(text, key_pos, f"option '{key}' is given twice")
                options[key] = value
        specs.append(PassSpec(name, options, start))
        i = skip_space(i)
        if i == n:
            return specs
        if text[i] != ",":
            raise _error(text, i, f"expected ',' between passes, found {text[i]!r}")
        i += 1


def _read_value(text: str, i: int) -> tuple[str, int]:
    """A value runs to whitespace or the closing '}' outside brackets; brackets may nest."""
    start, depth, n = i, 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise _error(text, i, f"unbalanced {ch!r} in option value")
        elif depth == 0 and (ch.isspace() or ch == "}"):
            break
        i += 1
    if depth > 0:
        raise _error(text, start, "an option value opens a bracket that is never closed")
    if i == start:
        raise _error(text, i, "missing option value after '='")
    return text[start:i], i


def read_pipeline_file(path: str | Path) -> PipelineFileText:
    """Pipeline scripts: one pass per line (or several, comma-separated); '#' starts a comment.

    The result is the joined pipeline text; parse errors in it name the file's line and column.
    """
    from ..ir.files import read_text_bounded

    lines = read_text_bounded(path, "pipeline file").splitlines()  # bounded: /dev/zero fails fast
    # Lines are passes, except inside a pass's '{...}': long option lists may span lines.
    text, origins, depth = "", [], 0
    for number, line in enumerate(lines, start=1):
        code = line.split("#", 1)[0]
        kept = code.strip().rstrip(",")
        if not kept:
            continue
        first = len(code) - len(code.lstrip())
        if text:
            text += "," if depth == 0 else " "
            origins.append(origins[-1])
        text += kept
        origins.extend((number, first + 1 + k) for k in range(len(kept)))
        depth += kept.count("{") - kept.count("}")
    return PipelineFileText(text, str(path), origins, lines)


class Pipeline:
    """An ordered list of passes.

    Example::

        Pipeline.parse("fuse-bn,simplify").print()
        # 'fuse-bn,simplify{check-n=0 skip-fuse-bn=false}'
        Pipeline([FuseBN(), Simplify()]).print()   # same text
        Pipeline.parse("fuse-bn,simplify").lowered("fx").print()
        # 'fuse-bn,to-onnx{opset=17 dynamic-batch=auto exporter=torchscript},simplify{...}'
    """

    def __init__(self, passes: Iterable[Pass]):
        self.passes: list[Pass] = list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise SlimcError(f"a Pipeline holds pass objects, got {type(p).__name__}: {p!r}")

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        passes = []
        for spec in parse_pipeline_text(text):
            where = f"{_where(text, spec.position)}: "
            passes.append(get_pass(spec.name, where).from_options(spec.options, where))
        return cls(passes)

    @classmethod
    def coerce(cls, pipeline: "Pipeline | str | Iterable[Pass]") -> "Pipeline":
        if isinstance(pipeline, Pipeline):
            return pipeline
        if isinstance(pipeline, str):
            return cls.parse(pipeline)
        return cls(pipeline)

    def print(self) -> str:
        return ",".join(p.print() for p in self.passes)

    def lowered(self, start_level: str, end_level: str | None = None) -> "Pipeline":
        """Insert `to-onnx` where an ONNX pass follows an FX-level program (and at the end when
        `end_level` is 'onnx'); reject FX passes on an ONNX program."""
        from .lower import ToOnnx

        out, level = [], start_level
        for p in self.passes:
            if p.level == "onnx" and level == "fx" and not isinstance(p, ToOnnx):
                out.append(ToOnnx())
                level = "onnx"
            if p.level == "fx" and level == "onnx":
                raise SlimcError(
                    f"pass '{p.name}' works on the torch.fx level, but the program is already ONNX "
                    "at that point. Put FX-level passes (fuse-bn, ...) before 'to-onnx' and the ONNX ones, "
                    "or give a PyTorch model instead of an .onnx file."
                )
            out.append(p)
            level = p.output_level
        if end_level == "onnx" and level == "fx":
            out.append(ToOnnx())
        return Pipeline(out)

    def __iter__(self):
        return iter(self.passes)

    def __len__(self):
        return len(self.passes)

    def __eq__(self, other):
        return isinstance(other, Pipeline) and self.passes == other.passes

    def __repr__(self):
        return f"Pipeline({self.print()!r})"
