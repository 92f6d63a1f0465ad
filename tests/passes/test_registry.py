"""The pass registry: registration rules, lookup errors, option names."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

import slimc
from slimc import SlimcError
from slimc.passes import registry
from slimc.passes.registry import PassResult, get_pass, register_pass
from support import temporary_pass


@dataclass(frozen=True)
class _Named(slimc.Pass):
    name: ClassVar[str] = "test-registry-named"
    level: ClassVar[str] = "onnx"
    keep_ratio: float = 0.5
    round_to: int = 8

    def apply(self, program):
        return PassResult(program, False)


def test_builtin_passes_are_registered():
    passes = slimc.registered_passes()
    assert {"fuse-bn", "to-onnx", "simplify", "fold-constants", "eliminate-dead", "dedupe-weights"} <= set(passes)
    assert list(passes) == sorted(passes)
    for name, cls in passes.items():
        assert cls.name == name and cls.level in ("fx", "onnx")


def test_register_and_remove():
    with temporary_pass(_Named):
        assert get_pass("test-registry-named") is _Named
        assert register_pass(_Named) is _Named  # registering the same class again is harmless
        p = _Named(round_to=4)
        assert p.options() == {"keep-ratio": 0.5, "round-to": 4}
        assert p.print() == "test-registry-named{keep-ratio=0.5 round-to=4}"

        @dataclass(frozen=True)
        class Other(_Named):
            pass

        with pytest.raises(TypeError, match="registered twice"):
            register_pass(Other)
    assert "test-registry-named" not in registry._REGISTRY


def test_register_needs_a_name_and_level():
    @dataclass(frozen=True)
    class NoName(slimc.Pass):
        level: ClassVar[str] = "fx"

    @dataclass(frozen=True)
    class BadLevel(slimc.Pass):
        name: ClassVar[str] = "test-registry-bad-level"
        level: ClassVar[str] = "tensorrt"

    with pytest.raises(TypeError, match="needs a name"):
        register_pass(NoName)
    with pytest.raises(TypeError, match="level of 'fx' or 'onnx'"):
        register_pass(BadLevel)
    assert "test-registry-bad-level" not in registry._REGISTRY


def test_unknown_pass_lookup():
    with pytest.raises(SlimcError) as e:
        get_pass("dedupe-weight")
    assert "unknown pass 'dedupe-weight'" in str(e.value) and "did you mean 'dedupe-weights'" in str(e.value)


# ---- every registered pass: print() parses back, hash() covers every option ------------------------------

def _candidates(tp, default) -> list:
    """Values of type `tp` other than `default`, most ordinary first (passes may reject some)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        out = [c for c in typing.get_args(tp) if c != default]
    elif origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        out = _candidates(inner, default) + ([None] if default is not None else [])
    elif origin is tuple:
        inner = typing.get_args(tp)[0]
        out = [("layer1.0", "fc"), ("conv-bn", "gelu")] if inner is str else [(8, 16), (1, 2)]
    elif origin is dict:
        value = typing.get_args(tp)[1]
        out = [{"layer1.0": value(0.25) if value is float else value(2), "fc": value(0.5) if value is float else 3}]
    elif tp is bool:
        out = [not default]
    elif tp is int:
        out = [(default or 0) + 1, (default or 0) + 2, 1, 2]
    elif tp is float:
        out = [0.25, 0.125, (default or 0) * 2 + 1]
    elif tp is str:
        out = ["data.pt", "cpu", "layer1.0"]
    else:
        raise AssertionError(f"no candidate values for option type {tp}: extend _candidates")
    return [v for v in out if v != default]


def _one_change_each(cls):
    """(option name, a pass with only that option changed from its default), for every option of `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for value in _candidates(hints[f.name], default):
            try:
                yield f.name, cls(**{f.name: value})
                break
            except (ValueError, TypeError):
                continue
        else:
            raise AssertionError(f"{cls.name}: no accepted non-default value for option '{f.name}'; "
                                 "extend _candidates")


@pytest.mark.parametrize("name", sorted(slimc.registered_passes()))
def test_every_pass_round_trips_through_pipeline_text(name):
    cls = slimc.registered_passes()[name]
    default = cls()
    assert slimc.Pipeline.parse(default.print()).passes == [default], default.print()
    for option, changed in _one_change_each(cls):
        assert changed != default
        text = changed.print()
        assert slimc.Pipeline.parse(text).passes == [changed], f"{option}: {text}"


@pytest.mark.parametrize("name", sorted(slimc.registered_passes()))
def test_every_pass_hashes_over_every_option(name):
    cls = slimc.registered_passes()[name]
    default = cls()
    assert hash(default) == hash(cls())
    for option, changed in _one_change_each(cls):
        assert hash(changed) != hash(default), f"{name}: option '{option}' is left out of the hash"
        assert {default: 0, changed: 1}[changed] == 1


@dataclass(frozen=True)
class _WithDict(slimc.Pass):
    name: ClassVar[str] = "test-registry-with-dict"
    level: ClassVar[str] = "onnx"
    per_layer: dict[str, float] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    def apply(self, program):
        return PassResult(program, False)


def test_a_new_pass_with_a_dict_option_hashes_without_writing_hash():
    with temporary_pass(_WithDict):
        p = slimc.Pipeline.parse("test-registry-with-dict{per-layer=fc:0.5,conv:0.25 names=a,b}").passes[0]
        same = _WithDict(per_layer={"conv": 0.25, "fc": 0.5}, names=("a", "b"))  # dict order does not matter
        assert p == same and hash(p) == hash(same)
        assert hash(p) != hash(_WithDict(per_layer={"fc": 0.5}, names=("a", "b")))
        assert len({p, same, _WithDict()}) == 2


def test_empty_string_option_prints_as_something_that_parses():
    finetune = slimc.registered_passes()["finetune"]()
    assert finetune.data == "" and 'data=""' in finetune.print()
    assert slimc.Pipeline.parse(finetune.print()).passes[0].data == ""
