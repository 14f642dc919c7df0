"""`cxrsynth train --dry-run`: build a preset, take two steps at a tiny batch, and say what a real
run at the configured batch would need (parameters, step time, memory).

The memory estimate adds what a step holds at once, counted rather than guessed:
- the weights of every network (frozen ones too), their gradients (trainable ones), and the
  optimizer's state (Adam and AdamW keep two tensors per parameter), read off the optimizers;
- the peak of the activations autograd holds for backward during the step (seen through
  `torch.autograd.graph.saved_tensors_hooks`) at the tiny batch, scaled to the configured one
  (activations grow with the batch; weights do not);
- with DP-SGD, per-sample gradients: one copy of each real-data parameter per sample. Opacus'
  hooks hold them all; book-keeping (`dp.grad_sample: bookkeeping`, the default) holds them only
  for the layers whose records' norms it does not take from Gram matrices, so there the figure is
  an upper bound.

All in the dtype the step ran in (fp32 on CPU); bf16 autocast on a GPU stores most activations
at half that, so the figure is an upper bound there. On CUDA the measured peak is printed too.

A preset whose weights, gradients and optimizer state would not fit in this machine's free
memory (the LDM paper preset: 1.1 billion parameters, about 18 GB with AdamW) takes its two
steps without the optimizer's update, whose state is then counted and not allocated: the dry run
checks that the preset builds, runs forward and backward, and what it costs, without taking the
machine's memory from everything else on it.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch

from cxrsynth.config import RunConfig
from cxrsynth.data.phantom import make_phantom
from cxrsynth.models import build_model
from cxrsynth.models.base import pick_device, unwrap
from cxrsynth.train import seed_everything

GB = 1024**3


@dataclass
class DryRun:
    family: str
    preset: str
    parameters: dict[str, int]  # network -> parameters
    trainable: dict[str, int]
    batch: int  # the tiny batch the steps ran at
    configured_batch: int
    step_seconds: list[float]
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # peak held for backward at the tiny batch
    dp_bytes: int  # per-sample gradients at the configured batch, when DP is on
    updated: bool  # whether the optimizers stepped (False: their state is counted, not allocated)
    device: str
    cuda_peak_bytes: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    @property
    def estimate_bytes(self) -> int:
        scale = self.configured_batch / self.batch
        return int(
            self.weights_bytes
            + self.grads_bytes
            + self.optimizer_bytes
            + self.activation_bytes * scale
            + self.dp_bytes
        )

    def lines(self) -> list[str]:
        total, trainable = sum(self.parameters.values()), sum(self.trainable.values())
        nets = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.parameters.items())
        out = [
            f"{self.preset}: {total:,} parameters ({trainable:,} trained): {nets}",
            f"two steps at batch {self.batch} on {self.device}: "
            + ", ".join(f"{s:.2f}s" for s in self.step_seconds)
            + ("" if self.updated else " (forward and backward; optimizer update skipped, its state counted)"),
            f"memory at the configured batch {self.configured_batch}: about {self.estimate_bytes / GB:.2f} GB = weights {self.weights_bytes / GB:.2f}"
            f" + gradients {self.grads_bytes / GB:.2f} + optimizer state {self.optimizer_bytes / GB:.2f}"
            f" + activations {self.activation_bytes * self.configured_batch / self.batch / GB:.2f}"
            + (f" + DP per-sample gradients {self.dp_bytes / GB:.2f}" if self.dp_bytes else "")
            + " (fp32; bf16 autocast stores most activations at half)",
        ]
        if self.cuda_peak_bytes is not None:
            out.append(f"measured CUDA peak at batch {self.batch}: {self.cuda_peak_bytes / GB:.2f} GB")
        return out + self.notes


class _Counted:
    """The peak of the bytes autograd holds saved for backward: a storage counts from the first
    tensor of it that is saved until the last of those is freed (backward frees them); parameters
    are left out, they are counted as weights."""

    def __init__(self, params: set[int]):
        self.params = params
        self.refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, functional wrappers)
            return t
        if key in self.params or size == 0:
            return t
        if key not in self.refs:
            self.live += size
            self.peak = max(self.peak, self.live)
        self.refs[key] = self.refs.get(key, 0) + 1
        weakref.finalize(t, self._release, key, size)
        return t

    def _release(self, key: int, size: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.live -= size

    @staticmethod
    def unpack(t):
        return t


class _NoUpdate:
    """An optimizer's stand-in that takes no step: gradients are made and cleared as usual."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.param_groups = opt.param_groups
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self, closure=None) -> None:
        return None


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _optimizer_state_per_param(opt: torch.optim.Optimizer) -> int:
    """Tensors of state an optimizer keeps per parameter (Adam, AdamW: 2; SGD with momentum: 1)."""
    if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        return 2 + int(any(g.get("amsgrad") for g in opt.param_groups))
    if isinstance(opt, torch.optim.SGD):
        return int(any(g.get("momentum", 0) for g in opt.param_groups))
    return 2


def available_memory() -> int:
    """Bytes of memory this machine has free for a new allocation (MemAvailable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GB


def dry_run(cfg: RunConfig, batch: int = 2, steps: int = 2, allow_update: Optional[bool] = None) -> DryRun:
    """Build `cfg`'s model, take `steps` steps at `batch` on phantom data, and measure.

    `allow_update`: take the optimizer's update (None: when weights, gradients and optimizer
    state fit in half of the free memory)."""
    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    model = build_model(cfg.model)
    p = cfg.data.phantom
    records = make_phantom(
        n=max(4 * batch, 16), sites=1, seed=p.seed, image_size=cfg.model.image_size, lateral=p.lateral
    )
    model.setup(records)
    model.to_device(device)
    model.opts = model.make_optimizers()
    params = {name: sum(q.numel() for q in net.parameters()) for name, net in model.nets.items()}
    in_opts = {id(q) for opt in model.opts.values() for g in opt.param_groups for q in g["params"] if q.requires_grad}
    trainable = {
        name: sum(q.numel() for q in net.parameters() if id(q) in in_opts) for name, net in model.nets.items()
    }
    # The model's own parameters hold every network, also those a family keeps outside `nets`
    # (the LDM's frozen VAE, a moving average of the U-Net).
    all_params = list(model.parameters()) + list(model.buffers())
    weights = _tensor_bytes(all_params)
    stepped = [q for opt in model.opts.values() for g in opt.param_groups for q in g["params"] if q.requires_grad]
    grads = _tensor_bytes(stepped)
    optimizer = sum(
        _optimizer_state_per_param(opt)
        * _tensor_bytes(q for g in opt.param_groups for q in g["params"] if q.requires_grad)
        for opt in model.opts.values()
    )
    notes = []
    if allow_update is None:
        allow_update = weights + grads + optimizer < available_memory() // 2
    if not allow_update:
        model.opts = {name: _NoUpdate(opt) for name, opt in model.opts.items()}
        notes.append(
            f"weights, gradients and optimizer state ({(weights + grads + optimizer) / GB:.1f} GB) exceed half of this machine's free memory: the optimizer update was skipped"
        )
    dp_bytes = 0
    if cfg.dp.enabled:
        real = [n for n in model.nets if model.reads_real_data(n)]
        dp_bytes = cfg.train.batch_size * sum(
            _tensor_bytes(q for q in unwrap(model.nets[n]).parameters() if q.requires_grad) for n in real
        )
    counter = _Counted({q.untyped_storage().data_ptr() for q in all_params})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    model.train()
    # The same records each step: a step that a family skips for its records (the LDM drops
    # prompts longer than its text encoder reads) would skip at every step alike.
    batch_records = records[:batch]
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            model.train_step(batch_records)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    if counter.peak == 0:
        notes.append("the steps saved no activations for backward: the family took no gradient step on these records")
    return DryRun(
        family=cfg.model.family,
        preset=cfg.name,
        parameters=params,
        trainable=trainable,
        batch=batch,
        configured_batch=cfg.train.batch_size,
        step_seconds=seconds,
        weights_bytes=weights,
        grads_bytes=grads,
        optimizer_bytes=optimizer,
        activation_bytes=counter.peak,
        dp_bytes=dp_bytes,
        updated=allow_update,
        device=str(device),
        cuda_peak_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        notes=notes,
    )
