"""Data-parallel fine-tuning: `slimc.finetune` under `torchrun` runs as DistributedDataParallel.

    torchrun --nproc-per-node 2 train.py          # train.py calls slimc.finetune(...) as usual

Nothing changes in the call. When torchrun's environment is there (WORLD_SIZE > 1, RANK) or a process
group is already initialised, `slimc.finetune` joins the group (gloo on the CPU, NCCL on GPUs; it
initialises the group itself when needed, keeps it for later calls and destroys it when the process exits:
re-initialising a group on torchrun's store within one process can hang), wraps the module in
DistributedDataParallel and gives each process its share of the data:

* batches from any iterable: every process iterates the same batches and takes its contiguous slice of
  each (so the loader must yield the same batches in every process: seed its shuffling). The global batch
  is what your loader yields; each process computes 1/world of it, and each process's loss is weighted by
  its share of the samples, so the averaged gradient is that of the whole batch even when a batch does not
  split evenly. With the same seed, the weights match a single-process run up to float summation order.
* a `torch.utils.data.DataLoader` whose sampler is already a `DistributedSampler`: its batches are this
  process's own; `set_epoch` is called every epoch. Here the global batch is world x the loader's batch.

Only rank 0 shows progress; every rank returns the same model (floating-point buffers such as BatchNorm
running statistics are averaged over the processes at the end). BatchNorm layers normalise with
per-process batch statistics (as DistributedDataParallel always does), so with BatchNorm the match with a
single process is close rather than exact.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

from ..errors import SlimcError

__all__ = ["DataParallel", "data_parallel", "is_main_process"]


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it: guard writes and prints with it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class DataParallel:
    """How this process takes part in fine-tuning. A single process has rank 0 and world size 1."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    batch_share: float = 1.0  # this process's samples x world / the batch's samples (loss weight)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module):
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device.startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=ids)

    @staticmethod
    def unwrap(module):
        return getattr(module, "module", module) if type(module).__name__ == "DistributedDataParallel" else module

    def shard(self, train_data):
        """This process's batches: see the module docstring."""
        if not self.active:
            return train_data
        sampler = getattr(train_data, "sampler", None)
        from torch.utils.data import DistributedSampler

        if isinstance(sampler, DistributedSampler):
            return _EpochedLoader(train_data, sampler)
        return _SlicedBatches(train_data, self)

    def global_mean(self, loss) -> float:
        """The loss of the whole batch (for the history and the divergence check, equal on every rank)."""
        if not self.active:
            return loss.item()
        import torch.distributed as dist

        value = (loss.detach() * self.batch_share).float().reshape(1)
        dist.all_reduce(value)
        return value.item() / self.world_size

    def sync_buffers(self, module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the processes: each process
        updated its own from its slice of the last batches, and every rank must return the same model."""
        if not self.active:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.world_size)

    def close(self) -> None:
        """Nothing to release per call: a group slimc opened lives until the process exits (see data_parallel)."""


def data_parallel(device: str) -> DataParallel:
    """Join torchrun's process group when there is one; otherwise a single-process no-op.

    `device` is the device slimc.finetune picked; on GPUs each process takes cuda:LOCAL_RANK.
    """
    import torch
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel(device=device)
    if not dist.is_available():
        raise SlimcError("WORLD_SIZE > 1 asks for distributed fine-tuning, but this torch build has no "
                         "torch.distributed; run a single process, or install a torch with distributed support.")
    on_gpu = device.startswith("cuda")
    if on_gpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not initialised:
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            raise SlimcError(f"WORLD_SIZE={world} but RANK or MASTER_ADDR is not set: start the script with "
                             "torchrun (torchrun --nproc-per-node N script.py), which sets them, or unset WORLD_SIZE.")
        try:
            dist.init_process_group("nccl" if on_gpu else "gloo")
        except Exception as exc:
            raise SlimcError(f"joining the torchrun process group failed: {type(exc).__name__}: {exc}") from None
        atexit.register(_destroy_group)
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class _SlicedBatches:
    """Every process iterates the same batches and keeps its contiguous slice of each."""

    def __init__(self, data, parallel: DataParallel):
        self.data, self.parallel = data, parallel

    def __len__(self):
        return len(self.data)  # raises TypeError for unsized iterables, as slimc.finetune expects

    def __iter__(self):
        import torch

        p = self.parallel
        for batch in self.data:
            tensors = [batch] if isinstance(batch, torch.Tensor) else list(batch) if isinstance(batch, (tuple, list)) else None
            if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() for t in tensors):
                yield batch  # slimc.finetune explains malformed batches
                continue
            n = tensors[0].shape[0]
            if n < p.world_size:
                raise SlimcError(f"a batch of {n} sample(s) cannot be split across {p.world_size} processes; "
                                 "use batches of at least the world size (drop_last=True drops a short last batch).")
            parts = [t.tensor_split(p.world_size)[p.rank] for t in tensors]
            p.batch_share = parts[0].shape[0] * p.world_size / n
            yield parts[0] if isinstance(batch, torch.Tensor) else type(batch)(parts)


class _EpochedLoader:
    """A loader with a DistributedSampler: its batches are already this process's; reshuffle every epoch."""

    def __init__(self, loader, sampler):
        self.loader, self.sampler, self.epoch = loader, sampler, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)
