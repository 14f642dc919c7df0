"""Data-parallel training within one site: several GPUs (or CPU processes) of one hospital.

Started by torch's own launcher, `torchrun --nproc-per-node N -m cxrsynth train --config ...`,
which sets RANK, WORLD_SIZE and the rendezvous address; one process per GPU (NCCL), or per
CPU process (gloo). Every rank draws the same global batch (`IndexBatchSampler` with the same
seed) and steps on its share of it, so the batches, the sample rate and so the DP accounting
are those of one process at the same batch size.

The families take several passes per step (EMIXER: real, fake and rotated images through the
discriminators, then a generator step), so gradients are combined where every family meets
them, at its optimizers, rather than by wrapping modules in DistributedDataParallel (which
assumes one forward per backward):

- a plain optimizer's gradients, each the mean over the rank's records, are weighted by the
  rank's share of the global batch and summed over the ranks: the mean over the global batch;
- a DP-SGD optimizer (Opacus `DPOptimizer`) sums each rank's clipped per-sample gradients over
  the ranks, and only rank 0 adds the Gaussian noise, before the sum (as Opacus'
  DistributedDPOptimizer does): one noisy release of the global batch, divided by the expected
  global batch size as in one process.

Buffers (batch-norm statistics) are taken from rank 0 after every step, so all ranks hold the
same weights and rank 0 writes the checkpoint and the ledger.

A rank whose share of a non-empty batch is empty (fewer records drawn than ranks; with Poisson
sampling at the configured batch that is rare, e^-B B per step) still takes part in every
optimizer's exchange, in the order the other ranks make them (`empty_share_step`: by default
the family's empty-batch step, whose `noise_only_step` steps plain optimizers too; EMIXER adds
the generator's step, which reads no real data).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist

from cxrsynth.models.base import GenerativeModel


def world_from_env() -> tuple[int, int]:
    """(rank, world size) set by torchrun; (0, 1) outside it. Joins the process group when the
    world has more than one process (NCCL with CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


class _Share:
    """This rank's records and the global batch's, for the current step."""

    local = 1
    total = 1


def _all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of `params` over the ranks in one exchange. A parameter no rank has a
    gradient for keeps none (an optimizer skips it, as in one process)."""
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not live:
        return
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in live])
    dist.all_reduce(flat)
    offset = 0
    for p in live:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


class GradientMean:
    """A plain optimizer whose step first replaces each gradient by the global batch's mean."""

    def __init__(self, optimizer: torch.optim.Optimizer, share: _Share):
        self.optimizer = optimizer
        self.share = share

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def step(self, closure=None):
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        weight = self.share.local / max(self.share.total, 1)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(weight)
        _all_reduce_grads(params)
        return self.optimizer.step(closure)


def _distributed_noise(optimizer) -> Callable[[], None]:
    """`add_noise` of a DPOptimizer across ranks: rank 0 adds the noise to its clipped sum, then
    the sums are added over the ranks (Opacus' DistributedDPOptimizer, on our optimizers)."""
    original = optimizer.add_noise
    rank = dist.get_rank()

    def add_noise() -> None:
        if rank == 0:
            original()
        else:
            for p in optimizer.params:
                p.grad = p.summed_grad.view_as(p)
        _all_reduce_grads(optimizer.params)

    return add_noise


def data_parallel(model: GenerativeModel) -> Callable[[list], dict]:
    """Make `model`'s optimizers exchange gradients over the ranks; return the step function
    (records of this rank -> losses). Call after `cxrsynth.privacy.dp.privatize` when DP is on."""
    share = _Share()
    for name, opt in list(model.opts.items()):
        if hasattr(opt, "noise_multiplier"):
            opt.add_noise = _distributed_noise(opt)
        elif not isinstance(opt, GradientMean):
            model.opts[name] = GradientMean(opt, share)
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)

    def step(records: list) -> dict:
        sizes = torch.tensor([len(records)], dtype=torch.int64)
        dist.all_reduce(sizes)
        share.local, share.total = len(records), int(sizes.item())
        losses = model.empty_share_step() if share.local == 0 < share.total else model.train_step(records)
        with torch.no_grad():
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        return losses

    return step
