"""Copy matching by image alignment: a copy may be shifted, mirrored, cropped and resized.

Two stages keep the cost near that of a plain nearest-neighbour search:
1. shortlist: coarse windows (blurred 8x8 pixels) of a grid of shifted, zoomed and mirrored
   versions of each query; the `k` training images nearest to any version are its candidates;
2. alignment: each candidate's central window is compared with every integer shift (+-6 px at
   64 px), six zooms and both mirror images of the query's window; the distance is that of the
   best alignment, between standardised windows (so brightness and contrast do not matter).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrsynth import scratch
from cxrsynth.privacy.audit.encoders import blur, standardise, to_tensor
from cxrsynth.privacy.audit.neighbors import Rows
from cxrsynth.progress import Progress

SIZE = 64
WINDOW = 48  # central window compared; the border is where shifts and crops invent content
MARGIN = (SIZE - WINDOW) // 2
MAX_SHIFT = 6  # a 15% crop off-centre moves the content up to ~6 px at 64 px
ZOOMS = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85)  # crop-and-resize keeping 85-100% of the frame
POOL = 2  # windows are compared at 24x24 after shifting at full resolution
COARSE = 3  # shortlist windows: 24x24 pooled again to 8x8
COARSE_STEP = 2
BLOCK = 1024  # base images compared with a chunk of queries at a time: (32, 588, 1024) float32 similarities, 77 MB
DECODE = 256  # base images decoded, and their windows computed, at a time


def _prepare(images: Sequence[np.ndarray]) -> torch.Tensor:
    return blur(to_tensor(images, SIZE), sigma=1.5)


def _zoomed(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Undo a crop-and-resize that kept `zoom` of the frame: shrink the query about its centre."""
    if zoom == 1.0:
        return x
    n = int(round(SIZE * zoom))
    small = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False, antialias=True)
    pad = (SIZE - n) // 2
    return F.pad(small, (pad, SIZE - n - pad, pad, SIZE - n - pad), mode="replicate")


def _windows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, S, S) -> fine (B, V, 576) windows at every shift, zoom and mirror, and the coarse
    (B, V', 64) windows of the even shifts used for the shortlist."""
    fine, coarse = [], []
    n = WINDOW // POOL
    for mirrored in (x, x.flip(-1)):
        for zoom in ZOOMS:
            z = _zoomed(mirrored, zoom)
            for py in range(POOL):
                for px in range(POOL):
                    # Pooling each phase once and unfolding gives every shift without re-pooling.
                    p = F.avg_pool2d(z[:, :, py:, px:], POOL)
                    u = F.unfold(p, n)  # (B, n*n, positions)
                    starts_y = py + POOL * torch.arange(p.shape[-2] - n + 1)
                    starts_x = px + POOL * torch.arange(p.shape[-1] - n + 1)
                    ok_y = (starts_y - MARGIN).abs() <= MAX_SHIFT
                    ok_x = (starts_x - MARGIN).abs() <= MAX_SHIFT
                    keep = (ok_y[:, None] & ok_x[None, :]).flatten()
                    fine.append(u[:, :, keep])
                    even = ((starts_y - MARGIN) % COARSE_STEP == 0)[:, None] & (
                        (starts_x - MARGIN) % COARSE_STEP == 0
                    )[None, :]
                    ck = keep & even.flatten()
                    if ck.any():
                        w = u[:, :, ck].transpose(1, 2).reshape(-1, 1, n, n)
                        coarse.append(F.avg_pool2d(w, COARSE).reshape(x.shape[0], -1, (n // COARSE) ** 2))
    return torch.cat(fine, dim=2).transpose(1, 2), torch.cat(coarse, dim=1)


def _center(x: torch.Tensor, pool: int) -> torch.Tensor:
    return F.avg_pool2d(x[:, :, MARGIN : MARGIN + WINDOW, MARGIN : MARGIN + WINDOW], pool).flatten(1)


def _inv_norm(w: torch.Tensor) -> torch.Tensor:
    """1 / the norm of each window after removing its mean: with zero-mean base rows, a raw
    dot product times this is the cosine of the standardised windows, without copying them."""
    d = w.shape[-1]
    mean = w.mean(-1)
    return ((w * w).sum(-1) - d * mean * mean).clamp_min(1e-12).rsqrt()


def _max_similarity(variants: torch.Tensor, base: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """(B, V, D) x (N, D) -> (B, N): each base row's best cosine with any variant, in base blocks."""
    inv = _inv_norm(variants).unsqueeze(-1)
    return torch.cat(
        [
            (torch.einsum("bvd,nd->bvn", variants, base[i : i + block]) * inv).amax(dim=1)
            for i in range(0, len(base), block)
        ],
        dim=1,
    )


class AlignedWindows:
    """A base's central windows (fine and coarse), computed once and kept in temporary files in
    `folder`, for any number of aligned searches against it."""

    def __init__(self, folder: str):
        self.fine, self.coarse = Rows(folder), Rows(folder)

    def add(self, images: Sequence[np.ndarray], progress: Optional[Progress] = None, label: str = "") -> None:
        """Append the windows of `images` (decoded `DECODE` at a time)."""
        task = progress.task(label, len(images)) if progress and label else None
        for s in range(0, len(images), DECODE):
            base_t = _prepare(images[s : s + DECODE])
            self.fine.append(standardise(_center(base_t, POOL)).numpy())
            self.coarse.append(standardise(_center(base_t, POOL * COARSE)).numpy())
            if task:
                task.advance(len(base_t))

    def extend(self, other: "AlignedWindows") -> None:
        """Append the windows of another base (copied block by block, no image decoded)."""
        for s in range(0, len(other), DECODE):
            self.fine.append(other.fine.block(s, s + DECODE))
            self.coarse.append(other.coarse.block(s, s + DECODE))

    def __len__(self) -> int:
        return len(self.coarse)


def aligned_nearest(
    queries: Sequence[np.ndarray],
    base: Sequence[np.ndarray] | AlignedWindows,
    k: int = 8,
    chunk: int = 32,
    progress: Optional[Progress] = None,
    label: str = "aligned copy search",
    block: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the distance of its best-aligned base image and that image's index.

    `base` (and `queries`) may be lazy sequences (`cxrsynth.data.stream.ImageColumn`): the base's
    windows are computed `DECODE` images at a time and kept in temporary files, the shortlist
    keeps a running top k per query over blocks of `block` base images, and only the shortlisted
    windows are read back, so memory does not grow with the number of base images. A base
    searched several times is given as its `AlignedWindows`, computed once.
    """
    if isinstance(base, AlignedWindows):
        return _search(queries, base, k, chunk, progress, label, block or BLOCK)
    with scratch.folder("align") as tmp:
        windows = AlignedWindows(tmp)
        windows.add(base)
        return _search(queries, windows, k, chunk, progress, label, block or BLOCK)


def _search(
    queries: Sequence[np.ndarray],
    base: AlignedWindows,
    k: int,
    chunk: int,
    progress: Optional[Progress],
    label: str,
    block: int,
) -> tuple[np.ndarray, np.ndarray]:
    n_base = len(base)
    k = min(k, n_base)
    dist = np.empty(len(queries), dtype=np.float32)
    arg = np.empty(len(queries), dtype=np.int64)
    task = progress.task(label, len(queries)) if progress else None
    with torch.no_grad():
        for s in range(0, len(queries), chunk):
            fine, coarse = _windows(_prepare(queries[s : s + chunk]))
            b = fine.shape[0]
            top_sim, cand = None, None
            for bs in range(0, n_base, block):
                sim = _max_similarity(coarse, torch.from_numpy(base.coarse.block(bs, bs + block)), block)
                ids = torch.arange(bs, bs + sim.shape[1]).expand(b, -1)
                if top_sim is not None:
                    sim, ids = torch.cat([top_sim, sim], dim=1), torch.cat([cand, ids], dim=1)
                top_sim, at = sim.topk(k, dim=1)
                cand = ids.gather(1, at)  # (b, k): the k base images most similar so far
            wanted, where = np.unique(cand.numpy(), return_inverse=True)
            cand_fine = torch.from_numpy(base.fine.take(wanted))[torch.from_numpy(where.reshape(cand.shape))]
            best = (torch.einsum("bvd,bkd->bvk", fine, cand_fine) * _inv_norm(fine).unsqueeze(-1)).amax(
                dim=1
            )  # (b, k)
            top, j = best.max(dim=1)
            # Unit vectors: squared distance is 2 - 2 cos.
            dist[s : s + b] = torch.sqrt((2 - 2 * top).clamp_min(0)).numpy()
            arg[s : s + b] = cand[torch.arange(b), j].numpy()
            if task:
                task.advance(b)
    return dist, arg
