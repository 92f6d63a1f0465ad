"""bn-recal: BatchNorm statistics re-estimated on the user's batches; weights untouched; works on any module."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimc
from slimc.ir.program import Program
from slimc.passes.fx.bn_recal import BnRecal, recalibrate_batchnorm
from support import TinyCNN, bn_modules, randomize_bn

# A task where a cut really moves the activations: 8 noisy templates on 8x8 images.
TASK_PY = textwrap.dedent('''
    import torch


    def task(n, seed, classes=8):
        templates = torch.randn(classes, 1, 8, 8, generator=torch.Generator().manual_seed(1234))
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, classes, (n,), generator=g)
        return torch.randn(n, 1, 8, 8, generator=g) + 0.7 * templates[y], y


    def loader():
        x, y = task(512, 0)
        return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]


    def images_only():
        return [x for x, _ in loader()]


    def empty():
        return []
''')


@pytest.fixture
def task_py(tmp_path):
    path = tmp_path / "task.py"
    path.write_text(TASK_PY)
    return path


def _task(n, seed):
    namespace = {}
    exec(TASK_PY, namespace)
    return namespace["task"](n, seed)


class TaskNet(nn.Module):
    def __init__(self, w=32):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.c2, self.b2 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.fc = nn.Linear(w * 4, 8)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


def _trained_task_net(seed):
    torch.manual_seed(seed)
    model, (x, y) = TaskNet(), _task(1024, seed)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(80):
        idx = torch.randint(0, len(y), (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _stats(module):
    return {name: (m.running_mean.clone(), m.running_var.clone())
            for name, m in module.named_modules() if name in bn_modules(module)}


# ---- structure --------------------------------------------------------------------------

def test_statistics_change_weights_do_not(tiny_cnn, task_py):
    model = nn.Sequential(nn.Conv2d(1, 3, 1), tiny_cnn).eval()  # TinyCNN takes 3 channels; the task has 1
    program = slimc.load_program(model, (torch.randn(1, 1, 8, 8),))
    before_stats = _stats(program.ir)
    before_params = {n: p.clone() for n, p in program.ir.named_parameters()}
    result = BnRecal(data=f"{task_py}:loader", batches=3).apply(program)
    assert result.changed
    assert result.details["batchnorms"] == 2 and result.details["batches"] == 3 and result.details["samples"] == 192
    after = result.program.ir
    for name, (mean, var) in _stats(after).items():
        assert not torch.allclose(mean, before_stats[name][0]) and not torch.allclose(var, before_stats[name][1])
    for name, p in after.named_parameters():
        assert torch.equal(p, before_params[name]), name
    # The input program keeps its statistics (for --verify-each and the user), the output is in eval mode.
    for name, (mean, var) in _stats(program.ir).items():
        assert torch.equal(mean, before_stats[name][0]) and torch.equal(var, before_stats[name][1])
    assert not any(m.training for m in after.modules() if isinstance(m, nn.BatchNorm2d)) and not after.training
    assert all(m.momentum == 0.1 for m in after.modules() if isinstance(m, nn.BatchNorm2d))


def test_any_module_and_batchnorm_subclasses(task_py):
    """Not a GraphModule, a user BatchNorm subclass with its own forward, Dropout left in eval mode."""

    class ScaledBN(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2.0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.drop = nn.Dropout2d(0.5)
            self.bn = ScaledBN(4)

        def forward(self, x):
            return self.bn(self.drop(self.conv(x))).mean((2, 3))

    torch.manual_seed(0)
    net = Net().eval()
    program = Program(net, (torch.randn(1, 1, 8, 8),), ("input",), ("output",), original=net)
    out = BnRecal(data=f"{task_py}:images_only", batches=0).apply(program).program.ir
    assert type(out) is Net and type(out.bn) is ScaledBN
    # Dropout stayed off: the statistics are exactly those of the conv's outputs over all 8 batches.
    xs = torch.cat([x for x in _task(512, 0)[0].split(64)])
    with torch.no_grad():
        feats = net.conv(xs)
    batch_means = torch.stack([f.mean((0, 2, 3)) for f in feats.split(64)])
    torch.testing.assert_close(out.bn.running_mean, batch_means.mean(0), rtol=1e-5, atol=1e-6)
    assert int(out.bn.num_batches_tracked) == 8


def test_nothing_to_do_says_so(task_py):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    program = slimc.load_program(model, (torch.randn(1, 1, 8, 8),))
    result = BnRecal(data=f"{task_py}:loader").apply(program)
    assert not result.changed and "nothing to do" in result.details["note"]


def test_bad_input_is_explained(task_py, tiny_cnn, tiny_input):
    with pytest.raises(slimc.SlimcError, match="needs data"):
        slimc.compile(tiny_cnn, tiny_input, pipeline="bn-recal,to-onnx", backend=None)
    with pytest.raises(slimc.SlimcError, match="no batches"):
        slimc.compile(tiny_cnn, tiny_input, pipeline=f"bn-recal{{data={task_py}:empty}}", backend=None)
    with pytest.raises(slimc.SlimcError, match="no callable 'lodaer'.*loader"):
        slimc.compile(tiny_cnn, tiny_input, pipeline=f"bn-recal{{data={task_py}:lodaer}}", backend=None)
    with pytest.raises(slimc.SlimcError, match="batches"):
        slimc.compile(tiny_cnn, tiny_input, pipeline=f"bn-recal{{data={task_py}:loader batches=-1}}", backend=None)


# ---- numbers ----------------------------------------------------------------------------

def test_recalibrated_output_matches_batch_statistics(task_py):
    """After a cut, eval-mode output with recalibrated statistics equals the train-mode (batch statistics)
    output of the cut model on the same single batch, up to BatchNorm's unbiased-variance factor."""
    torch.manual_seed(0)
    dense = randomize_bn(TaskNet())
    pruned = slimc.compile(dense, torch.randn(1, 1, 8, 8), pipeline="prune-channels{ratio=0.5 round-to=1}",
                           backend=None, fidelity_samples=0).module
    assert [pruned.get_submodule(n).num_features for n in ("b1", "b2")] == [16, 16]
    x = _task(256, 3)[0]  # 256 * 8 * 8 values per channel: unbiased/biased variance = 1 + 6e-5
    with torch.no_grad():
        reference = copy.deepcopy(pruned).train()(x)
        stale = pruned(x)
        recalibrate_batchnorm(pruned, [x])
        recalibrated = pruned(x)
    scale = reference.abs().max()
    assert (stale - reference).abs().max() > 0.05 * scale  # the stale statistics were really off
    assert (recalibrated - reference).abs().max() <= 1e-3 * scale


def test_recalibration_recovers_accuracy_through_compile(task_py):
    """group-conv g=4 cuts 3/4 of each conv; the statistics alone win most of the accuracy back."""
    x_test, y_test = _task(512, 100)
    for seed in (0, 1):
        dense = _trained_task_net(seed)
        example = torch.randn(1, 1, 8, 8)

        def accuracy(pipeline):
            module = slimc.compile(dense, example, pipeline=pipeline, backend=None, fidelity_samples=0).module
            with torch.no_grad():
                return (module(x_test).argmax(1) == y_test).float().mean().item()

        cut = "group-conv{groups=4 min-channels=1}"
        dense_acc = accuracy("fuse-bn")
        plain, recal = accuracy(cut), accuracy(f"{cut},bn-recal{{data={task_py}:loader batches=8}}")
        assert dense_acc > 0.85
        assert recal > plain + 0.1, (seed, dense_acc, plain, recal)


def test_cli_pipeline(cli, tmp_path, task_py):
    models = tmp_path / "models.py"
    models.write_text("import torch.nn as nn\n"
                      "def net():\n"
                      "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
                      "                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
                      "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))\n")
    rc, out, err = cli("compile", f"{models}:net", "--input-shape", "1x1x8x8", "-o", tmp_path / "out",
                       "--pipeline", f"prune-channels{{ratio=0.5 round-to=1 min-channels=1}},"
                                     f"bn-recal{{data={task_py}:loader batches=4}},fuse-bn,to-onnx,simplify",
                       "--report", tmp_path / "r.json")
    assert rc == 0, err
    record = next(p for p in json.loads((tmp_path / "r.json").read_text())["passes"] if p["name"] == "bn-recal")
    assert record["changed"] and record["details"]["batches"] == 4 and record["details"]["batchnorms"] == 2
    assert "bn-recal{data=" in out and "batches=4" in out
