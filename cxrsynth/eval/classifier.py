"""A small multi-label CXR classifier: the utility experiment's model and the default FID extractor.

Inception and torchxrayvision weights would have to be downloaded, which this project never does;
a classifier trained on the real training images gives CXR-specific penultimate features instead.
GroupNorm (not BatchNorm) keeps features independent of batch composition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cxrsynth.data.records import LABELS, Record
from cxrsynth.data.stream import ImageColumn, has_images, metadata_view
from cxrsynth.data.transforms import images_to_tensor
from cxrsynth.errors import InputError
from cxrsynth.progress import Progress


class CXRClassifier(nn.Module):
    def __init__(self, width: int = 16, image_size: int = 64, n_labels: int = len(LABELS)):
        super().__init__()
        self.width, self.image_size = width, image_size
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(chans[-1], n_labels)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _targets(records: Sequence[Record], uncertain_as: float) -> torch.Tensor:
    return torch.as_tensor(np.stack([r.label_vector(uncertain_as) for r in records]))


def _pool(records: Sequence[Record], uncertain_as: float):
    """(images, targets, stated) of the labelled records with an image; a batch's images are
    decoded when it is drawn, so a dataset of any size trains in a batch's memory. `stated` (14,)
    is 1 for the labels some record states (positive, negative or uncertain) and 0 for a column
    empty in every record, such as a label a release dropped: read as not stated, not as negative.
    None when there are no such records."""
    present = has_images(records)
    meta = metadata_view(records)
    usable = [i for i, r in enumerate(meta) if present[i] and r.has_labels()]
    if not usable:
        return None
    rows = [meta[i] for i in usable]
    stated = torch.as_tensor(
        [any(r.labels.get(name) is not None for r in rows) for name in LABELS], dtype=torch.float32
    )
    return ImageColumn(records, usable), _targets(rows, uncertain_as), stated


def train_classifier(
    records: Sequence[Record],
    *,
    width: int = 16,
    image_size: int = 64,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    uncertain_as: float = 1.0,
    progress: Optional[Progress] = None,
    label: str = "classifier",
    extra: Sequence[Record] = (),
) -> CXRClassifier:
    """Fit a classifier on the labelled records' frontal images (records without labels are left out).

    `extra`: records added to every step as a second batch of the same size, so `records` get as
    many updates as they would alone (augmentation adds data; it does not replace any).
    A label no record of a set states (its column empty, as for a label a release dropped) adds
    no loss for that set's images.
    """
    main = _pool(records, uncertain_as)
    if main is None:
        raise InputError(f"{label}: no labelled records with images to train a classifier on.")
    added = _pool(extra, uncertain_as)
    pools = [main] if added is None else [main, added]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CXRClassifier(width, image_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    task = progress.task(label, steps) if progress else None
    model.train()
    masked = any(bool((stated == 0).any()) for _, _, stated in pools)
    for _ in range(steps):
        x, y, m = [], [], []
        for images, targets, stated in pools:
            idx = torch.as_tensor(rng.choice(len(targets), size=min(batch_size, len(targets)), replace=False))
            x.append(images_to_tensor(images[idx], image_size))
            y.append(targets[idx])
            m.append(stated.expand(len(idx), -1))
        if masked:
            mask = torch.cat(m)
            # Scaled as the plain mean is, so a stated label's updates are as large as without the mask.
            loss = (
                F.binary_cross_entropy_with_logits(model(torch.cat(x)), torch.cat(y), reduction="none") * mask
            ).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(model(torch.cat(x)), torch.cat(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if task:
            task.advance(1)
    model.eval()
    return model


@torch.no_grad()
def predict(model: CXRClassifier, images: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Label probabilities, (N, 14)."""
    model.eval()
    out = [
        torch.sigmoid(model(images_to_tensor(images[i : i + batch_size], model.image_size)))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)


def save_classifier(model: CXRClassifier, path: str | Path) -> Path:
    """Weights plus the two numbers needed to rebuild it, in one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cxrsynth": "eval.classifier", "width": str(model.width), "image_size": str(model.image_size)}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def load_classifier(path: str | Path) -> CXRClassifier:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e}).") from None
    if meta.get("cxrsynth") != "eval.classifier":
        raise InputError(
            f"{path}: safetensors without cxrsynth classifier metadata; save it with cxrsynth.eval.classifier.save_classifier, or pass a TorchScript (.pt) feature module."
        )
    model = CXRClassifier(int(meta["width"]), int(meta["image_size"]))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model
