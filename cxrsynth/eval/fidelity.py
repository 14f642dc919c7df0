"""Fidelity: the Frechet distance between real and synthetic image features.

FID (Heusel et al., 2017) with a pluggable extractor: the penultimate features of a classifier
trained on the real training images (default), a classifier saved by `save_classifier`
(`.safetensors`), or any module mapping (B, 1, S, S) images in [-1, 1] to features, saved with
torch.export (`.pt2`, batch size 2 or dynamic) or TorchScript (other suffixes).
The extractor used is always reported, since distances from different extractors do not compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.linalg
import torch

from cxrsynth.data.transforms import images_to_tensor
from cxrsynth.errors import InputError
from cxrsynth.eval.classifier import CXRClassifier, load_classifier


@dataclass
class Extractor:
    name: str
    dim: int
    _fn: Callable[[torch.Tensor], torch.Tensor]
    image_size: int

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        chunks = [
            self._fn(images_to_tensor(images[i : i + batch_size], self.image_size)).reshape(-1, self.dim)
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks).double().numpy() if chunks else np.zeros((0, self.dim))


def classifier_extractor(model: CXRClassifier, name: str) -> Extractor:
    model.eval()
    return Extractor(name, model.feature_dim, model.features, model.image_size)


def file_extractor(path: str | Path, image_size: int) -> Extractor:
    """An extractor from a local weights file; nothing is ever downloaded."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"--extractor {path}: no such file; give `classifier` or a local .safetensors (cxrsynth classifier) or TorchScript .pt file."
        )
    if path.suffix == ".safetensors":
        model = load_classifier(path)
        return classifier_extractor(
            model, f"classifier weights {path.name} ({model.feature_dim}-d penultimate features)"
        )
    if path.suffix == ".pt2":
        try:
            module = torch.export.load(str(path)).module()
        except Exception as e:  # noqa: BLE001 - torch.export raises many kinds on a bad file
            raise InputError(
                f"--extractor {path}: not a torch.export program ({str(e).splitlines()[0] if str(e) else e.__class__.__name__}); save one with torch.export.save(torch.export.export(model, (example,)), path)."
            ) from None
        kind = "exported program"
    else:
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise InputError(
                f"--extractor {path}: not a TorchScript module ({str(e).splitlines()[0]}); save one with torch.jit.save(torch.jit.script(model), path), or a torch.export program as .pt2."
            ) from None
        module.eval()
        kind = "TorchScript"
    with torch.no_grad():
        dim = int(module(torch.zeros(2, 1, image_size, image_size)).reshape(2, -1).shape[1])
    return Extractor(f"{kind} {path.name} ({dim}-d features at {image_size}px)", dim, module, image_size)


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets (rows are samples)."""
    if len(a) < 2 or len(b) < 2:
        raise InputError(f"Frechet distance needs at least 2 samples per side (got {len(a)} and {len(b)}).")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():
        # Singular product (fewer samples than feature dimensions): offset the diagonals, as
        # the reference FID implementation does.
        offset = np.eye(len(s_a)) * eps
        covmean = scipy.linalg.sqrtm((s_a + offset) @ (s_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean), 0.0))
