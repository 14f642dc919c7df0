"""Diversity: MS-SSIM among samples that share a conditioning; lower means more diverse.

MS-SSIM follows Wang, Simoncelli and Bovik (2003): an 11-tap Gaussian window (sigma 1.5),
contrast-structure terms at every scale and luminance at the coarsest, combined with the
paper's scale weights. Small images cannot hold all five scales: only the scales whose side is
at least the window are used, and their weights renormalised.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrsynth.data.records import Record

# Wang et al. 2003, sec. 3.2: weights of scales 1..5.
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW, SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03  # Wang et al. 2004 (SSIM), sec. III-B


def _window(size: int) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return luminance.mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def n_scales(side: int) -> int:
    return max(1, min(len(SCALE_WEIGHTS), int(np.floor(np.log2(side / WINDOW))) + 1))


def ms_ssim(a: Sequence[np.ndarray], b: Sequence[np.ndarray], data_range: float = 255.0) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) of same-shaped grayscale images; values in [0, 1]."""
    x = torch.as_tensor(np.stack(a).astype(np.float64))[:, None]
    y = torch.as_tensor(np.stack(b).astype(np.float64))[:, None]
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM needs images of one shape, got {tuple(x.shape[2:])} and {tuple(y.shape[2:])}")
    side = min(x.shape[-2:])
    if side < WINDOW:
        raise ValueError(f"MS-SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {tuple(x.shape[2:])}")
    scales = n_scales(side)
    weights = torch.tensor(SCALE_WEIGHTS[:scales], dtype=torch.float64)
    weights = weights / weights.sum()
    win = _window(WINDOW)
    values = []
    for s in range(scales):
        lum, cs = _ssim_terms(x, y, win, data_range)
        # Negative contrast-structure at a scale would make the weighted product undefined.
        values.append(torch.relu(cs) if s < scales - 1 else torch.relu(lum * cs))
        if s < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=1)
    return torch.prod(stacked ** weights[None, :], dim=1).numpy()


def group_by_condition(records: Sequence[Record]) -> dict[Hashable, list[Record]]:
    """Records that were generated from (or, for real data, carry) the same positive findings
    share a group; a synthetic row whose provenance names its conditioning (`condition=...`) is
    grouped by that instead."""
    groups: dict[Hashable, list[Record]] = defaultdict(list)
    for r in records:
        if r.image is None:
            continue
        cond = next((p.split("=", 1)[1] for p in r.provenance.split(";") if p.startswith("condition=")), None)
        groups[cond if cond is not None else tuple(sorted(k for k, v in r.labels.items() if v == 1))].append(r)
    return groups


def within_condition_ms_ssim(records: Sequence[Record], per_condition: int, max_conditions: int, size: int, seed: int = 0) -> dict:
    """Mean MS-SSIM over all pairs among up to `per_condition` images in each of up to `max_conditions` groups."""
    from cxrsynth.data.transforms import images_to_tensor, tensor_to_images

    rng = np.random.default_rng(seed)
    groups = [g for g in group_by_condition(records).values() if len(g) >= 2]
    rng.shuffle(groups)
    groups = groups[:max_conditions]
    left, right = [], []
    for g in groups:
        pick = [g[i] for i in rng.choice(len(g), size=min(per_condition, len(g)), replace=False)]
        imgs = tensor_to_images(images_to_tensor([r.image for r in pick], size))
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
