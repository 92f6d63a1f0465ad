"""prune-channels analyses the frontend's cached ExportedProgram instead of exporting again, leaves
that program and the user's module as they were, and the next pass sees a fresh export of the result."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from slimc.ir.program import Program
from slimc.passes.fx.prune_channels import PruneChannels

torchvision = pytest.importorskip("torchvision")


def _program(model, *inputs):
    return Program(model, tuple(inputs), ("input",), ("output",), original=model)


def _weight_shapes(ep) -> dict[str, tuple]:
    """Parameter FQN -> shape, as the exported graph's placeholders record it."""
    owners = ep.graph_signature.inputs_to_parameters
    return {owners[n.name]: tuple(n.meta["val"].shape) for n in ep.graph.nodes
            if n.op == "placeholder" and n.name in owners}


def test_prune_uses_the_cached_export_and_changes_neither_it_nor_the_module(monkeypatch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    program = _program(model, x)
    ep = program.exported()
    shapes_before = _weight_shapes(ep)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(x)

    def refuse(*args, **kwargs):
        raise AssertionError("prune-channels exported the module again")

    monkeypatch.setattr(torch.export, "export", refuse)
    result = PruneChannels(ratio=0.5).apply(program)
    monkeypatch.undo()

    assert result.details["frontend"] == "torch.export" and result.details["groups_pruned"] > 0
    pruned = result.program.ir
    assert type(pruned) is type(model) and pruned is not model
    assert result.details["params_after"] < 0.4 * result.details["params_before"]
    # The cached program and the user's module are as they were: shapes, values, outputs.
    assert program.exported() is ep and _weight_shapes(ep) == shapes_before
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state_before.items())
    assert all(p.shape == ep.state_dict[k].shape for k, p in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)
        torch.testing.assert_close(ep.module()(x), want)
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_the_next_pass_sees_a_fresh_export_of_the_pruned_module():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    program = _program(model, torch.randn(1, 3, 32, 32))
    dense = program.exported()
    result = PruneChannels(ratio=0.5).apply(program)
    pruned_ep = result.program.exported()
    assert pruned_ep is not dense
    shapes = _weight_shapes(pruned_ep)
    pruned = result.program.ir
    assert shapes == {k: tuple(p.shape) for k, p in pruned.named_parameters()}
    assert shapes["layer1.0.conv1.weight"][0] < _weight_shapes(dense)["layer1.0.conv1.weight"][0]
    assert result.program.exported() is pruned_ep  # cached again, for the pass after


def test_prune_then_fuse_bn_through_compile_reads_the_pruned_graph():
    """fuse-bn finds its conv -> BatchNorm edges on program.exported(): after the cut that must be the
    pruned module's graph, or the fused weights would have the dense widths."""
    import slimc

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = slimc.compile(model, x, pipeline="prune-channels{ratio=0.5},fuse-bn", backend=None, fidelity_samples=0)
    prune_rec, fuse_rec = r.records
    assert fuse_rec.changed and fuse_rec.details["fused"] == 20
    fused = r.program.ir
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert fused.layer1[0].conv1.weight.shape[0] < 64
    assert r.report["after"]["params"] < 0.4 * r.report["before"]["params"]
    # fuse-bn is exact: the fused model equals the pruned one on fresh inputs.
    pruned = PruneChannels(ratio=0.5).apply(_program(model, x)).program.ir
    z = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(z), pruned(z), atol=1e-4, rtol=1e-4)


def test_a_module_in_training_mode_is_analysed_in_eval_mode_and_left_in_training_mode():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    running = model.bn1.running_mean.clone()
    result = PruneChannels(ratio=0.5).apply(_program(model, x))
    assert model.training and torch.equal(model.bn1.running_mean, running)
    assert result.details["groups_pruned"] > 0
    with torch.no_grad():
        assert result.program.ir.eval()(x).shape == (2, 10)


def test_dynamic_batch_program_prunes_on_its_dynamic_export():
    import slimc

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = slimc.compile(model, x, pipeline="prune-channels{ratio=0.5},to-onnx", backend="onnxruntime",
                          dynamic_batch=True, fidelity_samples=0)
    details = r.records[0].details
    assert details["layer_macs_after"] / details["layer_macs_before"] < 0.35
    assert r.artifact.run([torch.randn(3, 3, 32, 32).numpy()])[0].shape == (3, 10)
