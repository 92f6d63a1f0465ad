"""slimc.finetune under torchrun: 2 CPU processes (gloo) give the weights of one process on the same data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import slimc
from slimc.finetune.distributed import DataParallel, _SlicedBatches, data_parallel, is_main_process

# Shared by the single-process run (here) and the torchrun processes: same seed, same batches.
SCRIPT = textwrap.dedent('''
    import os
    import sys

    import torch
    import torch.nn as nn

    import slimc
    from slimc.finetune import FinetuneConfig


    def make(batchnorm=False):
        torch.manual_seed(0)
        norm = [nn.BatchNorm2d(8)] if batchnorm else []
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *norm, nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


    def batches():
        g = torch.Generator().manual_seed(1)
        sizes = [16, 16, 15, 16, 9]  # 15 and 9 do not split evenly over 2 processes
        return [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)) for n in sizes]


    def run(batchnorm=False):
        torch.set_num_threads(1)
        teacher = make(batchnorm)
        with torch.no_grad():  # a student that differs from its teacher
            student = make(batchnorm)
            for p in student.parameters():
                p.add_(0.3 * torch.randn_like(p))
        config = FinetuneConfig(epochs=3, lr=5e-3, progress=False)
        return slimc.finetune(student, batches(), teacher=teacher.eval(), config=config)


    if __name__ == "__main__":
        import torch.distributed as dist

        out = {}
        for bn in (False, True):
            result = run(bn)
            out[f"bn={bn}"] = {"state": result.module.state_dict(), "loss": [h["loss"] for h in result.history]}
        out["initialised_after"] = dist.is_initialized()
        torch.save(out, f"{sys.argv[1]}.rank{os.environ['RANK']}")
''')


def _script_module(tmp_path):
    path = tmp_path / "ddp_script.py"
    path.write_text(SCRIPT)
    namespace = {"__name__": "ddp_script"}
    exec(compile(SCRIPT, str(path), "exec"), namespace)
    return path, namespace


def test_two_gloo_processes_match_one_process(tmp_path):
    path, script = _script_module(tmp_path)
    single = script["run"](batchnorm=False)
    repo = Path(slimc.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(path), str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"ddp.rank{r}") for r in (0, 1)]
    assert all(r["initialised_after"] for r in ranks)  # the group slimc opened stays for the next call

    # Without BatchNorm: the same weights as one process on the whole batches (float summation order aside).
    # Tolerance: 1e-5 absolute on weights of magnitude ~0.1-1 after 15 AdamW steps.
    for name, ref in single.module.state_dict().items():
        for rank in ranks:
            err = (rank["bn=False"]["state"][name] - ref).abs().max().item()
            assert err <= 1e-5, (name, err)
    torch.testing.assert_close(torch.tensor(ranks[0]["bn=False"]["loss"]), torch.tensor([h["loss"] for h in single.history]),
                               rtol=1e-5, atol=1e-6)
    assert len(single.history) == 15
    # With BatchNorm each process normalises with its own batch statistics (as DDP does), so the weights are
    # only close to one process's; the two processes still hold identical weights.
    for name, w0 in ranks[0]["bn=True"]["state"].items():
        assert torch.equal(w0, ranks[1]["bn=True"]["state"][name]), name


def test_each_process_takes_its_slice_and_weight():
    batches = [(torch.arange(5.0).reshape(5, 1), torch.arange(5)), torch.arange(4.0).reshape(4, 1)]
    for rank, rows, shares in ((0, [[0, 1, 2], [0, 1]], [1.2, 1.0]), (1, [[3, 4], [2, 3]], [0.8, 1.0])):
        parallel = DataParallel(rank=rank, world_size=2)
        got = []
        for batch in _SlicedBatches(batches, parallel):
            x = batch[0] if isinstance(batch, tuple) else batch
            got.append((x.flatten().tolist(), parallel.batch_share))
        assert [g[0] for g in got] == [[float(v) for v in r] for r in rows]
        assert [g[1] for g in got] == pytest.approx(shares)
    with pytest.raises(slimc.SlimcError, match="cannot be split across 2 processes"):
        list(_SlicedBatches([torch.zeros(1, 3)], DataParallel(rank=0, world_size=2)))


def test_single_process_is_unchanged(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parallel = data_parallel("cpu")
    assert not parallel.active and parallel.is_main and is_main_process()
    data = [torch.zeros(2, 3)]
    assert parallel.shard(data) is data
    module = torch.nn.Linear(3, 3)
    assert parallel.wrap(module) is module


def test_world_size_without_torchrun_is_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(slimc.SlimcError, match="torchrun"):
        data_parallel("cpu")
