"""Shared helpers of the audit and release tests (no tests here).

`varied_records` draws chest-like images whose anatomy varies by patient (lung fields, heart,
ribs, low-frequency texture), so that distinct patients are distinct images; a copy of one
patient's image is then a real outlier, as it is in clinical data.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.data.records import Record, empty_labels

COMMON = [
    "Heart size is normal.",
    "The lungs are clear.",
    "No pleural effusion or pneumothorax.",
    "There is mild cardiomegaly.",
    "Small left pleural effusion.",
    "No focal consolidation.",
    "Mediastinal contours are unremarkable.",
    "Degenerative changes of the thoracic spine.",
    "Bibasilar atelectasis.",
    "No acute cardiopulmonary process.",
]
ORGANS = ["left upper lobe", "right middle lobe", "lingula", "right apex", "left base"]


def patient_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.55 + rng.normal(0, 0.05))
    for side in (-1, 1):
        cx, cy = 0.5 + side * rng.uniform(0.15, 0.22), rng.uniform(0.42, 0.52)
        rx, ry = rng.uniform(0.11, 0.17), rng.uniform(0.25, 0.34)
        img -= 0.35 * np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) ** 2)
    hx, hy, hr = rng.uniform(0.5, 0.6), rng.uniform(0.6, 0.7), rng.uniform(0.09, 0.16)
    img += 0.3 * np.exp(-(((xx - hx) ** 2 + (yy - hy) ** 2) / hr**2) ** 2)
    img += 0.04 * np.sin(2 * np.pi * (yy * rng.uniform(6, 9) + rng.uniform(0, 1)))
    k = 6
    coarse = rng.normal(0, 1, (k, k))
    from PIL import Image

    tex = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    img += 0.06 * tex
    img += rng.normal(0, 0.015, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def report(rng: np.random.Generator, rare: bool) -> tuple[str, str]:
    sents = list(rng.choice(COMMON, size=3, replace=False))
    if rare:
        # A sentence only this patient has: what a memorizing model would leak.
        sents.append(f"Compared with the study of {rng.integers(1, 28)} {rng.choice(['March', 'June', 'October'])}, a {rng.integers(3, 19)} mm nodule in the {rng.choice(ORGANS)} has grown by {rng.integers(1, 6)} mm.")
    return " ".join(sents[:-1]), sents[-1]


def varied_records(n: int, seed: int, split: str = "train", site: str = "site0", prefix: str = "r", rare: bool = True) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        findings, impression = report(rng, rare)
        out.append(
            Record(
                record_id=f"{prefix}{i:05d}",
                patient_id=f"{prefix}p{i:05d}",
                study_id=f"{prefix}s{i:05d}",
                site=site,
                split=split,
                findings=findings,
                impression=impression,
                labels=empty_labels(),
                image=patient_image(rng),
            )
        )
    return out
