"""slimc.finetune: the loss goes down, the module comes back on the CPU in eval mode, bad data is explained."""

import copy

import pytest
import torch
import torch.nn as nn

import slimc
from slimc.finetune import FinetuneConfig


def _teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def _batches(n=8, labels=False):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(16, 3, 8, 8, generator=g) for _ in range(n)]
    return [(x, torch.randint(0, 5, (16,), generator=g)) for x in xs] if labels else xs


def _kd_loss(student, teacher, batches):
    total = 0.0
    with torch.no_grad():
        for x in batches:
            s, t = student(x), teacher(x)
            total += torch.nn.functional.kl_div(s.log_softmax(1), t.softmax(1), reduction="batchmean").item()
    return total / len(batches)


def test_distillation_moves_student_towards_teacher():
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    data = _batches()
    before = _kd_loss(student, teacher, data)
    result = slimc.finetune(student, data, teacher=teacher, config=FinetuneConfig(epochs=6, lr=1e-2, progress=False))
    after = _kd_loss(result.module, teacher, data)
    assert after < 0.5 * before
    assert len(result.history) == 6 * len(data)
    assert {"step", "epoch", "loss", "lr", "kd"} <= set(result.history[0])
    assert not result.module.training
    assert next(result.module.parameters()).device.type == "cpu"


def test_labels_only_uses_task_loss():
    model = _teacher()
    result = slimc.finetune(model, _batches(labels=True), config=FinetuneConfig(epochs=3, lr=1e-2, progress=False))
    assert "task" in result.history[0] and "kd" not in result.history[0]
    assert result.history[-1]["task"] < result.history[0]["task"]


def test_max_steps_and_cosine_schedule():
    result = slimc.finetune(_teacher(), _batches(), teacher=_teacher(),
                            config=FinetuneConfig(epochs=5, max_steps=5, progress=False))
    assert len(result.history) == 5
    assert result.history[-1]["lr"] < result.history[0]["lr"]


def test_bad_batches_are_explained():
    with pytest.raises(slimc.SlimcError, match="training batch"):
        slimc.finetune(_teacher(), ["not a tensor"], teacher=_teacher(), config=FinetuneConfig(progress=False))
    with pytest.raises(slimc.SlimcError, match="no batches"):
        slimc.finetune(_teacher(), [], teacher=_teacher(), config=FinetuneConfig(progress=False))


def test_finetune_pass_in_a_pipeline(tmp_path):
    data = tmp_path / "data.py"
    data.write_text(
        "import torch\n"
        "def loader():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]\n"
    )
    teacher = _teacher()
    result = slimc.compile(teacher, torch.randn(1, 3, 8, 8), backend="onnxruntime",
                           pipeline=f"finetune{{data={data}:loader epochs=4 lr=0.02 teacher=false}},to-onnx")
    ft = next(p for p in result.report["passes"] if p["name"] == "finetune")
    assert ft["changed"] and ft["details"]["steps"] == 12 and ft["level"] == "fx"
    assert ft["details"]["loss_last"] < ft["details"]["loss_first"]
    # The user's module is untouched; the fine-tuned weights differ from it.
    assert torch.equal(teacher[0].weight, _teacher()[0].weight)
    assert not torch.equal(result.module.get_submodule("0").weight, teacher[0].weight)


def test_finetune_pass_without_data_is_explained():
    with pytest.raises(slimc.SlimcError, match="training data"):
        slimc.compile(_teacher(), torch.randn(1, 3, 8, 8), pipeline="finetune,to-onnx")


# ---- keyword arguments beside a config, and the schedule's length --------------------------------

class _Unsized:
    """Batches re-iterable each epoch, with no len(): the step count is learnt in the first epoch."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_keyword_arguments_override_the_config():
    data = _batches(n=4)
    cfg = FinetuneConfig(epochs=1, lr=1e-3, progress=False)
    result = slimc.finetune(_teacher(), data, teacher=_teacher(), epochs=3, lr=5e-2, config=cfg)
    assert len(result.history) == 3 * len(data)  # epochs=3 beside the config is not ignored
    assert result.history[0]["lr"] > 4e-2  # nor is lr
    plain = slimc.finetune(_teacher(), data, teacher=_teacher(), config=cfg)
    assert len(plain.history) == len(data) and plain.history[0]["lr"] <= 1e-3


@pytest.mark.parametrize("wrap", [list, _Unsized])
def test_the_cosine_schedule_spans_the_real_number_of_steps(wrap):
    data = wrap(_batches(n=6))
    result = slimc.finetune(_teacher(), data, teacher=_teacher(), epochs=2, lr=1e-2,
                            config=FinetuneConfig(progress=False))
    lrs = [h["lr"] for h in result.history]
    assert len(lrs) == 12
    assert lrs[-1] < 1e-6  # annealed to zero at the last step, not after a made-up 1000 steps
    assert all(a >= b for a, b in zip(lrs[6:], lrs[7:]))  # decreasing once the length is known
