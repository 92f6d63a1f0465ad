"""Pass base class and the registry that maps pipeline names to pass classes.

A pass is a frozen dataclass: its fields are its options, its class variables say
its name, the IR level it works on and whether it preserves the model's function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import SlimcError, closest
from ..options import build_options, format_value, hash_fields, option_type_name, options_of, parse_value, \
    print_options, split_top_level

__all__ = ["Pass", "PassResult", "register_pass", "get_pass", "registered_passes", "option_type_name",
           "parse_value", "format_value", "split_top_level"]


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
        return options_of(self)

    def print(self) -> str:
        """Canonical pipeline text of this pass with every option filled in."""
        opts = print_options(self)
        return f"{self.name}{{{opts}}}" if opts else self.name

    @classmethod
    def from_options(cls, raw: dict[str, str], where: str = "") -> "Pass":
        """Build the pass from option texts, converting each to its declared type."""
        return build_options(cls, raw, f"pass '{cls.name}'", where,
                             listing="`slimc passes` lists every pass with its options.")


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to pipeline text under `cls.name`."""
    if not cls.name or cls.level not in ("fx", "onnx"):
        raise TypeError(f"{cls.__name__} needs a name and a level of 'fx' or 'onnx'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"pass name '{cls.name}' is registered twice")
    # Options may be dicts (per-layer ratios): the hash covers every field, whatever its type, so a new
    # option is never left out of it (the dataclass-generated hash fails on dicts).
    cls.__hash__ = hash_fields
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
