"""Search spaces written in pipeline text.

Any pass option may be written as a distribution instead of a value::

    fuse-bn,prune-channels{ratio=uniform(0.1,0.7) criterion=choice(l2,taylor)},to-onnx,simplify

* ``uniform(a,b)``, ``quniform(a,b,q)``: a number in [a, b] (``quniform`` rounds to a multiple of q)
* ``loguniform(a,b)``: a number in [a, b], uniform in log space. The bounds are the values
  themselves (``loguniform(0.001,0.1)``), not their logarithms as in ``hp.loguniform``.
* ``choice(x,y,...)``: one of the texts x, y, ...
* ``per-group(DIST)`` on ``prune-channels{ratios=...}``: one dimension DIST per prunable channel
  group found by the dependency analysis (NetAdapt/AMC-style per-layer search).

`SearchSpace.parse(text)` reads the distributions (labels like ``prune-channels.ratio``,
``prune-channels.ratios[layer1.0.conv1]``); `space.pipeline_for(point)` writes the concrete,
canonical pipeline text of one point, which `slimc compile --pipeline` reproduces.
"""

from __future__ import annotations

import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import SlimcError, closest
from ..passes.pipeline import PassSpec, Pipeline, parse_pipeline_text
from ..passes.registry import format_value, get_pass, parse_value, split_top_level

__all__ = ["Dimension", "SearchSpace", "DISTRIBUTIONS", "is_distribution", "GroupProvider"]

DISTRIBUTIONS = ("uniform", "quniform", "loguniform", "qloguniform", "choice")
_PER_GROUP = "per-group"
_CALL = re.compile(r"^\s*([a-z][a-z-]*)\s*\((.*)\)\s*$", re.S)

# (pass spec, position of the pass in the pipeline) -> [(group name, size), ...]
GroupProvider = Callable[[PassSpec, int], Sequence[tuple[str, int]]]


def is_distribution(text: str) -> bool:
    m = _CALL.match(text)
    return bool(m) and (m.group(1) in DISTRIBUTIONS or m.group(1) == _PER_GROUP)


@dataclass(frozen=True)
class Dimension:
    """One searched number or choice.

    label:   unique name, e.g. 'prune-channels.ratio' or 'prune-channels.ratios[layer1]'
    kind:    uniform | quniform | loguniform | qloguniform | choice
    args:    the bounds (and q) as floats, or the choice texts
    integer: the option is an int, so drawn numbers are written as integers
    """

    label: str
    kind: str
    args: tuple
    pass_index: int
    option: str
    group: str | None = None
    integer: bool = False

    # -- hyperopt ---------------------------------------------------------------------------
    def hyperopt(self):
        from hyperopt import hp

        if self.kind == "choice":
            return hp.choice(self.label, list(self.args))
        if self.kind == "uniform":
            return hp.uniform(self.label, *self.args)
        if self.kind == "quniform":
            return hp.quniform(self.label, *self.args)
        lo, hi = math.log(self.args[0]), math.log(self.args[1])
        if self.kind == "loguniform":
            return hp.loguniform(self.label, lo, hi)
        return hp.qloguniform(self.label, lo, hi, self.args[2])

    def to_val(self, value) -> Any:
        """Hyperopt's internal value of a drawn value (the index for a choice)."""
        if self.kind == "choice":
            return self.args.index(value)
        return float(value)

    def from_val(self, val) -> Any:
        if self.kind == "choice":
            return self.args[int(val)]
        return float(val)

    def text(self, value) -> str:
        """The option text for a drawn value."""
        if self.kind == "choice":
            return str(value)
        value = float(value)
        if self.integer or (self.kind in ("quniform", "qloguniform") and float(self.args[2]).is_integer()
                            and value.is_integer()):
            return str(int(round(value)))
        return format_value(round(value, 6))

    # -- enumeration ------------------------------------------------------------------------
    def grid_vals(self) -> list | None:
        """Every internal value, for choice and quniform dimensions; None when continuous."""
        if self.kind == "choice":
            return list(range(len(self.args)))
        if self.kind == "quniform":
            lo, hi, q = self.args
            first, last = round(lo / q), round(hi / q)
            return [round(k * q, 10) for k in range(int(first), int(last) + 1)]
        return None

    def default(self) -> Any:
        """A representative value (first choice, middle of a range), used where one value is needed."""
        if self.kind == "choice":
            return self.args[0]
        lo, hi = self.args[0], self.args[1]
        mid = math.sqrt(lo * hi) if self.kind.endswith("loguniform") else (lo + hi) / 2
        if self.kind.startswith("q"):
            q = self.args[2]
            mid = round(mid / q) * q
        return mid

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(self.args)})"
        if self.kind in ("quniform", "qloguniform"):
            return f"{self.kind}({_num(self.args[0])}, {_num(self.args[1])}, q={_num(self.args[2])})"
        return f"{self.kind}({_num(self.args[0])}, {_num(self.args[1])})"


def _num(x: float) -> str:
    return format_value(int(x)) if float(x).is_integer() else format_value(x)


@dataclass
class SearchSpace:
    """The distributions of a pipeline text, and how to turn a drawn point back into pipeline text.

    Example::

        space = SearchSpace.parse("fuse-bn,prune-channels{ratio=uniform(0.1,0.7)},to-onnx")
        space.pipeline_for({"prune-channels.ratio": 0.25})
        # 'fuse-bn,prune-channels{ratio=0.25 criterion=l2 ...},to-onnx{opset=17 ...}'
    """

    text: str
    specs: list[PassSpec]
    dimensions: list[Dimension] = field(default_factory=list)
    groups: dict[tuple[int, str], list[str]] = field(default_factory=dict)  # (pass, option) -> group names

    @classmethod
    def parse(cls, text: str, group_provider: GroupProvider | None = None) -> "SearchSpace":
        specs = parse_pipeline_text(text)
        space = cls(text, specs)
        labels = _pass_labels(specs)
        for index, spec in enumerate(specs):
            where = f"pipeline text, column {spec.position + 1}: "
            pass_cls = get_pass(spec.name, where)
            hints = typing.get_type_hints(pass_cls)
            fields = {f.replace("_", "-"): f for f in hints if not f.startswith("_")}
            for option, raw in spec.options.items():
                if not is_distribution(raw):
                    continue
                if option not in fields:
                    raise SlimcError(f"{where}pass '{spec.name}' has no option '{option}'{closest(option, fields)}.")
                tp = hints[fields[option]]
                label = f"{labels[index]}.{option}"
                kind, inner = _CALL.match(raw).groups()
                if kind == _PER_GROUP:
                    space._add_per_group(index, spec, option, tp, label, inner, group_provider, where)
                else:
                    space.dimensions.append(_dimension(label, kind, inner, tp, index, option, None, where))
        if len({d.label for d in space.dimensions}) != len(space.dimensions):
            raise SlimcError("two searched options got the same label; give each pass its options once.")
        space._check_types()
        return space

    def _add_per_group(self, index, spec, option, tp, label, inner, provider, where) -> None:
        if typing.get_origin(tp) is not dict:
            raise SlimcError(f"{where}per-group(...) needs an option that takes name:value pairs "
                             f"(like prune-channels ratios=...), but '{option}' of '{spec.name}' does not.")
        m = _CALL.match(inner)
        if not m or m.group(1) not in DISTRIBUTIONS:
            raise SlimcError(f"{where}per-group(...) takes one distribution, e.g. per-group(uniform(0,0.8)); "
                             f"got per-group({inner}).")
        if provider is None:
            raise SlimcError(f"{where}per-group(...) needs the model to find its channel groups: "
                             "give the model (and its input shape) when building the space.")
        groups = [name for name, size in provider(spec, index)]
        if not groups:
            raise SlimcError(f"{where}per-group(...): the model has no prunable channel groups.")
        value_type = typing.get_args(tp)[1]
        self.groups[(index, option)] = groups
        for g in groups:
            self.dimensions.append(_dimension(f"{label}[{g}]", m.group(1), m.group(2), value_type, index, option,
                                              g, where))

    def _check_types(self) -> None:
        """Fail now, naming the option, if a bound or a choice is not a valid option value."""
        for d in self.dimensions:
            values = list(d.args) if d.kind == "choice" else [d.args[0], d.args[1]]
            for v in values:
                point = {x.label: x.default() for x in self.dimensions}
                point[d.label] = v
                try:
                    Pipeline.parse(self.pipeline_for(point, canonical=False))
                except SlimcError as exc:
                    raise SlimcError(f"search space: {d.label}={d.describe()}: the value {v} is not valid: "
                                     f"{exc}") from None

    # -- points ------------------------------------------------------------------------------
    def hyperopt(self) -> dict:
        """The Hyperopt space: {label: hp expression}."""
        return {d.label: d.hyperopt() for d in self.dimensions}

    def pipeline_for(self, point: dict, canonical: bool = True) -> str:
        """Concrete pipeline text for a point ({label: value}); canonical = every option filled in."""
        parts = []
        for index, spec in enumerate(self.specs):
            opts = dict(spec.options)
            for d in self.dimensions:
                if d.pass_index != index:
                    continue
                if d.group is None:
                    opts[d.option] = d.text(point[d.label])
            for (pi, option), names in self.groups.items():
                if pi == index:
                    by_label = {d.group: d for d in self.dimensions if d.pass_index == index and d.option == option}
                    opts[option] = ",".join(f"{g}:{by_label[g].text(point[by_label[g].label])}" for g in names)
            text = " ".join(f"{k}={v}" for k, v in opts.items())
            parts.append(f"{spec.name}{{{text}}}" if text else spec.name)
        text = ",".join(parts)
        return Pipeline.parse(text).print() if canonical else text

    def fixed_text(self) -> str:
        """The pipeline with every distribution at its representative value (for analysis, not search)."""
        return self.pipeline_for({d.label: d.default() for d in self.dimensions}, canonical=False)

    def to_vals(self, point: dict) -> dict:
        return {d.label: d.to_val(point[d.label]) for d in self.dimensions}

    def from_vals(self, vals: dict) -> dict:
        return {d.label: d.from_val(vals[d.label]) for d in self.dimensions}

    def grid(self) -> list[dict]:
        """Every point (as internal vals) of a space made only of choice/quniform dimensions."""
        axes = [d.grid_vals() for d in self.dimensions]
        continuous = [d.label for d, a in zip(self.dimensions, axes) if a is None]
        if continuous:
            raise SlimcError(f"--algo grid enumerates choice(...) and quniform(...) only; "
                             f"{', '.join(continuous)} {'is' if len(continuous) == 1 else 'are'} continuous. "
                             "Write quniform(a,b,q) or use --algo tpe.")
        return [dict(zip([d.label for d in self.dimensions], combo)) for combo in itertools.product(*axes)]

    def grid_size(self) -> int:
        return math.prod(len(d.grid_vals() or ()) for d in self.dimensions)

    def lossless_text(self) -> str:
        """The pipeline without its lossy passes, distributions fixed: the dense reference model."""
        keep = [i for i, s in enumerate(self.specs) if get_pass(s.name).lossless]
        fixed = parse_pipeline_text(self.fixed_text())
        parts = []
        for i in keep:
            s = fixed[i]
            text = " ".join(f"{k}={v}" for k, v in s.options.items())
            parts.append(f"{s.name}{{{text}}}" if text else s.name)
        return Pipeline.parse(",".join(parts)).print() if parts else ""

    def describe(self) -> str:
        """A table of the dimensions (what `slimc search --print-space` shows)."""
        if not self.dimensions:
            return "the pipeline has no searched options (write e.g. ratio=uniform(0.1,0.7))"
        width = max(len(d.label) for d in self.dimensions)
        lines = [f"{len(self.dimensions)} dimension(s):"]
        lines += [f"  {d.label.ljust(width)}  {d.describe()}" for d in self.dimensions]
        if all(d.grid_vals() is not None for d in self.dimensions):
            lines.append(f"grid size: {self.grid_size()}")
        return "\n".join(lines)


def _pass_labels(specs: list[PassSpec]) -> list[str]:
    """'prune-channels', or 'prune-channels@2' for the second occurrence of a pass."""
    seen: dict[str, int] = {}
    out = []
    for s in specs:
        seen[s.name] = seen.get(s.name, 0) + 1
        out.append(s.name if seen[s.name] == 1 else f"{s.name}@{seen[s.name]}")
    return out


def _dimension(label, kind, inner, tp, index, option, group, where) -> Dimension:
    args = [a.strip() for a in split_top_level(inner, ",")]
    base = _scalar_type(tp)
    if kind == "choice":
        if not args or any(not a for a in args):
            raise SlimcError(f"{where}{label}: choice(...) needs at least one value, e.g. choice(l2,taylor).")
        for a in args:
            try:
                parse_value(a, tp)
            except ValueError as exc:
                raise SlimcError(f"{where}{label}: choice value '{a}' is not valid: {exc}.") from None
        return Dimension(label, kind, tuple(args), index, option, group)
    want = 3 if kind.startswith("q") else 2
    if len(args) != want:
        form = f"{kind}(low,high,q)" if want == 3 else f"{kind}(low,high)"
        raise SlimcError(f"{where}{label}: {kind} takes {want} numbers: {form}; got {kind}({inner}).")
    try:
        nums = tuple(float(a) for a in args)
    except ValueError:
        raise SlimcError(f"{where}{label}: {kind}({inner}) needs numbers.") from None
    if base not in (int, float):
        raise SlimcError(f"{where}{label}: {kind}(...) draws numbers, but the option takes "
                         f"{_type_name(tp)}; use choice(...).")
    if nums[0] > nums[1]:
        raise SlimcError(f"{where}{label}: low {args[0]} is above high {args[1]}.")
    if kind.endswith("loguniform") and nums[0] <= 0:
        raise SlimcError(f"{where}{label}: {kind} needs positive bounds (they are values, not logarithms).")
    if want == 3 and nums[2] <= 0:
        raise SlimcError(f"{where}{label}: q must be positive.")
    if base is int and kind in ("uniform", "loguniform"):
        raise SlimcError(f"{where}{label}: the option is an integer; use q{kind}(low,high,1) or choice(...).")
    return Dimension(label, kind, nums, index, option, group, integer=base is int)


def _scalar_type(tp):
    origin = typing.get_origin(tp)
    if origin is not None and type(None) in typing.get_args(tp):
        return _scalar_type([a for a in typing.get_args(tp) if a is not type(None)][0])
    return tp


def _type_name(tp) -> str:
    from ..passes.registry import option_type_name

    return option_type_name(tp)
