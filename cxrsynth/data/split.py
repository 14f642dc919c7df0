"""Patient-level train/holdout split: no patient is on both sides."""

from __future__ import annotations

import hashlib
from typing import Sequence

from cxrsynth.data.records import Record


def _unit(patient_id: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_by_patient(records: Sequence[Record], holdout_fraction: float, seed: int = 0) -> list[Record]:
    """Return copies of the records with `split` set to 'train' or 'holdout', by patient.

    A patient's side depends only on its id and the seed, so adding records never moves a patient.
    """
    out = []
    for r in records:
        side = "holdout" if _unit(r.patient_id, seed) < holdout_fraction else "train"
        out.append(r.with_(split=side))
    return out
