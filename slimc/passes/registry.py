"""Pass base class and the registry that maps pipeline names to pass classes.

A pass is a frozen dataclass: its fields are its options, its class variables say
its name, the IR level it works on and whether it preserves the model's function.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import SlimcError, closest

__all__ = ["Pass", "PassResult", "register_pass", "get_pass", "registered_passes", "option_type_name"]


@dataclass
class PassResult:
    """What a pass returns: the new program, whether anything changed, and details for the report."""

    program: Any
    changed: bool
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Pass:
    """Base of every pass. Subclasses set `name`, `level`, `lossless` and implement `apply`.

    Example::

        @register_pass
        @dataclass(frozen=True)
        class Simplify(Pass):
            name: ClassVar[str] = "simplify"
            level: ClassVar[str] = "onnx"
            lossless: ClassVar[bool] = True
            check_n: int = 1

            def apply(self, program): ...
    """

    name: ClassVar[str] = ""
    level: ClassVar[str] = ""  # "fx" or "onnx"; a lowering pass has "fx" in and "onnx" out
    produces: ClassVar[str | None] = None  # the level after the pass when it differs (lowering)
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def apply(self, program) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def output_level(self) -> str:
        return self.produces or self.level

    def options(self) -> dict[str, Any]:
        """Option values keyed by their pipeline (kebab-case) names."""
        return {_kebab(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def print(self) -> str:
        """Canonical pipeline text of this pass with every option filled in."""
        opts = " ".join(f"{k}={format_value(v)}" for k, v in self.options().items())
        return f"{self.name}{{{opts}}}" if opts else self.name

    @classmethod
    def from_options(cls, raw: dict[str, str], where: str = "") -> "Pass":
        """Build the pass from option texts, converting each to its declared type."""
        hints = typing.get_type_hints(cls)
        fields = {_kebab(f.name): f for f in dataclasses.fields(cls)}
        values = {}
        for key, text in raw.items():
            f = fields.get(key)
            if f is None:
                known = ", ".join(fields) or "none"
                raise SlimcError(
                    f"{where}pass '{cls.name}' has no option '{key}'{closest(key, fields)}. "
                    f"Its options are: {known}. `slimc passes` lists every pass with its options."
                )
            try:
                values[f.name] = parse_value(text, hints[f.name])
            except ValueError as exc:
                raise SlimcError(
                    f"{where}option '{key}' of pass '{cls.name}' expects {option_type_name(hints[f.name])}, "
                    f"got '{text}': {exc}."
                ) from None
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise SlimcError(f"{where}pass '{cls.name}': {exc}") from None


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to pipeline text under `cls.name`."""
    if not cls.name or cls.level not in ("fx", "onnx"):
        raise TypeError(f"{cls.__name__} needs a name and a level of 'fx' or 'onnx'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"pass name '{cls.name}' is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str, where: str = "") -> type[Pass]:
    _load_builtin_passes()
    if name not in _REGISTRY:
        raise SlimcError(
            f"{where}unknown pass '{name}'{closest(name, _REGISTRY)}. "
            f"Known passes: {', '.join(sorted(_REGISTRY))}."
        )
    return _REGISTRY[name]


def registered_passes() -> dict[str, type[Pass]]:
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def _load_builtin_passes() -> None:
    from . import builtin  # noqa: F401  (importing registers them)


# ---- option values -----------------------------------------------------------------

def _kebab(name: str) -> str:
    return name.replace("_", "-")


def option_type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(option_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " or none"
    if origin is tuple:
        return f"comma-separated list of: {option_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"comma-separated list of name:value, value: {option_type_name(v)}"
    return {bool: "true|false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def parse_value(text: str, tp):
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ValueError(f"not one of {', '.join(map(str, choices))}{closest(text, choices)}")
        return text
    if origin in (typing.Union, types.UnionType):
        if text in ("none", ""):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return parse_value(text, inner)
    if origin in (tuple, dict) and text.strip() == "[]":
        return () if origin is tuple else {}  # how format_value writes an empty list (an empty value would not parse)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return tuple(parse_value(t.strip(), inner) for t in split_top_level(text, ",") if t.strip())
    if origin is dict:
        _, vtype = typing.get_args(tp)
        out = {}
        for item in split_top_level(text, ","):
            if not item.strip():
                continue
            key, sep, val = item.rpartition(":")
            if not sep:
                raise ValueError(f"'{item}' is not name:value")
            out[key.strip()] = parse_value(val.strip(), vtype)
        return out
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError("not true or false")
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    return text


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (tuple, dict)) and not value:
        return "[]"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{format_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return repr(value)
    return str(value)


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside (), [] and {} so values like uniform(0.1,0.8) stay whole."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts
