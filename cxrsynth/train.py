"""The local training loop, shared by `cxrsynth train` and the Flower ClientApp.

The families differ in their step, not in the loop: batching (uniform or Poisson sampling for
DP-SGD), logging, checkpointing and resuming live here once.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from cxrsynth.checkpoint import load_checkpoint, load_optimizers, save_checkpoint
from cxrsynth.config import RunConfig
from cxrsynth.data.records import Record
from cxrsynth.data.stream import (
    IndexBatchSampler,
    ManifestDataset,
    RecordsDataset,
    RecordView,
    as_dataset,
    record_loader,
)
from cxrsynth.errors import InputError
from cxrsynth.models import build_model
from cxrsynth.models.base import GenerativeModel, pick_device
from cxrsynth.pretrained import apply_finetune, set_finetune_lr
from cxrsynth.progress import Progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class BatchSampler:
    """Batches of records drawn by `IndexBatchSampler` (see there for the sampling modes), for
    callers that hold records in memory and step by hand (benchmarks, tests)."""

    def __init__(self, records: Sequence[Record], batch_size: int, seed: int, mode: str = "shuffle"):
        if not records:
            raise InputError("no training records: the dataset (after the holdout split) is empty.")
        self.records = list(records)
        self.indices = IndexBatchSampler(
            len(self.records), batch_size, seed, mode, patient_ids=[r.patient_id for r in self.records]
        )
        self.batch_size = self.indices.batch_size
        self.mode = mode
        self.patients = self.indices.patients

    @property
    def sample_rate(self) -> float:
        return self.indices.sample_rate

    def __iter__(self) -> Iterator[list[Record]]:
        return self

    def __next__(self) -> list[Record]:
        return [self.records[i] for i in self.indices.next_global()]


@dataclass
class TrainResult:
    steps_done: int
    step: int  # global step counter after training
    losses: dict[str, float]  # mean of each loss over this call's steps
    seconds: float
    history: list[dict] = field(default_factory=list)


def train_steps(
    model: GenerativeModel,
    records: Sequence[Record],
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    sampling: str = "shuffle",
    start_step: int = 0,
    log_every: int = 10,
    on_step: Optional[Callable[[int, dict], None]] = None,
    progress: Optional[Progress] = None,
    label: str = "train",
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> TrainResult:
    """Run `steps` training steps of `model` on `records` (a sequence of records, or a dataset
    of `cxrsynth.data.stream` whose images are decoded on access, by `workers` DataLoader
    processes when > 0). No I/O beyond reading the dataset and what `on_step` does.

    `rank` / `world_size`: data-parallel training (cxrsynth.distributed); this process steps on
    its share of each global batch, which every rank draws alike.
    """
    dataset = as_dataset(records)
    patients = dataset.patient_ids() if sampling == "poisson-patient" else None
    sampler = IndexBatchSampler(
        len(dataset), batch_size, seed + start_step, sampling, patients, steps=steps, rank=rank, world_size=world_size
    )
    loader = record_loader(dataset, sampler, workers, getattr(model, "device", None))
    step_on = model.train_step
    if world_size > 1:
        from cxrsynth.distributed import data_parallel

        step_on = data_parallel(model)
    model.train()
    sums: dict[str, float] = {}
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = progress.task(label, total=steps) if progress else None
    for i, batch in enumerate(loader):
        losses = step_on(batch)
        for k, v in losses.items():
            if not math.isfinite(v):
                raise FloatingPointError(f"loss {k} became {v} at step {start_step + i + 1}; lower the learning rate.")
            sums[k] = sums.get(k, 0.0) + float(v)
        step = start_step + i + 1
        entry = {"step": step, **{k: float(v) for k, v in losses.items()}}
        history.append(entry)
        if on_step:
            on_step(step, entry)
        if bar is not None:
            bar.advance(
                1,
                " ".join(f"{k}={v:.3g}" for k, v in list(losses.items())[:3])
                if step % log_every == 0 or i == steps - 1
                else None,
            )
    if bar is not None:
        bar.done()
    return TrainResult(
        steps_done=steps,
        step=start_step + steps,
        losses={k: v / steps for k, v in sums.items()},
        seconds=time.perf_counter() - t0,
        history=history,
    )


def load_run_data(cfg: RunConfig) -> list[Record]:
    """The records a run trains on: the dataset at `data.path`, or phantom data; split by patient."""
    from cxrsynth.data.split import split_by_patient

    if cfg.data.path is not None:
        from cxrsynth.data.dataset import read_dataset

        records, report = read_dataset(cfg.data.path)
        if report.skipped:
            for p in report.problems[:10]:
                print(f"skipped {p}")
            print(f"{report.skipped} row(s) of {cfg.data.path} skipped; {report.kept} kept.")
    else:
        from cxrsynth.data.phantom import make_phantom

        p = cfg.data.phantom
        records = make_phantom(n=p.n, sites=p.sites, seed=p.seed, image_size=p.image_size, lateral=p.lateral)
    if not any(r.split for r in records):
        records = split_by_patient(records, cfg.data.holdout_fraction, cfg.data.split_seed)
    return records


def load_run_dataset(cfg: RunConfig):
    """The run's data as a dataset with its split column set: a dataset directory read lazily
    (`ManifestDataset`: images decoded on access), or phantom records in memory."""
    if cfg.data.path is None:
        return RecordsDataset(load_run_data(cfg))
    from cxrsynth.data.split import _unit

    dataset, report = ManifestDataset.open(cfg.data.path)
    if report.skipped:
        for p in report.problems[:10]:
            print(f"skipped {p}")
        print(f"{report.skipped} row(s) of {cfg.data.path} skipped; {report.kept} kept.")
    if not any(dataset.splits()):
        frac, seed = cfg.data.holdout_fraction, cfg.data.split_seed
        dataset.with_splits(["holdout" if _unit(p, seed) < frac else "train" for p in dataset.patient_ids()])
    return dataset


def training_set(cfg: RunConfig, dataset):
    """The training side of the split, with labels kept on `data.labeled_fraction` of it (the
    same records `apply_labeled_fraction` keeps them on)."""
    train_set = dataset.subset([i for i, s in enumerate(dataset.splits()) if s != "holdout"])
    fraction = cfg.data.labeled_fraction
    if fraction < 1.0:
        train_set.keep_labels = np.random.default_rng(cfg.train.seed).random(len(train_set)) < fraction
    return train_set


def apply_labeled_fraction(records: Sequence[Record], fraction: float, seed: int) -> list[Record]:
    """Keep labels on only `fraction` of the records (the few-label setting); the rest lose labels."""
    if fraction >= 1.0:
        return list(records)
    rng = np.random.default_rng(seed)
    keep = rng.random(len(records)) < fraction
    from cxrsynth.data.records import empty_labels

    return [r if k else r.with_(labels=empty_labels()) for r, k in zip(records, keep)]


def dp_sampling(records, batch_size: int, privacy_unit: str) -> tuple[str, float, int]:
    """(sampling mode, the accountant's sample rate, number of privacy units) of DP-SGD on
    `records` (a sequence of records or a dataset)."""
    mode = "poisson-patient" if privacy_unit == "patient" else "poisson"
    dataset = as_dataset(records)
    sampler = IndexBatchSampler(len(dataset), batch_size, 0, mode, dataset.patient_ids())
    return mode, sampler.sample_rate, sampler.units


def site_ledger_path(data_path: Optional[Path]) -> Optional[Path]:
    """Where a site keeps the DP ledger of a dataset directory, across runs: beside it.
    Phantom data (no path) has no ledger: nobody's privacy is spent on it."""
    return None if data_path is None else Path(data_path).parent / f"{Path(data_path).name}.dp-ledger.json"


def train(
    cfg: RunConfig,
    out: Optional[Path] = None,
    resume: bool = False,
    privatize: Optional[Callable] = None,
    progress: Optional[Progress] = None,
) -> Path:
    """Train one site (no federation): data -> model -> steps -> checkpoint in `out`.

    `privatize(model, cfg, sample_rate, history)` is given by the caller when DP is on (cxrsynth.privacy.dp); it wraps
    the real-data networks in place and returns a ledger callable.
    """
    out = Path(out or cfg.train.out)
    progress = progress or Progress()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    from cxrsynth.distributed import world_from_env

    # Under torchrun every rank trains alike on its share of each batch; rank 0 writes.
    rank, world = world_from_env()
    if rank != 0:
        progress = Progress(quiet=True)
    if cfg.federation.acquisition:
        progress.say(
            "federation.acquisition: the sites' looks are shared in a federated run; one site trained here keeps its own look, so it is not used"
        )
    seed_everything(cfg.train.seed)
    device = pick_device(cfg.train.device)
    train_records = training_set(cfg, load_run_dataset(cfg))
    start_step = 0
    history: list[dict] = []
    spent: list = []  # the DP accountant's history so far: a resumed run keeps counting epsilon
    base: Optional[dict] = None  # the pretrained base this run fine-tunes, recorded with every checkpoint
    if resume and (out / "run.yaml").is_file():
        model, _, state = load_checkpoint(out, device)
        start_step = int(state.get("step", 0))
        history = state.get("history", [])
        spent = (state.get("privacy_ledger") or {}).get("history") or []
        base = state.get("base")
        progress.say(f"resuming from {out} at step {start_step}")
    elif cfg.train.init_from is not None:
        from cxrsynth.pretrained import load_base

        model, card = load_base(cfg, device)
        model.start_fine_tuning()
        base = {**card.model_dump(), "path": str(cfg.train.init_from)}
        progress.say(
            f"fine-tuning the base {cfg.train.init_from} (sha256 {card.sha256[:16]}..., {card.pretrained_on})"
        )
    else:
        model = build_model(cfg.model)
        # Read once, one record at a time (a dataset directory's images are decoded here, not kept).
        model.setup(RecordView(train_records))
        model.to_device(device)
    trainable, total = apply_finetune(model, cfg.train.finetune)
    if trainable < total:
        progress.say(f"train.finetune: {trainable:,} of {total:,} parameters are trained; the rest stay as they are")
    model.opts = model.make_optimizers()
    if base is not None:
        set_finetune_lr(model, cfg.train.finetune_lr)
    if start_step:
        load_optimizers(out, model)
    remaining = cfg.train.steps - start_step
    if remaining <= 0:
        progress.say(f"{out} already has {start_step} of {cfg.train.steps} steps; nothing to do.")
        return out
    ledger = None
    sampling = "shuffle"
    if cfg.dp.enabled:
        if privatize is None:
            raise InputError("dp.enabled is true but no DP wiring was given (cxrsynth.privacy.dp).")
        sampling, rate, _ = dp_sampling(train_records, cfg.train.batch_size, cfg.dp.privacy_unit)
        # The site's ledger beside its dataset (where the ClientApp keeps it too): one budget per dataset.
        ledger = privatize(model, cfg, rate, spent, ledger_file=site_ledger_path(cfg.data.path))
    log_path = out / "losses.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    every = cfg.train.checkpoint_every
    with open(log_path if rank == 0 else os.devnull, "a", encoding="utf-8") as log:

        def on_step(step: int, entry: dict) -> None:
            if rank != 0:
                return
            log.write(json.dumps(entry) + "\n")
            history.append(entry)
            if every and step % every == 0 and step < cfg.train.steps:
                log.flush()
                save_checkpoint(out, model, cfg, _train_state(step, history, ledger, base))

        result = train_steps(
            model,
            train_records,
            steps=remaining,
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,
            sampling=sampling,
            start_step=start_step,
            log_every=cfg.train.log_every,
            on_step=on_step,
            progress=progress,
            label=f"train {cfg.model.family}",
            workers=cfg.train.workers,
            rank=rank,
            world_size=world,
        )
    if rank == 0:
        save_checkpoint(out, model, cfg, _train_state(result.step, history, ledger, base))
        progress.say(
            f"trained {result.steps_done} steps in {result.seconds:.1f}s"
            + (f" on {world} processes" if world > 1 else "")
            + f"; checkpoint: {out}"
        )
    return out


def _train_state(step: int, history: list[dict], ledger, base: Optional[dict] = None) -> dict:
    state = {"step": step, "history": history[-2000:]}
    if ledger is not None:
        state["privacy_ledger"] = ledger()
        if base is not None:
            state["privacy_ledger"]["base"] = base
    if base is not None:
        state["base"] = base
    return state
