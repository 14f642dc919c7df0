"""Exact nearest-neighbour search in blocks, so memory stays bounded by block x block distances.

The embeddings of a hospital archive (10^5 images and more) are themselves too big to hold
beside the search, so the audit writes them to `Rows`, a float32 matrix in a temporary file,
and the search reads one block of queries and one block of the base at a time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from cxrsynth.progress import Progress


class Rows:
    """A float32 matrix kept in a file and read back in blocks of rows."""

    ndim = 2

    def __init__(self, folder: str | Path, dim: Optional[int] = None):
        fd, name = tempfile.mkstemp(dir=folder, suffix=".f32")
        os.close(fd)
        self.path = Path(name)
        self.dim = dim
        self.n = 0

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or (self.dim is not None and block.shape[1] != self.dim):
            raise ValueError(f"rows of width {self.dim} expected, got a block of shape {block.shape}")
        self.dim = block.shape[1]
        with open(self.path, "ab") as f:
            f.write(block.tobytes())
        self.n += len(block)

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.dim or 0)

    def block(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.n)
        if stop <= start:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.fromfile(
            self.path, dtype=np.float32, count=(stop - start) * self.dim, offset=start * self.dim * 4
        ).reshape(-1, self.dim)

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The rows at `indices`, in that order (read through a mapping dropped on return, so no
        page of the file stays resident)."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) == 0:
            return np.zeros((0, self.dim or 0), np.float32)
        mapped = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.n, self.dim))
        out = np.array(mapped[idx])
        del mapped
        return out

    def __getitem__(self, indices) -> "TakenRows":
        return TakenRows(self, np.asarray(indices, dtype=np.int64))

    def numpy(self) -> np.ndarray:
        return self.block(0, self.n)


class TakenRows:
    """Some rows of a `Rows`, in a given order, read when a block of them is asked for."""

    ndim = 2

    def __init__(self, rows: Rows, indices: np.ndarray):
        self.rows, self.indices = rows, indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.indices), self.rows.dim or 0)

    def block(self, start: int, stop: int) -> np.ndarray:
        return self.rows.take(self.indices[start:stop])


Matrix = Union[np.ndarray, Rows, TakenRows]


def _block(x: Matrix, start: int, stop: int) -> torch.Tensor:
    part = x[start:stop] if isinstance(x, np.ndarray) else x.block(start, stop)
    return torch.as_tensor(np.ascontiguousarray(part, dtype=np.float32))


def nearest(
    queries: Matrix,
    base: Matrix,
    chunk: int = 4096,
    progress: Optional[Progress] = None,
    label: str = "nearest neighbours",
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the Euclidean distance to its nearest base row and that row's index.

    Peak extra memory is one chunk x chunk float32 block (chunk 4096: 64 MiB) plus a chunk of
    queries and one of the base, whatever the sizes; `queries` and `base` are arrays or `Rows`.
    """
    nq, nb = len(queries), len(base)
    if queries.ndim != 2 or base.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise ValueError(f"embeddings disagree in shape: queries {tuple(queries.shape)}, base {tuple(base.shape)}")
    if nb == 0:
        raise ValueError("nearest-neighbour search against an empty set")
    best = torch.full((nq,), float("inf"))
    arg = torch.zeros(nq, dtype=torch.long)
    task = progress.task(label, nq) if progress else None
    with torch.no_grad():
        for qs in range(0, nq, chunk):
            q = _block(queries, qs, qs + chunk)
            q_sq = (q * q).sum(1, keepdim=True)
            row_best = torch.full((len(q),), float("inf"))
            row_arg = torch.zeros(len(q), dtype=torch.long)
            for bs in range(0, nb, chunk):
                b = _block(base, bs, bs + chunk)
                d2 = torch.addmm(q_sq + (b * b).sum(1), q, b.T, alpha=-2.0)
                val, idx = d2.min(dim=1)
                better = val < row_best
                row_best = torch.where(better, val, row_best)
                row_arg = torch.where(better, idx + bs, row_arg)
            best[qs : qs + chunk] = row_best
            arg[qs : qs + chunk] = row_arg
            if task:
                task.advance(len(q))
    return best.clamp_min(0).sqrt().numpy(), arg.numpy()
