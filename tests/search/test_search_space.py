"""Search spaces from pipeline text: distributions, per-group dimensions, concrete pipelines, grids."""

from __future__ import annotations

import pytest

import slimc
from slimc.errors import SlimcError
from slimc.passes.pipeline import Pipeline
from slimc.search.space import SearchSpace, is_distribution

prune_channels = pytest.importorskip("slimc.passes.fx.prune_channels")  # registers prune-channels

PIPE = ("fuse-bn,prune-channels{ratio=uniform(0.1,0.7) criterion=choice(l2,taylor) round-to=quniform(1,8,1)},"
        "to-onnx{opset=choice(17,18)},simplify")


def test_distributions_become_dimensions():
    space = SearchSpace.parse(PIPE)
    dims = {d.label: d for d in space.dimensions}
    assert list(dims) == ["prune-channels.ratio", "prune-channels.criterion", "prune-channels.round-to",
                          "to-onnx.opset"]
    assert dims["prune-channels.ratio"].kind == "uniform" and dims["prune-channels.ratio"].args == (0.1, 0.7)
    assert dims["prune-channels.criterion"].args == ("l2", "taylor")
    assert dims["prune-channels.round-to"].integer
    assert set(space.hyperopt()) == set(dims)
    assert "prune-channels.ratio" in space.describe() and "uniform(0.1, 0.7)" in space.describe()


def test_point_gives_canonical_pipeline_that_round_trips():
    space = SearchSpace.parse(PIPE)
    text = space.pipeline_for({"prune-channels.ratio": 0.3333333333, "prune-channels.criterion": "taylor",
                               "prune-channels.round-to": 4.0, "to-onnx.opset": "18"})
    assert "ratio=0.333333" in text and "criterion=taylor" in text and "round-to=4 " in text
    assert "opset=18" in text
    assert Pipeline.parse(text).print() == text  # what best.txt holds is what compile reads


def test_loguniform_bounds_are_values_and_sampling_stays_inside():
    from hyperopt.pyll.stochastic import sample
    import numpy as np

    space = SearchSpace.parse("prune-channels{ratio=loguniform(0.01,0.5)},to-onnx")
    rng = np.random.default_rng(0)
    draws = [sample(space.hyperopt(), rng=rng)["prune-channels.ratio"] for _ in range(50)]
    assert all(0.01 <= d <= 0.5 for d in draws)


@pytest.mark.parametrize("text, message", [
    ("prune-channels{ratoi=uniform(0,1)}", "did you mean 'ratio'"),
    ("prune-channels{ratio=uniform(0.5)}", "takes 2 numbers"),
    ("prune-channels{ratio=uniform(0.6,0.2)}", "above high"),
    ("prune-channels{criterion=uniform(0,1)}", "use choice"),
    ("prune-channels{criterion=choice(l2,l7)}", "'l7' is not valid"),
    ("prune-channels{round-to=uniform(1,8)}", "quniform"),
    ("prune-channels{ratio=uniform(0.1,1.5)}", "not valid"),
    ("prune-channels{ratio=loguniform(0,0.5)}", "positive"),
    ("prune-channels{ratio=per-group(uniform(0,0.5))}", "name:value"),
])
def test_bad_spaces_say_what_is_wrong(text, message):
    with pytest.raises(SlimcError, match=message):
        SearchSpace.parse(text)


def test_per_group_needs_a_model_and_uses_the_groups():
    with pytest.raises(SlimcError, match="needs the model"):
        SearchSpace.parse("prune-channels{ratios=per-group(uniform(0,0.8))}")
    space = SearchSpace.parse("fuse-bn,prune-channels{ratios=per-group(uniform(0,0.8)) round-to=1}",
                              lambda spec, index: [("conv1", 16), ("layer1.0", 32)])
    assert [d.label for d in space.dimensions] == ["prune-channels.ratios[conv1]", "prune-channels.ratios[layer1.0]"]
    text = space.pipeline_for({"prune-channels.ratios[conv1]": 0.25, "prune-channels.ratios[layer1.0]": 0.5})
    assert "ratios=conv1:0.25,layer1.0:0.5" in text


def test_per_group_on_a_real_model(tmp_path):
    from search_support import write_tiny_cnn
    from slimc.search import build_space
    from slimc.search.objective import TrialTask

    spec = write_tiny_cnn(tmp_path)
    space = build_space("fuse-bn,prune-channels{ratios=per-group(uniform(0,0.8)) round-to=1},to-onnx",
                        TrialTask(spec, inputs=slimc.InputOptions(shapes=("1x3x32x32",))))
    labels = [d.label for d in space.dimensions]
    assert labels and all(lb.startswith("prune-channels.ratios[") for lb in labels)
    assert len(labels) >= 2  # the tiny CNN has several independent conv groups


def test_grid_enumerates_choice_and_quniform():
    space = SearchSpace.parse("prune-channels{criterion=choice(l1,l2) round-to=quniform(2,6,2)},to-onnx")
    grid = space.grid()
    assert space.grid_size() == len(grid) == 6
    assert {(p["prune-channels.criterion"], p["prune-channels.round-to"]) for p in grid} == \
        {(c, r) for c in (0, 1) for r in (2.0, 4.0, 6.0)}
    with pytest.raises(SlimcError, match="continuous"):
        SearchSpace.parse("prune-channels{ratio=uniform(0,0.5)}").grid()


def test_lossless_text_drops_the_lossy_passes():
    space = SearchSpace.parse(PIPE)
    dense = space.lossless_text()
    assert "prune-channels" not in dense and dense.startswith("fuse-bn,to-onnx{opset=17")


def test_is_distribution():
    assert is_distribution("uniform(0,1)") and is_distribution("per-group(uniform(0,1))")
    assert not is_distribution("0.5") and not is_distribution("layer1:0.3")


def test_every_algorithm_resolves_or_says_what_is_missing():
    from slimc.search.runner import ALGORITHMS, _suggest

    space = SearchSpace.parse("prune-channels{criterion=choice(l1,l2)},to-onnx")
    for algo in ALGORITHMS:
        try:
            assert callable(_suggest(algo, space, 10))
        except SlimcError as exc:  # atpe without lightgbm
            assert algo == "atpe" and "lightgbm" in str(exc)
    with pytest.raises(SlimcError, match="did you mean 'tpe'"):
        _suggest("tpee", space, 10)
