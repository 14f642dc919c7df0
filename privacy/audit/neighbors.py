"""Exact nearest-neighbour search in blocks, so memory stays bounded by block x block distances."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from cxrsynth.progress import Progress


def nearest(queries: np.ndarray, base: np.ndarray, chunk: int = 4096, progress: Optional[Progress] = None, label: str = "nearest neighbours") -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the Euclidean distance to its nearest base row and that row's index.

    Peak extra memory is one chunk x chunk float32 block (chunk 4096: 64 MiB), whatever the sizes.
    """
    q_all = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32))
    b_all = torch.as_tensor(np.ascontiguousarray(base, dtype=np.float32))
    if q_all.ndim != 2 or b_all.ndim != 2 or q_all.shape[1] != b_all.shape[1]:
        raise ValueError(f"embeddings disagree in shape: queries {tuple(q_all.shape)}, base {tuple(b_all.shape)}")
    if len(b_all) == 0:
        raise ValueError("nearest-neighbour search against an empty set")
    b_sq = (b_all * b_all).sum(1)
    best = torch.full((len(q_all),), float("inf"))
    arg = torch.zeros(len(q_all), dtype=torch.long)
    task = progress.task(label, len(q_all)) if progress else None
    with torch.no_grad():
        for qs in range(0, len(q_all), chunk):
            q = q_all[qs : qs + chunk]
            q_sq = (q * q).sum(1, keepdim=True)
            row_best = torch.full((len(q),), float("inf"))
            row_arg = torch.zeros(len(q), dtype=torch.long)
            for bs in range(0, len(b_all), chunk):
                d2 = torch.addmm(q_sq + b_sq[bs : bs + chunk], q, b_all[bs : bs + chunk].T, alpha=-2.0)
                val, idx = d2.min(dim=1)
                better = val < row_best
                row_best = torch.where(better, val, row_best)
                row_arg = torch.where(better, idx + bs, row_arg)
            best[qs : qs + chunk] = row_best
            arg[qs : qs + chunk] = row_arg
            if task:
                task.advance(len(q))
    return best.clamp_min(0).sqrt().numpy(), arg.numpy()

