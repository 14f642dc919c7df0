"""Per-modality encoders and decoders of the MoPoE-VAE.

Images: strided convolutions down to 4x4 and nearest-upsampling convolutions back, with GroupNorm
(BatchNorm mixes the records of a batch, which per-sample DP-SGD gradients cannot allow).
Reports: a convolutional sequence model over word ids; the decoder predicts every position at
once (a categorical per position), as the convolutional text decoders of the MoPoE code do.
Every layer has an Opacus per-sample gradient rule (Conv, Linear, Embedding, GroupNorm), and
no layer is a ConvTranspose, which Opacus cannot wrap.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _down2d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.GroupNorm(_groups(cout), cout), nn.SiLU())


def _up2d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(_groups(cout), cout), nn.SiLU())


def _widths(image_size: int, channels: int) -> list[int]:
    levels = int(math.log2(image_size // 4))
    return [channels * min(2**i, 8) for i in range(levels)]


class ImageEncoder(nn.Module):
    """(B, 1, S, S) in [-1, 1] -> (mu, logvar), each (B, latent)."""

    def __init__(self, image_size: int, channels: int, latent_dim: int):
        super().__init__()
        widths = _widths(image_size, channels)
        layers, cin = [], 1
        for w in widths:
            layers.append(_down2d(cin, w))
            cin = w
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 16, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.conv(x).flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class ImageDecoder(nn.Module):
    """(B, latent) -> the image likelihood's location, (B, 1, S, S)."""

    def __init__(self, image_size: int, channels: int, latent_dim: int):
        super().__init__()
        widths = _widths(image_size, channels)[::-1]
        self.top = widths[0]
        self.head = nn.Linear(latent_dim, self.top * 16)
        layers = []
        for cin, cout in zip(widths, widths[1:] + [widths[-1]]):
            layers.append(_up2d(cin, cout))
        self.conv = nn.Sequential(*layers)
        self.out = nn.Conv2d(widths[-1], 1, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(-1, self.top, 4, 4)
        return self.out(self.conv(h))


class TextEncoder(nn.Module):
    """(B, L) word ids -> (mu, logvar)."""

    def __init__(self, vocab_size: int, text_length: int, embed_dim: int, channels: int, latent_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.conv = nn.Sequential(
            nn.Conv1d(embed_dim, channels, 4, 2, 1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv1d(channels, 2 * channels, 4, 2, 1),
            nn.GroupNorm(_groups(2 * channels), 2 * channels),
            nn.SiLU(),
        )
        self.head = nn.Linear(2 * channels * (text_length // 4), 2 * latent_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(self.embed(ids).transpose(1, 2))
        mu, logvar = self.head(h.flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class TextDecoder(nn.Module):
    """(B, latent) -> logits over the vocabulary at every position, (B, V, L)."""

    def __init__(self, vocab_size: int, text_length: int, embed_dim: int, channels: int, latent_dim: int):
        super().__init__()
        self.channels, self.quarter = 2 * channels, text_length // 4
        self.head = nn.Linear(latent_dim, self.channels * self.quarter)
        self.conv = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv1d(2 * channels, channels, 3, 1, 1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv1d(channels, channels, 3, 1, 1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv1d(channels, vocab_size, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(self.head(z).view(-1, self.channels, self.quarter))
