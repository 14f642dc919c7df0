"""The small interface every model family implements.

Training, federation, DP, generation and the audit are written once against it:

- built from its pydantic config: `Model(config)`;
- `setup(records)`: fit what depends on the training data (vocabulary, tokenizer) before step 0;
- `setup_from_counts(counts, n_reports)`: the same in federated runs, from the token counts the
  sites send (of each record's `vocabulary_text`; no report text reaches the server);
- `fit_label_counts(counts)`: in federated runs, fit the label mix generation draws from to the
  sites' merged label counts (no records reach the server);
- `nets`: an `nn.ModuleDict` of the trainable networks, and `reads_real_data(name)` saying which
  of them see real records (DP-SGD applies to those; the rest are post-processing);
- `opts`: one optimizer per entry of `nets`, made by `make_optimizers()`;
- `nets_stepping()`: the real-data networks the next `train_step` updates (DP-SGD shares the
  batch's noise budget among them);
- `train_step(records)`: one step on a batch of records, returning scalar losses;
- `state()` / `load_state()`: flat name -> numpy array mapping (what Flower ships, safetensors on disk);
- `set_sampling(**settings)`: change how `generate` samples (the config keys in
  `sampling_keys`, e.g. the LDM's guidance scale) without touching the weights;
- `draw_labels(n, seed)`: label sets from the label mix the model keeps (None if it keeps none);
- `generate(n, conditions, seed)`: synthetic records (image(s), report, labels); `conditions`
  None (the model draws what it conditions on itself, e.g. from `draw_labels`) or one
  `Condition` per record (models/condition.py: labels, prompt, images; each family reads the
  parts it is conditioned on);
- `save_extra_files(out)`: files of the family's own beside a checkpoint's weights;
- `member_scores(records)`: per-record score for membership inference, higher = more member-like.

`cxrsynth.privacy.dp` wraps entries of `nets` in Opacus `GradSampleModule`s and entries of `opts` in
`DPOptimizer`s in place, so a family must reach its networks and optimizers only through these
two dicts inside `train_step`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from pydantic import ValidationError
from torch import nn

from cxrsynth.data.records import Record
from cxrsynth.data.text import pseudo_reports
from cxrsynth.errors import InputError
from cxrsynth.models.condition import Condition


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under an Opacus GradSampleModule (or DDP) wrapper."""
    while hasattr(module, "_module"):
        module = module._module
    return module


def weight_average(average: nn.Module, decay: float, **options: Any) -> EMAModel:
    """diffusers' EMAModel whose averages are `average`'s own parameters: one copy of the weights,
    sampled from, saved and loaded with that module rather than kept apart by EMAModel."""
    ema = EMAModel([], decay=decay, **options)
    ema.shadow_params = list(average.parameters())
    return ema


def update_average(ema: EMAModel, updates_done: int, live: nn.Module) -> None:
    """One EMAModel step toward `live`'s weights. Its decay schedule reads its step count, set
    here from the model's own count of updates (this one included), so a resumed or federated
    run goes on where it was."""
    ema.optimization_step = updates_done
    ema.step(live.parameters())


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class GenerativeModel(nn.Module):
    family: ClassVar[str] = ""
    # Keys of `extra_state()` that hold the label mix, which a federation refits from the sites'
    # label counts (`fit_label_counts`); they are not part of a pretrained base's identity.
    label_mix_keys: ClassVar[tuple[str, ...]] = ()
    # Config keys that only change how `generate` samples, set per generation by `set_sampling`.
    sampling_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.nets = nn.ModuleDict()
        self.opts: dict[str, torch.optim.Optimizer] = {}
        self.device = torch.device("cpu")

    # ---- data-dependent setup -------------------------------------------------------------
    def setup(self, records: Sequence[Record]) -> None:
        """Fit data-dependent parts (vocabulary, tokenizer). Default: nothing to fit."""

    def setup_from_counts(self, counts: dict[str, int], n_reports: int) -> None:
        """Fit data-dependent parts from token counts merged over sites (cxrsynth.client.task.token_counts).
        Default: `setup` on pseudo-reports that hold each token exactly its count."""
        self.setup(pseudo_reports(counts, n_reports))

    def start_fine_tuning(self) -> None:
        """Called once where a run starts from a pretrained base, after its hash was checked and
        before the first step (at each site in round 1, and in `cxrsynth train`). Default: nothing."""

    def fit_label_counts(self, counts: dict[str, int]) -> None:
        """Fit the label mix unconditional generation draws from, from label counts merged over
        sites (cxrsynth.client.task.label_counts) instead of records. Default: the family keeps none."""

    @classmethod
    def vocabulary_text(cls, config: Any, record: Record) -> str:
        """The text of a record this family (with `config`) learns words from; what a site counts
        for a shared (federated) vocabulary, without building the networks. Default: the report."""
        return record.report

    def extra_state(self) -> dict:
        """JSON-serialisable state that is not arrays (vocabulary, tokenizer); saved with checkpoints."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        """Restore what `extra_state` returned."""

    def save_extra_files(self, out: Path) -> None:
        """Files a checkpoint folder holds beside the weights in a format of the family's own
        (the LDM writes a diffusers-format folder). Default: none."""

    # ---- training -------------------------------------------------------------------------
    def reads_real_data(self, name: str) -> bool:
        raise NotImplementedError

    def nets_stepping(self) -> list[str]:
        """The real-data networks the next `train_step` will update: by default all of them."""
        return [name for name in self.nets if self.reads_real_data(name)]

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def noise_only_step(self, names: Sequence[str]) -> None:
        """An empty Poisson batch: each DP optimizer among `names` still takes its noisy step (the
        accounting assumes a release per sampled batch, empty or not). A plain optimizer steps
        with no gradient: nothing moves in one process, and under data-parallel training
        (cxrsynth.distributed) this rank takes part in the exchange of the other ranks' gradients."""
        for name in names:
            opt = self.opts[name]
            opt.zero_grad(set_to_none=True)
            if hasattr(opt, "noise_multiplier"):
                for p in self.nets[name].parameters():
                    if p.requires_grad:
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            opt.step()

    def empty_share_step(self) -> dict[str, float]:
        """Data-parallel training: this rank drew none of a global batch the other ranks drew
        records of. It must take part in every gradient exchange their steps make, in the same
        order; by default that is the step on an empty batch."""
        return self.train_step([])

    def train_step(self, records: list[Record]) -> dict[str, float]:
        raise NotImplementedError

    def to_device(self, device: torch.device) -> "GenerativeModel":
        self.device = device
        return self.to(device)

    # ---- weights --------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Flat name -> array of all weights and buffers, independent of DP wrappers."""
        out: dict[str, np.ndarray] = {}
        for name, net in self.nets.items():
            for k, v in unwrap(net).state_dict().items():
                out[f"{name}.{k}"] = v.detach().cpu().numpy().copy()
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        per_net: dict[str, dict[str, torch.Tensor]] = {n: {} for n in self.nets}
        for key, arr in state.items():
            name, _, rest = key.partition(".")
            if name not in per_net:
                raise KeyError(f"state key {key!r} names no network of {self.family} ({list(per_net)})")
            per_net[name][rest] = torch.as_tensor(np.asarray(arr))
        for name, net in self.nets.items():
            unwrap(net).load_state_dict(per_net[name], strict=True)

    # ---- generation and audit -------------------------------------------------------------
    def draw_labels(self, n: int, seed: int = 0) -> Optional[list[dict]]:
        """`n` label sets drawn from the label mix the model keeps (fitted to the training or the
        sites' label counts), to condition `generate` on; None for a family that does not
        condition on labels."""
        return None

    def set_sampling(self, **settings: Any) -> None:
        """Sample with `settings` (keys of `sampling_keys`) in place of the config's values; the
        weights, and what the checkpoint holds, are unchanged. A key the family does not sample
        with, or a value its config refuses, is an InputError naming it."""
        unknown = sorted(set(settings) - set(self.sampling_keys))
        if unknown:
            has = ", ".join(self.sampling_keys) or "none"
            raise InputError(
                f"sampling setting {unknown[0]!r}: the {self.family} family does not sample with it (its settings: {has})."
            )
        try:
            self.config = type(self.config).model_validate({**self.config.model_dump(), **settings})
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InputError(f"sampling setting {where}: {err['msg']}.") from None

    def generate(self, n: int, conditions: Optional[Sequence[Condition]] = None, seed: int = 0) -> list[Record]:
        raise NotImplementedError

    def member_scores(self, records: Sequence[Record]) -> np.ndarray:
        raise NotImplementedError
