"""Typed options: frozen dataclasses whose fields are what a user can set, read from text or Python values.

Pass options (pipeline text `prune-channels{ratio=0.5 round-to=8}`) and backend options
(`--backend-option threads=2`, `backend_options={"threads": 2}`) both go through here, so they share
one spelling (kebab-case names; snake_case is accepted from Python), one parser per value type (one
boolean parser: true/false/yes/no/on/off/1/0), the same errors (with the nearest known name) and the
same listing (`describe_options`).

A field may carry `metadata={"parse": fn, "type": "text"}`: `fn(value)` reads a special spelling of a
string (e.g. a batch range `1:8:32`), and `type` is how listings name it. Further checks and
normalisation go in the dataclass's `__post_init__`, raising ValueError with the reason.

Example::

    @dataclass(frozen=True)
    class RuntimeOptions:
        threads: int = 0
        optimization: Literal["basic", "all"] = "all"

    build_options(RuntimeOptions, {"threads": "2"}, "backend 'x'")   # RuntimeOptions(threads=2, ...)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping

from .errors import SlimcError, closest

__all__ = ["kebab", "option_type_name", "parse_value", "coerce_value", "format_value", "split_top_level",
           "option_fields", "build_options", "options_of", "print_options", "describe_options", "hash_fields"]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def kebab(name: str) -> str:
    return name.replace("_", "-")


def option_type_name(tp) -> str:
    """How listings and errors name a type: 'an integer', 'one of a|b', 'comma-separated list of: ...'."""
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


def _literal(value, choices) -> Any:
    if value in choices:
        return value
    # Case does not matter (hint=latency, flavor=RTX); the canonical spelling is kept.
    folded = {str(c).lower(): c for c in choices}
    key = str(value).strip().lower()
    if key in folded:
        return folded[key]
    raise ValueError(f"not one of {', '.join(map(str, choices))}{closest(str(value), [str(c) for c in choices])}")


def parse_value(text: str, tp):
    """The value of type `tp` written as `text` (pipeline-text spelling); ValueError says why not."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _literal(text, typing.get_args(tp))
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
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("not true or false")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError("") from None  # the message already says what was expected
    if tp is str and len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]  # a quoted string: how format_value writes an empty one
    return text


def coerce_value(value, tp):
    """`value` as type `tp`: text is parsed like pipeline text, Python values are checked (a list
    becomes a tuple, an int a float where a number is wanted). ValueError says why not."""
    if isinstance(value, str):
        return parse_value(value, tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _literal(value, typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return coerce_value(value, inner)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"not a list: {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(coerce_value(v, inner) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"not a mapping of name to value: {value!r}")
        _, vtype = typing.get_args(tp)
        return {str(k): coerce_value(v, vtype) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # the command line reads digits as numbers
            return bool(value)
        raise ValueError("not true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"not an integer: {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"not a number: {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # the command line reads digits as numbers: device=0 means "0"
        if hasattr(value, "__fspath__"):
            return str(value)
        raise ValueError(f"not a string: {value!r}")
    return value


def format_value(value) -> str:
    """The pipeline-text spelling of an option value; `parse_value` reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (tuple, list, dict)) and not value:
        return "[]"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{format_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return repr(value)
    if value == "":
        return '""'  # an empty value after '=' would not parse
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


def option_fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    """{kebab-case name: (field, resolved type)} of an options dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {kebab(f.name): (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _type_name(f: dataclasses.Field, tp) -> str:
    return f.metadata.get("type") or option_type_name(tp)


def build_options(cls, raw: Mapping[str, Any] | None, owner: str, where: str = "", listing: str = "",
                  with_types: bool = False):
    """An instance of the options dataclass `cls` from {name: text or value}; names in kebab- or snake_case.

    owner:   what the options belong to in messages, e.g. "pass 'fuse'" or "backend 'onnxruntime'"
    where:   a prefix locating the text (pipeline position), may be empty
    listing: a sentence naming the command that lists the options
    with_types: name each option's type and default where an unknown name is reported
    Every problem is a SlimcError naming the option, what it expects and the nearest known name.
    """
    fields = option_fields(cls)
    values = {}
    for key, value in (raw or {}).items():
        name = kebab(str(key).strip())
        if name not in fields:
            known = ", ".join(f"{n} ({_type_name(f, tp)}, default {format_value(_default(f))})" if with_types
                              else n for n, (f, tp) in fields.items()) or "none"
            raise SlimcError(f"{where}{owner} has no option '{key}'{closest(name, fields)}. "
                             f"Its options are: {known}.{' ' + listing if listing else ''}")
        f, tp = fields[name]
        try:
            special = f.metadata.get("parse")
            values[f.name] = special(value) if special and isinstance(value, str) else coerce_value(value, tp)
        except ValueError as exc:
            got = value if isinstance(value, str) else format_value(value)
            why = f": {exc}" if str(exc) else ""
            raise SlimcError(f"{where}option '{name}' of {owner} expects {_type_name(f, tp)}, got '{got}'{why}.") from None
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise SlimcError(f"{where}{owner}: {exc}") from None


def options_of(obj) -> dict[str, Any]:
    """Option values keyed by their kebab-case names."""
    return {kebab(f.name): getattr(obj, f.name) for f in dataclasses.fields(obj)}


def print_options(obj) -> str:
    """`name=value name=value`, every option filled in, in the spelling `build_options` reads."""
    return " ".join(f"{k}={format_value(v)}" for k, v in options_of(obj).items())


def describe_options(cls) -> list[dict]:
    """[{name, type, default}] of an options dataclass, for listings such as `slimc passes`."""
    out = []
    for name, (f, tp) in option_fields(cls).items():
        out.append({"name": name, "type": _type_name(f, tp), "default": format_value(_default(f))})
    return out


def _hashable(value):
    if isinstance(value, dict):
        return frozenset((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, set):
        return frozenset(_hashable(v) for v in value)
    return value


def hash_fields(obj) -> int:
    """A hash over every dataclass field (dicts and lists included), consistent with the generated __eq__."""
    return hash((type(obj),) + tuple(_hashable(getattr(obj, f.name)) for f in dataclasses.fields(obj)))
