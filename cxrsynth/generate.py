"""Checkpoint -> synthetic dataset in the dataset format, with provenance on every row."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from cxrsynth.checkpoint import checkpoint_hash, load_checkpoint
from cxrsynth.data.dataset import DatasetWriter
from cxrsynth.errors import InputError
from cxrsynth.models.base import pick_device
from cxrsynth.models.condition import Condition, as_conditions
from cxrsynth.output import check_out, fresh_dir
from cxrsynth.progress import Progress


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
) -> Path:
    """Write `n` synthetic records from `checkpoint` to `out`.

    `conditions`: None (the family draws its own) or one Condition per record (a prompt string or
    a label dict is taken as one, models/condition.py). A family refuses a condition that gives
    none of what it is conditioned on. `out` is new or empty, or
    with `replace` any folder; the dataset is written beside it and swapped in at the end, so a
    failed run leaves `out` as it was and a replaced folder keeps no file of the old one.
    """
    if n < 1:
        raise InputError(f"--n {n}: expected the number of synthetic records to write, at least 1.")
    check_out(Path(out), replace)
    conditions = as_conditions(conditions, n)
    progress = progress or Progress()
    model, cfg, _ = load_checkpoint(checkpoint, pick_device(device))
    model.eval()
    ckhash = checkpoint_hash(checkpoint)
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
                writer.add(
                    rec.with_(
                        record_id=f"syn-{i:06d}",
                        patient_id=f"syn-{i:06d}",
                        study_id=f"syn-{i:06d}",
                        site="synthetic",
                        split="",
                        provenance=f"family={cfg.model.family};checkpoint={ckhash};seed={seed + i}",
                    )
                )
            task.advance(k)
        writer.close()
    progress.say(f"wrote {n} synthetic records to {out}")
    return Path(out)
