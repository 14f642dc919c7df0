"""Image encoders for the memorization check: images -> fixed-length embeddings.

- `pixels`: blurred, downsampled pixels, each image standardised (zero mean, unit norm) so a
  copy with changed brightness or contrast lands next to its source.
- `selfsup`: a small CNN trained at the site on its own real images with a contrastive
  (SimCLR, Chen et al. 2020) objective whose augmentations are the ways a copy can be disguised
  (shift, flip, crop-and-resize, contrast, noise); its weights can be saved and reused.
- `file`: a user encoder from a local file: TorchScript (.pt/.ts) taking (B, 1, S, S) floats in
  [0, 1], or `selfsup` weights (.safetensors).

Every encoder embeds an image and its left-right mirror image; the search takes the nearer one,
so a flipped copy is found like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrsynth.config import AuditPolicy
from cxrsynth.errors import InputError
from cxrsynth.privacy.audit.neighbors import Rows
from cxrsynth.progress import Progress

INPUT_SIZE = 64


def to_tensor(images: Sequence[np.ndarray], size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 HxW images -> (B, 1, size, size) floats in [0, 1] (area resampling)."""
    out = []
    for img in images:
        t = torch.as_tensor(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
        out.append(F.interpolate(t, size=(size, size), mode="area") if t.shape[-2:] != (size, size) else t)
    return torch.cat(out) if out else torch.zeros(0, 1, size, size)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(round(2.5 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(-1, -2))


def standardise(z: torch.Tensor) -> torch.Tensor:
    z = z - z.mean(dim=1, keepdim=True)
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-8)


class Encoder:
    name = ""

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, images: Sequence[np.ndarray], batch: int = 256, mirrored: bool = False) -> np.ndarray:
        """(N, D) float32 embeddings; `mirrored` embeds the left-right mirror images instead."""
        parts = []
        with torch.no_grad():
            for s in range(0, len(images), batch):
                x = to_tensor(images[s : s + batch])
                if mirrored:
                    x = x.flip(-1)
                parts.append(self.embed_tensor(x).float())
        return torch.cat(parts).numpy() if parts else np.zeros((0, 1), np.float32)

    def embed_rows(
        self, images: Sequence[np.ndarray], folder: str | Path, batch: int = 256, mirrored: bool = False
    ) -> Rows:
        """`embed`, written batch by batch to a `Rows` file in `folder`: `images` may be a lazy
        sequence (`cxrsynth.data.stream.ImageColumn`), so only one batch is ever decoded."""
        rows = Rows(folder)
        with torch.no_grad():
            for s in range(0, len(images), batch):
                x = to_tensor(images[s : s + batch])
                if mirrored:
                    x = x.flip(-1)
                rows.append(self.embed_tensor(x).float().numpy())
        return rows


class PixelEncoder(Encoder):
    name = "pixels"

    def __init__(self, grid: int = 16):
        self.grid = grid

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        # Blur at the scale of one output cell so a shift of a few pixels moves little mass.
        x = blur(x, sigma=0.5 * x.shape[-1] / self.grid)
        return standardise(F.adaptive_avg_pool2d(x, self.grid).flatten(1))


class ConvEncoder(nn.Module):
    """A small CNN: 64x64 -> 64-d unit vector."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.GroupNorm(4, 16), nn.SiLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, 64, 3, 2, 1), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body(x), dim=1)


class ModuleEncoder(Encoder):
    def __init__(self, module: nn.Module, name: str):
        self.module, self.name = module.eval(), name

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).flatten(1)


def disguise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random disguises a copy may wear: shift, mirror, crop-and-resize, contrast, noise."""
    b, _, h, w = x.shape
    out = []
    for i in range(b):
        img = x[i : i + 1]
        if torch.rand(1, generator=gen) < 0.5:
            img = img.flip(-1)
        frac = 0.8 + 0.2 * torch.rand(1, generator=gen).item()
        ch, cw = max(4, int(h * frac)), max(4, int(w * frac))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        img = F.interpolate(
            img[..., top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False
        )
        gamma = float(torch.exp(0.4 * (torch.rand(1, generator=gen) - 0.5)))
        img = img.clamp(0, 1) ** gamma * (0.8 + 0.4 * torch.rand(1, generator=gen)) + 0.1 * (
            torch.rand(1, generator=gen) - 0.5
        )
        img = img + 0.05 * torch.rand(1, generator=gen) * torch.randn(img.shape, generator=gen)
        out.append(img)
    return torch.cat(out)


def _nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z = torch.cat([a, b])
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(a)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_selfsup(
    images: Sequence[np.ndarray], steps: int = 300, batch: int = 64, seed: int = 0, progress: Optional[Progress] = None
) -> ConvEncoder:
    """Train a ConvEncoder on a site's real images so two disguises of one image embed together."""
    if len(images) < 2:
        raise InputError("the self-supervised encoder needs at least 2 training images.")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # Images are converted when a batch draws them (the same values as converting all first),
    # so a site of any size trains this encoder in a batch's memory.
    net = ConvEncoder()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    task = progress.task("self-supervised encoder", steps) if progress else None
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch, len(images)),), generator=gen)
        x = to_tensor([images[i] for i in idx.tolist()])
        loss = _nt_xent(net(disguise(x, gen)), net(disguise(x, gen)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if task:
            task.advance(1)
    return net.eval()


def save_selfsup(net: ConvEncoder, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def load_file_encoder(path: Path) -> Encoder:
    if not path.is_file():
        raise InputError(f"{path}: encoder weights file not found (policy key 'encoder_weights').")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        net = ConvEncoder()
        try:
            net.load_state_dict(load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - any mismatch is the same user error
            raise InputError(
                f"{path}: not weights of the audit's self-supervised encoder ({e.__class__.__name__}: {str(e)[:200]}); save a TorchScript module instead for another architecture."
            ) from None
        return ModuleEncoder(net, f"file:{path.name}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise InputError(
            f"{path}: cannot load as TorchScript ({e.__class__.__name__}); give a torch.jit.save'd module taking (B, 1, {INPUT_SIZE}, {INPUT_SIZE}) floats in [0, 1]."
        ) from None
    enc = ModuleEncoder(module, f"file:{path.name}")
    try:
        with torch.no_grad():
            out = enc.embed_tensor(torch.zeros(2, 1, INPUT_SIZE, INPUT_SIZE))
    except Exception as e:  # noqa: BLE001
        raise InputError(
            f"{path}: the encoder fails on a (2, 1, {INPUT_SIZE}, {INPUT_SIZE}) input ({e.__class__.__name__}: {str(e)[:200]})."
        ) from None
    if out.shape[0] != 2:
        raise InputError(f"{path}: the encoder returned shape {tuple(out.shape)} for 2 images; expected (2, D).")
    return enc


def make_encoder(
    policy: AuditPolicy, train_images: Sequence[np.ndarray], progress: Optional[Progress] = None
) -> Encoder:
    """The encoder the policy names; `selfsup` is trained here on the site's training images."""
    if policy.encoder == "pixels":
        return PixelEncoder(policy.pixel_grid)
    if policy.encoder == "selfsup":
        return ModuleEncoder(
            train_selfsup(train_images, policy.selfsup_steps, seed=policy.seed, progress=progress), "selfsup"
        )
    if policy.encoder_weights is None:
        raise InputError(
            "policy key 'encoder' is 'file' but 'encoder_weights' is not set; give a local TorchScript (.pt) or .safetensors file."
        )
    return load_file_encoder(Path(policy.encoder_weights))
