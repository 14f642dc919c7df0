"""Phantom chest radiographs with labelled reports (first cut: a few labels drawn).

`make_phantom(n, sites, seed, image_size, lateral)` is the API the rest of the project uses.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.data.records import LABELS, Record, empty_labels


def _draw(rng, size, labels):
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.15)
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
        img[lung] = 0.05
    heart_r = 0.2 if labels["Cardiomegaly"] == 1 else 0.12
    heart = ((xx - 0.55) / heart_r) ** 2 + ((yy - 0.68) / 0.12) ** 2 < 1
    img[heart] = 0.7
    if labels["Pleural Effusion"] == 1:
        img[(yy > 0.7) & (np.abs(xx - 0.5) > 0.15)] = 0.6
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_phantom(n: int, sites: int = 3, seed: int = 0, image_size: int = 64, lateral: bool = True) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = empty_labels()
        labels["Cardiomegaly"] = int(rng.random() < 0.3)
        labels["Pleural Effusion"] = int(rng.random() < 0.3)
        labels["No Finding"] = int(not (labels["Cardiomegaly"] or labels["Pleural Effusion"]))
        f = "The heart is enlarged." if labels["Cardiomegaly"] else "Heart size is normal."
        f += " There is a pleural effusion." if labels["Pleural Effusion"] else " No pleural effusion."
        imp = "No acute cardiopulmonary process." if labels["No Finding"] else "Abnormal study."
        img = _draw(rng, image_size, labels)
        out.append(
            Record(
                record_id=f"r{i:06d}",
                patient_id=f"p{i // 2:06d}",
                study_id=f"s{i:06d}",
                site=f"site{i % sites}",
                view="PA",
                findings=f,
                impression=imp,
                labels=labels,
                image=img,
                lateral=img.T.copy() if lateral else None,
            )
        )
    return out


__all__ = ["make_phantom", "LABELS"]
