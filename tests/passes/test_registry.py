"""The pass registry: registration rules, lookup errors, option names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
