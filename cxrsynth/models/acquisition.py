"""A site's acquisition look as a few numbers, and synthetic images rendered in it.

Scanners, detector responses and a hospital's processing give its radiographs their own grey
levels (exposure, contrast, gamma): a public base pretrained on other hospitals draws its images
in theirs, and a classifier trained on them meets another look on the site's holdout. DP-SGD on
a site's hundred patients cannot carry that look into the weights (its noise is many times the
signal, README "What a DP step carries"), but a look is a few numbers. Each site shares the mean,
over its patients, of its frontal images' intensity quantiles at `LEVELS`:

- every patient's vector (the mean over their studies) is taken relative to a public centre the
  coordinator sends (the quantiles of the starting model's own samples) and clipped to L2 norm
  `clip`, so one patient moves the sum by at most `clip`;
- with DP on, the sum gets Gaussian noise of `noise_multiplier x clip` (the Gaussian mechanism,
  counted in the site's RDP ledger as one step at sample rate 1); it is divided by the number of
  patients, which the run already knows (the DP-SGD sample rate is set from it);
- the result is made non-decreasing and kept in [0, 1] (post-processing, no privacy cost).

Generation renders each synthetic study in one site's look, drawn in proportion to the sites'
studies: a monotone grey-level map that takes the model's own mean quantiles (measured on its
samples) to the site's, applied to every image of the study. Differences between images (a large
effusion is brighter) are kept; only the response curve changes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional, Sequence

import numpy as np

LEVELS = np.array([0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.98])


def image_quantiles(image: np.ndarray) -> np.ndarray:
    """An 8-bit image's grey-level quantiles at `LEVELS`, in [0, 1]."""
    return np.quantile(np.asarray(image, dtype=np.float32) / 255.0, LEVELS)


def monotone(q: np.ndarray) -> np.ndarray:
    """A quantile vector kept in [0, 1] and made non-decreasing (a noisy one may be neither)."""
    return np.maximum.accumulate(np.clip(np.asarray(q, dtype=float), 0.0, 1.0))


def mean_quantiles(images: Iterable[np.ndarray]) -> np.ndarray:
    qs = [image_quantiles(im) for im in images]
    if not qs:
        raise ValueError("no images to measure the grey levels of")
    return np.mean(qs, axis=0)


def site_look(
    frontals: Iterable[tuple[str, np.ndarray]],
    center: Sequence[float],
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """The site's mean quantiles from (patient id, frontal image) pairs: each patient's mean
    vector, relative to `center` and clipped to L2 norm `clip`, summed, with Gaussian noise of
    `noise_multiplier * clip` (0: none), over the number of patients. Returns (quantiles, patients)."""
    center = np.asarray(center, dtype=float)
    if center.shape != LEVELS.shape:
        raise ValueError(f"the centre has {center.size} values; {LEVELS.size} quantile levels expected")
    by_patient: dict[str, list[np.ndarray]] = defaultdict(list)
    for patient, image in frontals:
        by_patient[patient].append(image_quantiles(image))
    if not by_patient:
        raise ValueError("the site has no frontal image to measure")
    total = np.zeros_like(center)
    for qs in by_patient.values():
        d = np.mean(qs, axis=0) - center
        norm = float(np.linalg.norm(d))
        total += d * min(1.0, clip / norm) if norm > 0 else d
    if noise_multiplier > 0:
        total += rng.normal(0.0, noise_multiplier * clip, total.shape)
    return monotone(center + total / len(by_patient)), len(by_patient)


def grey_map(image: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`image` (uint8) through the monotone map that takes quantiles `source` to `target`."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    y = np.interp(x, np.r_[0.0, monotone(source), 1.0], np.r_[0.0, monotone(target), 1.0])
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


class SiteLooks:
    """The sites' looks a model renders its samples in: per site its studies (the weight) and
    its mean quantiles, with a note on how they were released. A federated checkpoint keeps them in
    its `train_state.json` (`site_looks`); they are aggregates, never a record's value."""

    def __init__(self, weights: Sequence[float], quantiles: Sequence[Sequence[float]], note: str = ""):
        if len(weights) != len(quantiles) or not weights:
            raise ValueError("one weight per site's quantiles, at least one site")
        self.weights = np.asarray(weights, dtype=float)
        self.quantiles = np.array([monotone(q) for q in quantiles])
        if self.quantiles.shape[1] != LEVELS.size or (self.weights <= 0).any():
            raise ValueError(f"each look has {LEVELS.size} quantiles and a positive weight")
        self.note = note

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Which look each of n studies is rendered in (site indices, in proportion to the weights)."""
        return rng.choice(len(self.weights), size=n, p=self.weights / self.weights.sum())

    def render(self, image: Optional[np.ndarray], site: int, reference: np.ndarray) -> Optional[np.ndarray]:
        return None if image is None else grey_map(image, reference, self.quantiles[site])

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "quantiles": self.quantiles.tolist(), "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> "SiteLooks":
        return cls(d["weights"], d["quantiles"], d.get("note", ""))


def model_reference(model, n: int = 64, seed: int = 0) -> np.ndarray:
    """The mean quantiles of `n` of the model's own frontal samples (its label mix drawn by itself):
    the public centre the sites' looks are taken about, and where generation's grey-level map starts."""
    import copy

    import torch

    # Sampled from a copy: sampling may leave settings in a model's extra state (the LDM's
    # tokenizer keeps its padding), and a run pins the hash of the base it sends out.
    sampler = copy.deepcopy(model)
    sampler.eval()
    with torch.no_grad():
        records = sampler.generate(n, None, seed=seed)
    del sampler
    return mean_quantiles(r.image for r in records if r.image is not None)
