"""Pipeline text: parse/print round trip, pipeline files, to-onnx insertion, and errors on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import pytest

import slimc
from slimc import Pipeline, SlimcError
from slimc.passes.fx.fuse_bn import FuseBN
from slimc.passes.lower import ToOnnx
from slimc.passes.onnx.dedupe_weights import DedupeWeights
from slimc.passes.onnx.eliminate_dead import EliminateDead
from slimc.passes.onnx.fold_constants import FoldConstants
from slimc.passes.onnx.simplify import Simplify
from slimc.passes.pipeline import parse_pipeline_text, read_pipeline_file
from slimc.passes.registry import PassResult
from support import temporary_pass


def names(pipeline) -> list[str]:
    return [p.name for p in pipeline]


# ---- round trip ----------------------------------------------------------------------

ROUND_TRIP = [
    "fuse-bn",
    "fuse-bn,to-onnx,simplify",
    "simplify{check-n=3}",
    "  fuse-bn ,\tto-onnx { opset=18   exporter=dynamo } ,simplify{skip-fuse-bn=true}  ",
    "to-onnx{dynamic-batch=true},fold-constants{fold-shapes=false size-threshold-mb=1.5},"
    "dedupe-weights{min-size=16},eliminate-dead",
    "fuse-bn{}",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_parse_print_round_trip_fills_every_option(text):
    pipeline = Pipeline.parse(text)
    printed = pipeline.print()
    segments = [s.strip() for s in printed.split("},")]
    assert len(pipeline) == len(parse_pipeline_text(printed))
    for p, spec in zip(pipeline, parse_pipeline_text(printed)):
        assert spec.name == p.name
        assert set(spec.options) == set(p.options()), f"{p.name}: not every option printed in {segments}"
    again = Pipeline.parse(printed)
    assert again == pipeline
    assert again.print() == printed


def test_parse_gives_typed_option_values():
    p = Pipeline.parse("to-onnx{opset=18 dynamic-batch=true exporter=dynamo},"
                       "fold-constants{fold-shapes=off size-threshold-mb=1.5},dedupe-weights{min-size=16}")
    assert p.passes == [ToOnnx(opset=18, dynamic_batch="true", exporter="dynamo"),
                        FoldConstants(fold_shapes=False, size_threshold_mb=1.5), DedupeWeights(min_size=16)]
    assert isinstance(p.passes[0].opset, int) and isinstance(p.passes[1].size_threshold_mb, float)


def test_pipeline_from_pass_objects_prints_canonical_text():
    text = Pipeline([FuseBN(), Simplify()]).print()
    check_n = Simplify().check_n
    assert text == f"fuse-bn,simplify{{check-n={check_n} skip-fuse-bn=false}}"
    assert Pipeline.parse(text) == Pipeline([FuseBN(), Simplify()])
    assert Pipeline.parse("fuse-bn,simplify") == Pipeline([FuseBN(), Simplify()])
    assert Pipeline.parse("simplify{check-n=2}") != Pipeline([Simplify()])


def test_pipeline_rejects_non_passes():
    with pytest.raises(SlimcError, match="pass objects"):
        Pipeline([FuseBN(), "simplify"])


def test_coerce_accepts_text_pipelines_and_pass_lists():
    p = Pipeline.parse("fuse-bn")
    assert Pipeline.coerce(p) is p
    assert Pipeline.coerce("fuse-bn,simplify") == Pipeline([FuseBN(), Simplify()])
    assert Pipeline.coerce([FuseBN()]) == p


@dataclass(frozen=True)
class _AllTypes(slimc.Pass):
    """Test-only pass with every option type the pipeline text supports."""

    name: ClassVar[str] = "test-pipeline-all-option-types"
    level: ClassVar[str] = "onnx"

    flag: bool = False
    count: int = 3
    ratio: float = 0.5
    label: str = "abc"
    mode: Literal["fast", "slow"] = "fast"
    limit: Optional[int] = None
    sizes: tuple[int, ...] = (1, 2)
    per_layer: dict[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()

    def apply(self, program):
        return PassResult(program, False)


def test_every_option_type_round_trips():
    with temporary_pass(_AllTypes):
        text = ("test-pipeline-all-option-types{flag=yes count=7 ratio=0.25 label=x.y mode=slow limit=4 "
                "sizes=8,16,32 per-layer=layer1.0:0.5,fc:0.75}")
        p = Pipeline.parse(text).passes[0]
        assert p == _AllTypes(flag=True, count=7, ratio=0.25, label="x.y", mode="slow", limit=4,
                              sizes=(8, 16, 32), per_layer={"layer1.0": 0.5, "fc": 0.75})
        printed = Pipeline([p]).print()
        assert Pipeline.parse(printed).passes[0] == p
        default = Pipeline.parse("test-pipeline-all-option-types").passes[0]
        assert default == _AllTypes()
        assert "limit=none" in default.print()
        assert "per-layer=[] exclude=[]" in default.print()  # empty lists print as something that parses
        with_empty = Pipeline.parse("test-pipeline-all-option-types{sizes=[] exclude=a,b}").passes[0]
        assert with_empty.sizes == () and with_empty.exclude == ("a", "b")
        assert Pipeline.parse(default.print()).passes[0] == default
        with pytest.raises(SlimcError, match=r"option 'sizes' .* expects comma-separated list of: an integer"):
            Pipeline.parse("test-pipeline-all-option-types{sizes=1,x}")
        with pytest.raises(SlimcError, match="name:value"):
            Pipeline.parse("test-pipeline-all-option-types{per-layer=fc}")
    assert "test-pipeline-all-option-types" not in slimc.registered_passes()


def test_parse_keeps_raw_option_texts_and_positions():
    specs = parse_pipeline_text("fuse-bn, prune-x{ratio=uniform(0.2,0.8) round-to=8},simplify")
    assert [(s.name, s.position) for s in specs] == [("fuse-bn", 0), ("prune-x", 9), ("simplify", 52)]
    assert specs[1].options == {"ratio": "uniform(0.2,0.8)", "round-to": "8"}


# ---- pipeline files ------------------------------------------------------------------

def test_pipeline_file_with_comments(tmp_path):
    f = tmp_path / "pipe.txt"
    f.write_text(
        "# deployment pipeline for the demo\n"
        "fuse-bn            # fold BN first\n"
        "\n"
        "   # a comment line with leading space\n"
        "to-onnx{opset=18},\n"
        "simplify{check-n=2}, dedupe-weights   # two on one line\n"
    )
    text = read_pipeline_file(f)
    assert Pipeline.parse(text) == Pipeline([FuseBN(), ToOnnx(opset=18), Simplify(check_n=2), DedupeWeights()])


def test_pipeline_file_with_options_over_several_lines(tmp_path):
    f = tmp_path / "pipe.txt"
    f.write_text(
        "fuse-bn\n"
        "fold-constants{\n"
        "    fold-shapes=false        # keep Shape ops\n"
        "    size-threshold-mb=2.5\n"
        "}\n"
        "simplify{check-n=2\n"
        "         skip-fuse-bn=true}\n"
        "eliminate-dead\n"
    )
    assert Pipeline.parse(read_pipeline_file(f)) == Pipeline([
        FuseBN(), FoldConstants(fold_shapes=False, size_threshold_mb=2.5), Simplify(check_n=2, skip_fuse_bn=True),
        EliminateDead()])


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(SlimcError, match="cannot read pipeline file") as e:
        read_pipeline_file(tmp_path / "nope.txt")
    assert "nope.txt" in str(e.value)


# ---- automatic to-onnx ---------------------------------------------------------------

def test_lowered_inserts_to_onnx_between_fx_and_onnx_passes():
    lowered = Pipeline.parse("fuse-bn,simplify,dedupe-weights").lowered("fx")
    assert names(lowered) == ["fuse-bn", "to-onnx", "simplify", "dedupe-weights"]
    assert ",to-onnx{" in lowered.print()  # the printed pipeline shows the inserted pass


def test_lowered_keeps_explicit_to_onnx_and_its_options():
    lowered = Pipeline.parse("fuse-bn,to-onnx{opset=18},simplify").lowered("fx")
    assert names(lowered) == ["fuse-bn", "to-onnx", "simplify"]
    assert lowered.passes[1] == ToOnnx(opset=18)


def test_lowered_to_onnx_at_the_end_only_when_asked():
    assert names(Pipeline.parse("fuse-bn").lowered("fx", "onnx")) == ["fuse-bn", "to-onnx"]
    assert names(Pipeline.parse("fuse-bn").lowered("fx", "fx")) == ["fuse-bn"]
    assert names(Pipeline.parse("fuse-bn").lowered("fx")) == ["fuse-bn"]
    assert names(Pipeline.parse("simplify").lowered("onnx", "onnx")) == ["simplify"]


def test_lowered_does_not_change_the_original_pipeline():
    p = Pipeline.parse("fuse-bn,simplify")
    p.lowered("fx", "onnx")
    assert names(p) == ["fuse-bn", "simplify"]


@pytest.mark.parametrize("text,start", [("simplify,fuse-bn", "fx"), ("fuse-bn", "onnx"),
                                        ("to-onnx,simplify,fuse-bn", "fx")])
def test_fx_pass_after_onnx_is_rejected(text, start):
    with pytest.raises(SlimcError) as e:
        Pipeline.parse(text).lowered(start)
    msg = str(e.value)
    assert "'fuse-bn'" in msg and "torch.fx" in msg and "already ONNX" in msg


# ---- bad input -----------------------------------------------------------------------

def _error(text: str) -> str:
    with pytest.raises(SlimcError) as e:
        Pipeline.parse(text)
    return str(e.value)


def test_unknown_pass_names_column_and_nearest():
    msg = _error("fuse-bn,simplfy")
    assert "column 9" in msg
    assert "unknown pass 'simplfy'" in msg
    assert "did you mean 'simplify'" in msg
    assert "Known passes:" in msg and "dedupe-weights" in msg


def test_unknown_pass_without_near_match_lists_known_passes():
    msg = _error("zzzzzz")
    assert "unknown pass 'zzzzzz'" in msg and "did you mean" not in msg and "fuse-bn" in msg


def test_unknown_option_names_pass_option_and_nearest():
    msg = _error("fuse-bn,simplify{chek-n=2}")
    assert "column 9" in msg
    assert "pass 'simplify' has no option 'chek-n'" in msg
    assert "did you mean 'check-n'" in msg
    assert "check-n" in msg and "skip-fuse-bn" in msg  # lists the options it has


def test_option_on_a_pass_without_options():
    msg = _error("fuse-bn{ratio=0.5}")
    assert "has no option 'ratio'" in msg and "none" in msg


@pytest.mark.parametrize("text,words", [
    ("simplify{check-n=two}", ["option 'check-n'", "'simplify'", "expects an integer", "'two'"]),
    ("fold-constants{size-threshold-mb=big}", ["size-threshold-mb", "expects a number", "'big'"]),
    ("fold-constants{fold-shapes=maybe}", ["fold-shapes", "true|false", "'maybe'"]),
    ("to-onnx{exporter=dynamoo}", ["exporter", "one of torchscript|dynamo", "did you mean 'dynamo'"]),
    ("to-onnx{opset=17.5}", ["opset", "expects an integer", "'17.5'"]),
])
def test_wrong_option_type(text, words):
    msg = _error(text)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


@pytest.mark.parametrize("text,column,words", [
    ("simplify{check-n=2", 19, ["'{' of pass 'simplify' is never closed"]),
    ("simplify{check-n 2}", 17, ["expected '=' after option 'check-n'"]),
    ("simplify{check-n=}", 18, ["missing option value"]),
    ("simplify{check-n=1 check-n=2}", 20, ["option 'check-n' is given twice"]),
    ("fuse-bn,", 9, ["expected a pass name", "end of the text"]),
    ("fuse-bn simplify", 9, ["expected ',' between passes"]),
    ("fuse-bn,,simplify", 9, ["expected a pass name", "','"]),
    ("{check-n=1}", 1, ["expected a pass name"]),
    ("simplify{check-n=f(1}", 18, ["bracket that is never closed"]),
    ("simplify{check-n=1)}", 19, ["unbalanced ')'"]),
])
def test_malformed_text_names_the_column(text, column, words):
    msg = _error(text)
    assert f"column {column}:" in msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    # the text is quoted with a caret under the column
    lines = msg.splitlines()
    assert lines[1] == f"  {text}"
    assert lines[2] == "  " + " " * (column - 1) + "^"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_pipeline(text):
    msg = _error(text)
    assert "pipeline is empty" in msg and "fuse-bn,to-onnx,simplify" in msg
