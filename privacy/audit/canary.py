"""Planted copies ("canaries") for checking that the audit catches disguised memorization.

A steward can plant these into a copy of a synthetic set and run the audit to see its catch
rate on the site's own kind of images; the tests do exactly that. The disguises are the ones
memorized generations wear in practice (Dar et al. 2024, Fig. 3): exact, mirrored, shifted,
re-contrasted, noised, cropped and resized.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image


def _shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = rng.integers(-3, 4, size=2)
    dx = dx or 2
    out = np.roll(img, (int(dy), int(dx)), axis=(0, 1))
    # Fill the wrapped-in border with the edge values instead of the opposite side.
    if dy > 0:
        out[:dy] = out[dy]
    elif dy < 0:
        out[dy:] = out[dy - 1]
    if dx > 0:
        out[:, :dx] = out[:, dx : dx + 1]
    elif dx < 0:
        out[:, dx:] = out[:, dx - 1 : dx]
    return out


def _recontrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gamma = rng.uniform(0.75, 1.3)
    gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    return np.clip(255 * (img / 255.0) ** gamma * gain + offset, 0, 255).astype(np.uint8)


def _noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def _crop_resize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    frac = rng.uniform(0.85, 0.95)
    ch, cw = int(h * frac), int(w * frac)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(img[top : top + ch, left : left + cw])
    return np.asarray(crop.resize((w, h), Image.BILINEAR))


DISGUISES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "exact": lambda img, rng: img.copy(),
    "mirrored": lambda img, rng: img[:, ::-1].copy(),
    "shifted": _shift,
    "recontrasted": _recontrast,
    "noised": _noise,
    "cropped": _crop_resize,
}


def disguise_image(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind not in DISGUISES:
        raise ValueError(f"unknown disguise {kind!r}; one of {list(DISGUISES)}")
    return DISGUISES[kind](np.asarray(img, dtype=np.uint8), rng)
