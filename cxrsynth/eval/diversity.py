"""Diversity: MS-SSIM among samples that share a conditioning; lower means more diverse.

MS-SSIM (Wang, Simoncelli and Bovik, 2003) is torchmetrics': an 11-tap Gaussian window
(sigma 1.5), contrast-structure terms at every scale and SSIM at the coarsest, combined with the
paper's scale weights; negative terms are clipped at zero (`normalize="relu"`) so the weighted
product stays defined. Small images cannot hold all five scales: only the scales whose side is
at least the window are used, and their weights renormalised.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Hashable, Sequence

import numpy as np
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from cxrsynth.data.records import Record
from cxrsynth.data.stream import has_images, image_at, metadata_view

# Wang et al. 2003, sec. 3.2: weights of scales 1..5.
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW, SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03  # Wang et al. 2004 (SSIM), sec. III-B


def n_scales(side: int) -> int:
    """Scales whose side is at least the window, and that torchmetrics accepts for this side
    (it asks for side // (scales - 1)^2 > window - 1, stricter only at four scales, sides 88-98)."""
    scales = max(1, min(len(SCALE_WEIGHTS), int(np.floor(np.log2(side / WINDOW))) + 1))
    while scales > 1 and side // max(1, scales - 1) ** 2 <= WINDOW - 1:
        scales -= 1
    return scales


def ms_ssim(a: Sequence[np.ndarray], b: Sequence[np.ndarray], data_range: float = 255.0) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) of same-shaped grayscale images; values in [0, 1]."""
    x = torch.as_tensor(np.stack(a).astype(np.float64))[:, None]
    y = torch.as_tensor(np.stack(b).astype(np.float64))[:, None]
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM needs images of one shape, got {tuple(x.shape[2:])} and {tuple(y.shape[2:])}")
    side = min(x.shape[-2:])
    if side < WINDOW:
        raise ValueError(f"MS-SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {tuple(x.shape[2:])}")
    weights = SCALE_WEIGHTS[: n_scales(side)]
    values = multiscale_structural_similarity_index_measure(
        x, y, sigma=SIGMA, kernel_size=WINDOW, data_range=data_range, k1=K1, k2=K2,
        betas=tuple(w / sum(weights) for w in weights), normalize="relu", reduction="none",
    )  # fmt: skip
    return values.numpy()


def group_by_condition(records: Sequence[Record]) -> dict[Hashable, list[Record]]:
    """Records that were generated from (or, for real data, carry) the same positive findings
    share a group; a synthetic row whose provenance names its conditioning (`condition=...`) is
    grouped by that instead."""
    return {cond: [records[i] for i in members] for cond, members in _condition_groups(records).items()}


def _condition_groups(records: Sequence[Record]) -> dict[Hashable, list[int]]:
    """`group_by_condition` as positions, read from the records' metadata (no image decoded)."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    present = has_images(records)
    for i, r in enumerate(metadata_view(records)):
        if not present[i]:
            continue
        cond = next((p.split("=", 1)[1] for p in r.provenance.split(";") if p.startswith("condition=")), None)
        groups[cond if cond is not None else tuple(sorted(k for k, v in r.labels.items() if v == 1))].append(i)
    return groups


def within_condition_ms_ssim(
    records: Sequence[Record], per_condition: int, max_conditions: int, size: int, seed: int = 0
) -> dict:
    """Mean MS-SSIM over all pairs among up to `per_condition` images in each of up to `max_conditions` groups."""
    from cxrsynth.data.transforms import images_to_tensor, tensor_to_images

    rng = np.random.default_rng(seed)
    groups = [g for g in _condition_groups(records).values() if len(g) >= 2]
    rng.shuffle(groups)
    groups = groups[:max_conditions]
    left, right = [], []
    for g in groups:
        pick = [g[i] for i in rng.choice(len(g), size=min(per_condition, len(g)), replace=False)]
        imgs = tensor_to_images(images_to_tensor([image_at(records, i) for i in pick], size))
        for i, j in combinations(range(len(imgs)), 2):
            left.append(imgs[i])
            right.append(imgs[j])
    if not left:
        return {"mean": None, "std": None, "pairs": 0, "conditions": 0, "values": []}
    vals = ms_ssim(left, right)
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std()),
        "pairs": len(vals),
        "conditions": len(groups),
        "scales": n_scales(size),
        "values": [round(float(v), 5) for v in vals],
    }
