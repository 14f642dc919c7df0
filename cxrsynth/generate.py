"""Checkpoint -> synthetic dataset in the dataset format, with provenance on every row."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cxrsynth.checkpoint import checkpoint_hash, load_checkpoint
from cxrsynth.data.dataset import DatasetWriter
from cxrsynth.errors import InputError
from cxrsynth.models.acquisition import SiteLooks, model_reference
from cxrsynth.models.base import pick_device, usable_cores
from cxrsynth.models.condition import Condition, as_conditions
from cxrsynth.output import check_out, fresh_dir
from cxrsynth.progress import Progress


def site_looks(train_state: dict, checkpoint: str | Path) -> Optional[SiteLooks]:
    """The sites' looks a federated checkpoint renders its samples in (none: the model's own look)."""
    if not train_state.get("site_looks"):
        return None
    try:
        return SiteLooks.from_dict(train_state["site_looks"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"{Path(checkpoint) / 'train_state.json'}: key site_looks is not the sites' looks cxrsynth writes ({e})."
        ) from None


def generate(
    checkpoint: str | Path,
    n: int,
    out: str | Path,
    seed: int = 0,
    conditions: Optional[Sequence[Condition]] = None,
    batch_size: int = 64,
    device: str = "auto",
    progress: Optional[Progress] = None,
    replace: bool = False,
    sampling: Optional[dict] = None,
) -> Path:
    """Write `n` synthetic records from `checkpoint` to `out`.

    `conditions`: None (the family draws its own) or one Condition per record (a prompt string or
    a label dict is taken as one, models/condition.py). A family refuses a condition that gives
    none of what it is conditioned on. `out` is new or empty, or
    with `replace` any folder; the dataset is written beside it and swapped in at the end, so a
    failed run leaves `out` as it was and a replaced folder keeps no file of the old one.
    `sampling`: settings that change how the model samples, not its weights (the family's
    `sampling_keys`, e.g. {"guidance": 4.0} for the LDM); each row's provenance names those that
    differ from the checkpoint's own.
    """
    if n < 1:
        raise InputError(f"--n {n}: expected the number of synthetic records to write, at least 1.")
    check_out(Path(out), replace)
    conditions = as_conditions(conditions, n)
    progress = progress or Progress()
    model, cfg, train_state = load_checkpoint(checkpoint, pick_device(device))
    model.eval()
    sampled = ""
    if sampling:
        own = model.config
        model.set_sampling(**sampling)
        # Provenance names the settings that differ from the checkpoint's own (its run.yaml has those).
        changed = {
            k: getattr(model.config, k) for k in sorted(sampling) if getattr(own, k) != getattr(model.config, k)
        }
        sampled = "".join(f";{k}={v}" for k, v in changed.items())
    ckhash = checkpoint_hash(checkpoint)
    looks = site_looks(train_state, checkpoint)
    if looks is not None:
        # Each study in one site's look: the grey-level map starts from this model's own samples.
        reference = model_reference(model, seed=seed + 7_000_000)
        look_of = looks.draw(n, np.random.default_rng([seed, 7]))
    task = progress.task(f"generate {cfg.model.family}", n)
    # Each batch's images go to disk as they are made (DatasetWriter): memory holds one batch.
    with fresh_dir(Path(out), replace) as tmp:
        writer = DatasetWriter(tmp)
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            cond = conditions[start : start + k] if conditions is not None else None
            batch = model.generate(k, cond, seed=seed + start)
            for j, rec in enumerate(batch):
                i = start + j
                look = ""
                if looks is not None:
                    site = int(look_of[i])
                    rec = rec.with_(
                        image=looks.render(rec.image, site, reference),
                        lateral=looks.render(rec.lateral, site, reference),
                    )
                    look = f";look={site}"
                writer.add(
                    rec.with_(
                        record_id=f"syn-{i:06d}",
                        patient_id=f"syn-{i:06d}",
                        study_id=f"syn-{i:06d}",
                        site="synthetic",
                        split="",
                        provenance=f"family={cfg.model.family};checkpoint={ckhash};seed={seed + i}{look}{sampled}",
                    )
                )
            task.advance(k)
        writer.close()
    progress.say(f"wrote {n} synthetic records to {out}")
    return Path(out)


def _generate_quietly(*args, **kwargs) -> Path:
    import torch

    torch.set_num_threads(1)
    return generate(*args, progress=Progress(quiet=True), **kwargs)


def generate_side_by_side(
    jobs: Sequence[tuple[str | Path, str | Path]],
    n: int,
    seed: int = 0,
    conditions: Optional[Sequence[Condition]] = None,
    progress: Optional[Progress] = None,
    workers: Optional[int] = None,
    sampling: Optional[dict] = None,
) -> None:
    """`generate` for each (checkpoint, out) with the same n, seed, conditions and sampling: on a CPU with
    cores to spare, the jobs after the first run at once in `workers` spawned processes (default:
    the cores but one), one thread each, while this process writes the first (sampling a small
    model gains little from a second thread, so separate processes nearly halve the time on two
    cores). On a GPU, or one core, one after another. The records are those `generate` writes
    one job at a time on one thread."""
    import torch

    progress = progress or Progress()
    if workers is None:
        cores = usable_cores()
        workers = 0 if torch.cuda.is_available() else cores - 1
    if len(jobs) < 2 or workers < 1:
        for checkpoint, out in jobs:
            generate(checkpoint, n, out, seed=seed, conditions=conditions, progress=progress, sampling=sampling)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    rest, threads = jobs[1:], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Spawned, not forked: a fork of a process holding torch's thread pool can hang.
        with ProcessPoolExecutor(min(len(rest), workers), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(_generate_quietly, c, n, o, seed=seed, conditions=conditions, sampling=sampling)
                for c, o in rest
            ]
            generate(jobs[0][0], n, jobs[0][1], seed=seed, conditions=conditions, progress=progress, sampling=sampling)
            for (_, out), future in zip(rest, futures):
                future.result()
                progress.say(f"wrote {n} synthetic records to {out}")
    finally:
        torch.set_num_threads(threads)
