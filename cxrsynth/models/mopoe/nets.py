"""Per-modality encoders and decoders of the MoPoE-VAE.

Images: strided convolutions down to 4x4 and nearest-upsampling convolutions back, with GroupNorm
(BatchNorm mixes the records of a batch, which per-sample DP-SGD gradients cannot allow).
Reports: a convolutional sequence model over word ids with a categorical likelihood per word;
the decoder is either causal (each word given the latent and the words before it) or parallel
(every position at once from the latent alone, as the convolutional text decoders of the MoPoE
code do).
Labels: an MLP over the one-hot state of each of the 14 labels, a categorical per label back.
Every layer has an Opacus per-sample gradient rule (Conv, Linear, Embedding, GroupNorm), and
no layer is a ConvTranspose, which Opacus cannot wrap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _down2d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.GroupNorm(_groups(cout), cout), nn.SiLU())


def _up2d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, 3, 1, 1),
        nn.GroupNorm(_groups(cout), cout),
        nn.SiLU(),
    )


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
    """(B, L) word ids -> (mu, logvar).

    Mean and max over positions after the convolutions, so a phrase counts wherever in the
    report it stands.
    """

    def __init__(self, vocab_size: int, embed_dim: int, channels: int, latent_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.conv = nn.Sequential(
            nn.Conv1d(embed_dim, channels, 4, 2, 1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv1d(channels, 2 * channels, 4, 2, 1),
            nn.GroupNorm(_groups(2 * channels), 2 * channels),
            nn.SiLU(),
            nn.Conv1d(2 * channels, 2 * channels, 3, 1, 1),
            nn.SiLU(),
        )
        self.head = nn.Linear(4 * channels, 2 * latent_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(self.embed(ids).transpose(1, 2))
        pooled = torch.cat([h.mean(-1), h.amax(-1)], dim=-1)
        mu, logvar = self.head(pooled).chunk(2, dim=-1)
        return mu, logvar


class ParallelTextDecoder(nn.Module):
    """(B, latent) -> logits at every position at once, (B, V, L): the MoPoE code's kind of decoder."""

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

    def forward(self, z: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(self.head(z).view(-1, self.channels, self.quarter))


class CausalTextDecoder(nn.Module):
    """(B, latent), (B, L) previous word ids -> logits of the next word at every position, (B, V, L).

    Dilated causal convolutions (left padding only) over the shifted report, with a learned
    position at the input and the latent added again before every layer, so the words the latent
    implies are never more than one layer away. No normalisation across positions: it would let a
    position see the words after it.
    """

    DILATIONS = (1, 2, 4, 8, 16)

    def __init__(self, vocab_size: int, text_length: int, embed_dim: int, channels: int, latent_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, channels)
        self.position = nn.Embedding(text_length, channels)
        self.from_latent = nn.Linear(latent_dim, channels * (len(self.DILATIONS) + 1))
        self.layers = nn.ModuleList(nn.Conv1d(channels, channels, 2, dilation=d) for d in self.DILATIONS)
        self.out = nn.Conv1d(channels, vocab_size, 1)

    # Words before position t that its logits depend on: one more per unit of dilation.
    RECEPTIVE_FIELD = 1 + sum(DILATIONS)

    def forward(self, z: torch.Tensor, ids: torch.Tensor, offset: int = 0, last: bool = False) -> torch.Tensor:
        """`ids` are the words at positions offset.. of the report; `last`: the logits of the last
        position only. Decoding word by word needs only the last RECEPTIVE_FIELD words of the
        prefix (`offset` = where they start), so each word costs the same however long the report."""
        # Positions get the batch dimension too: per-sample gradients need it first on every input.
        positions = torch.arange(offset, offset + ids.shape[1], device=ids.device).expand_as(ids)
        latent = self.from_latent(z)[:, :, None].chunk(len(self.DILATIONS) + 1, dim=1)
        h = (self.embed(ids) + self.position(positions)).transpose(1, 2) + latent[0]
        for conv, d, zl in zip(self.layers, self.DILATIONS, latent[1:]):
            h = h + conv(F.pad(F.silu(h + zl), (d, 0)))
        return self.out(F.silu(h[:, :, -1:] if last else h))


class LabelEncoder(nn.Module):
    """(B, labels) state indices -> (mu, logvar): the one-hot states through a small MLP."""

    def __init__(self, n_labels: int, n_states: int, hidden: int, latent_dim: int):
        super().__init__()
        self.n_states = n_states
        self.net = nn.Sequential(
            nn.Linear(n_labels * n_states, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(F.one_hot(states, self.n_states).float().flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class LabelDecoder(nn.Module):
    """(B, latent) -> logits of each label's state, (B, states, labels): a categorical per label."""

    def __init__(self, n_labels: int, n_states: int, hidden: int, latent_dim: int):
        super().__init__()
        self.shape = (n_states, n_labels)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, n_labels * n_states),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)
