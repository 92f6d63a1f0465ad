"""The torch.export frontend: the FX-level IR is the user's own module, analysed on its ATen graph.

Real models of the kinds symbolic_trace could not handle: timm's BatchNormAct2d, torchvision's video
ResNet (Conv3DSimple), torchvision segmentation specs. Every rewrite is checked for structure and numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimc
from slimc import SlimcError
from slimc.ir.stats import stats_of
from slimc.passes.fx.fuse_bn import FuseBN
from support import aten_ops, assert_outputs_close, bn_modules, fresh_inputs, n_params, program_of, randomize_bn


def test_ir_is_the_users_own_module_and_export_is_cached(tiny_cnn, tiny_input):
    program = program_of(tiny_cnn, tiny_input)
    assert type(program.ir) is type(tiny_cnn) and not isinstance(program.ir, torch.fx.GraphModule)
    assert program.ir is not tiny_cnn and not program.ir.training  # a private copy in eval mode
    assert program.frontend == "torch.export"
    ep = program.exported()
    assert program.exported() is ep  # one export per module object
    assert aten_ops(program) == {"conv2d": 2, "batch_norm": 2, "relu": 2, "adaptive_avg_pool2d": 1, "flatten": 1,
                                 "linear": 1}
    fused = FuseBN().apply(program).program
    assert fused.exported() is not ep  # the rewrite made a new module: analysed afresh
    assert "batch_norm" not in aten_ops(fused)


class WithNormAct(nn.Module):
    """conv -> BatchNormAct2d (timm: norm, then activation in one BatchNorm2d subclass) -> linear."""

    def __init__(self):
        super().__init__()
        from timm.layers import BatchNormAct2d

        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = BatchNormAct2d(8, act_layer=nn.ReLU)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_batchnormact_folds_its_norm_and_keeps_its_activation():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_bn(WithNormAct())
    program = program_of(model, torch.randn(2, 3, 8, 8))
    result = FuseBN().apply(program)
    assert result.changed and result.details["pairs"] == ["bn -> conv"]
    new = result.program.ir
    assert type(new.bn).__name__ == "BatchNormAct2d" and isinstance(new.bn.act, nn.ReLU)  # activation kept
    assert new.conv.bias is not None
    # the folded norm has no scale and shift left: 8 bias values added, 16 norm parameters gone
    assert new.bn.weight is None and n_params(new) == n_params(model) - 8
    # the activation matters: without it outputs would differ (negative pre-activations exist)
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-5)
    assert model.bn.running_var.min() > 0.4  # the caller's module untouched
    assert bn_modules(program.ir) == ["bn"] and program.ir.bn.eps == model.bn.eps


def test_timm_model_with_batchnormact_fuses_every_norm_through_compile():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10))
    n_bn = len(bn_modules(model))
    result = slimc.compile(model, torch.randn(1, 3, 64, 64), pipeline="fuse-bn,to-onnx,simplify",
                           fidelity_samples=2)
    fuse = result.report["passes"][0]
    assert fuse["details"]["fused"] == n_bn > 10
    assert fuse["stats"]["params"] < n_params(model) and not result.report["warnings"]  # lossless, no growth
    assert result.report["after"]["ops"].get("BatchNormalization", 0) == 0  # identity norms simplified away
    assert result.report["fidelity"]["cosine"] > 0.99999
    xs = fresh_inputs(result.program)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(xs[0])).numpy()
    assert_outputs_close([ref], result.artifact.run(xs), rel=1e-4)


def test_video_resnet_conv3d_subclass_fuses_and_counts_macs():
    import torchvision

    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.video.r3d_18(num_classes=5))
    program = program_of(model, torch.randn(1, 3, 4, 32, 32))
    result = FuseBN().apply(program)
    assert result.details["fused"] == len(bn_modules(model)) == 20  # Conv3DSimple is a Conv3d subclass
    assert bn_modules(result.program.ir) == []
    assert n_params(result.program.ir) < n_params(program.ir)
    xs = fresh_inputs(program)
    assert_outputs_close(program.run(xs), result.program.run(xs), rel=1e-4)
    # MACs: every Conv3d counted, checked against the layer shapes seen by forward hooks
    counted = []

    def hook(mod, inp, out):
        counted.append(out.numel() * (mod.in_channels // mod.groups) * int(np.prod(mod.kernel_size)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        model(program.example_inputs[0])
    for h in handles:
        h.remove()
    assert len(counted) == 20
    assert stats_of(program.ir, program.example_inputs).macs == sum(counted) + 512 * 5  # + the final linear


def test_macs_match_torchvision_on_video_and_swin():
    """torchvision's own GMAC figures (weights meta '_ops'): r3d_18 40.697 at 1x3x16x112x112,
    swin_t 4.491 and swin_s 8.741 at 224 (the old counter gave both Swins 0.246)."""
    import torchvision

    for name, shape, gmacs in (("r3d_18", (1, 3, 16, 112, 112), 40.697), ("swin_t", (1, 3, 224, 224), 4.491),
                               ("swin_s", (1, 3, 224, 224), 8.741)):
        model = torchvision.models.get_model(name).eval()
        assert stats_of(model, (torch.randn(shape),)).macs / 1e9 == pytest.approx(gmacs, abs=1e-3), name


def test_torchvision_segmentation_and_detection_specs_download_nothing():
    from slimc.frontend.specs import load_model

    for name in ("lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"):
        model = load_model(f"torchvision:{name}")  # URLError offline if a backbone were fetched
        assert not model.training
    result = slimc.compile("torchvision:lraspp_mobilenet_v3_large", torch.randn(1, 3, 64, 64),
                           pipeline="fuse-bn,to-onnx", fidelity_samples=2)
    assert result.program.output_names == ("out",)  # the dict output's key names the ONNX output
    assert result.report["passes"][0]["details"]["fused"] > 10
    assert result.report["fidelity"]["cosine"] > 0.99999


def test_dynamic_batch_through_export_dim(tiny_cnn, tiny_input):
    x1 = tiny_input[:1]  # batch 1: export would specialise it; slimc exports with a batch of 2
    result = slimc.compile(tiny_cnn, x1, pipeline="fuse-bn,to-onnx", inputs=slimc.InputOptions(dynamic_batch=True),
                           fidelity_samples=2)
    model = result.onnx
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    xs = result.program.random_inputs(seed=5, batch=3)
    with torch.no_grad():
        ref = tiny_cnn.eval()(torch.from_numpy(xs[0])).numpy()
    assert_outputs_close([ref], result.artifact.run(xs), rel=1e-5)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent branch at the top level: neither export nor symbolic_trace
            return self.fc(x)
        return x


def test_model_neither_frontend_takes_names_user_code_and_fix():
    with pytest.raises(SlimcError) as e:
        program_of(Untraceable().eval(), torch.randn(2, 4))
    msg = str(e.value)
    assert "torch.export could not capture Untraceable" in msg and "test_export_frontend.py:" in msg
    assert "if x.sum() > 0:" in msg  # the user's line is quoted
    assert "Fix:" in msg and "symbolic_trace fallback failed too" in msg


def test_kv_cache_output_says_use_cache_false():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    with pytest.raises(SlimcError, match="use_cache=False"):
        program_of(transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, 64, (1, 8)))


def test_inputs_that_do_not_fit_still_say_so(tiny_cnn):
    with pytest.raises(SlimcError, match="does not run on inputs of shape 1x4x8x8"):
        program_of(tiny_cnn, torch.randn(1, 4, 8, 8))
