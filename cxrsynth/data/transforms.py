"""Image arrays <-> model tensors. Models work on (B, 1, S, S) floats in [-1, 1]."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrsynth.data.records import Record
from cxrsynth.errors import InputError


def images_to_tensor(images: Sequence[np.ndarray], size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Stack uint8 HxW images into a (B, 1, size, size) tensor in [-1, 1] (area-resized when needed)."""
    if len(images) == 0:
        return torch.zeros(0, 1, size, size, device=device)
    out = []
    for im in images:
        t = torch.as_tensor(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)[None, None]
        if t.shape[-2:] != (size, size):
            mode = "area" if t.shape[-1] > size else "bilinear"
            t = F.interpolate(t, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        out.append(t)
    return torch.cat(out).to(device)


def frontal_images(records: Sequence[Record], size: int, device: torch.device | str, model: str) -> torch.Tensor:
    """The records' frontal images as one tensor (`images_to_tensor`), for a model that trains on
    them; records without one are refused by id."""
    missing = [r.record_id for r in records if r.image is None]
    if missing:
        raise InputError(f"record(s) {missing[:5]} have no frontal image loaded; {model} trains on frontal images.")
    stacked = getattr(records, "frontal", None)  # a loader's RecordBatch: one (pinned) uint8 tensor
    if stacked is not None and len(stacked) == len(records):
        return stacked_to_tensor(stacked, size, device)
    return images_to_tensor([r.image for r in records], size, device)


def stacked_to_tensor(images: torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`images_to_tensor` of a (B, H, W) uint8 tensor: moved to `device` as uint8 (a quarter of
    the float bytes; asynchronous from pinned memory), then scaled and resized there."""
    t = images.to(device, non_blocking=True).float()[:, None] / 127.5 - 1.0
    if t.shape[-2:] != (size, size):
        mode = "area" if t.shape[-1] > size else "bilinear"
        t = F.interpolate(t, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return t


def tensor_to_images(t: torch.Tensor) -> list[np.ndarray]:
    """(B, 1, H, W) in [-1, 1] -> list of HxW uint8 arrays."""
    arr = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return [a[0] for a in arr]
