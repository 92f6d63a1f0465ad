"""Model specs: modules, torchvision names, file.py:factory, .onnx/.pt files; each bad spec a clear SlimcError."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimc
from slimc import SlimcError
from slimc.frontend.inputs import example_inputs_from, parse_input_shape
from slimc.frontend.specs import load_model, trusted_pickles
from support import TinyCNN, bn_modules


def _error(spec) -> str:
    with pytest.raises(SlimcError) as e:
        load_model(spec)
    return str(e.value)


def test_module_is_copied_and_put_in_eval_mode(tiny_cnn):
    tiny_cnn.train()
    loaded = load_model(tiny_cnn)
    assert loaded is not tiny_cnn and not loaded.training
    assert tiny_cnn.training  # the caller's module keeps its mode
    assert loaded.conv1.weight is not tiny_cnn.conv1.weight
    assert torch.equal(loaded.conv1.weight, tiny_cnn.conv1.weight)


def test_torchvision_spec():
    m = load_model("torchvision:squeezenet1_0")
    assert type(m).__name__ == "SqueezeNet" and not m.training


def test_unknown_torchvision_name_suggests_the_nearest():
    msg = _error("torchvision:resnet19")
    assert "torchvision has no model 'resnet19'" in msg and "did you mean 'resnet18'" in msg


@pytest.mark.parametrize("spec", ["resnet18", "model.bin", "torchvision"])
def test_spec_that_does_not_resolve(spec):
    msg = _error(spec)
    assert f"'{spec}' is not a model spec" in msg and "torchvision:NAME" in msg and "file.py:factory" in msg


def test_not_a_spec_type():
    assert "cannot compile a int" in _error(42)


def test_factory_file(tmp_path):
    f = tmp_path / "models.py"
    f.write_text(
        "import torch.nn as nn\n"
        "def make_model():\n    return nn.Sequential(nn.Linear(3, 4), nn.ReLU()).train()\n"
        "def make_dict():\n    return {'not': 'a module'}\n"
        "def broken():\n    raise KeyError('weights')\n"
    )
    m = load_model(f"{f}:make_model")
    assert isinstance(m, nn.Sequential) and not m.training

    msg = _error(f"{f}:make_modle")
    assert "has no callable 'make_modle'" in msg and "did you mean 'make_model'" in msg

    msg = _error(f"{f}:make_dict")
    assert "returned a dict, not a torch.nn.Module" in msg

    msg = _error(f"{f}:broken")
    assert "models.py:broken()' raised KeyError" in msg


def test_missing_factory_file(tmp_path):
    msg = _error(f"{tmp_path / 'nowhere.py'}:make")
    assert "nowhere.py' does not exist" in msg


def test_factory_file_that_fails_to_import(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import torch\ndef (:\n")
    msg = _error(f"{f}:make")
    assert "importing" in msg and "bad.py" in msg and "SyntaxError" in msg


def test_pickled_module_and_bad_pickles(tmp_path):
    good = tmp_path / "m.pt"
    torch.save(TinyCNN(), good)
    assert "--trust-pickle" in _error(str(good))  # a whole pickled module runs code: only on request
    with trusted_pickles():
        assert bn_modules(load_model(str(good))) == ["bn1", "bn2"]
    sd = tmp_path / "sd.pt"
    torch.save(TinyCNN().state_dict(), sd)
    assert "not a pickled nn.Module" in _error(str(sd))
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"not a pickle")
    assert "cannot load" in _error(str(garbage))
    assert "does not exist" in _error(str(tmp_path / "missing.pt"))


def test_corrupt_onnx_spec(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"\x08\x07\x12garbage" * 10)
    with pytest.raises(SlimcError, match="m.onnx"):
        slimc.load_program(str(f))


# ---- input shapes --------------------------------------------------------------------

def test_parse_input_shape():
    t = parse_input_shape("1x3x224x224")
    assert t.shape == (1, 3, 224, 224) and t.dtype == torch.float32
    assert parse_input_shape("2X128:int64").dtype == torch.int64


@pytest.mark.parametrize("text,words", [
    ("1x3xfoo", ["'1x3xfoo'", "dimensions separated by 'x'"]),
    ("1x0x3", ["'1x0x3'"]),
    ("", ["dimensions"]),
    ("1x3:float", ["unknown dtype 'float'", "float32"]),
])
def test_bad_input_shape(text, words):
    with pytest.raises(SlimcError) as e:
        parse_input_shape(text)
    for w in words:
        assert w in str(e.value)


def test_example_inputs():
    shaped = example_inputs_from(input_shapes=["2x3", "2x5:int64"])
    assert [t.shape for t in shaped] == [(2, 3), (2, 5)]
    assert shaped[0].abs().sum() > 0  # float inputs get random values, not zeros
    assert (shaped[1] == 0).all()
    x = torch.randn(2, 3)
    (given,) = example_inputs_from(x)
    assert torch.equal(given, x) and given is not x
    with pytest.raises(SlimcError, match="not both"):
        example_inputs_from(x, ["2x3"])
    with pytest.raises(SlimcError, match="tensors or numpy arrays, got list"):
        example_inputs_from([[1, 2]])
