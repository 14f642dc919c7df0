"""The three discriminators (EMIXER sec. 3.3); all read real data, so all train under DP-SGD.

Reports enter as one-hot word grids (B, S, T+1, V) flattened to a sequence and embedded by a
bias-free Linear: a real report's one-hot rows and a generated report's straight-through rows
take the same path, and the Linear keeps Opacus' per-sample gradients exact.
"""

from __future__ import annotations

import torch
from opacus.layers import DPLSTM
from torch import nn

from cxrsynth.models.emixer.config import EmixerConfig
from cxrsynth.models.emixer.labels import COND_DIM
from cxrsynth.models.emixer.layers import ImageFeatures, sn_linear

ROTATIONS = 4  # 0, 90, 180, 270 degrees (SS-GAN, Chen et al. 2019)


def rotate(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image b by k[b] quarter turns."""
    all_rots = torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(ROTATIONS)], dim=1)
    return all_rots[torch.arange(images.shape[0], device=images.device), k]


class DImage(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018) with a 4-way rotation head."""

    def __init__(self, cfg: EmixerConfig):
        super().__init__()
        self.features = ImageFeatures(cfg.image_size, cfg.d_width)
        self.out = sn_linear(self.features.out_dim, 1)
        self.project = sn_linear(COND_DIM, self.features.out_dim, bias=False)
        self.rotation_head = sn_linear(self.features.out_dim, ROTATIONS)

    def forward(self, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        return self.out(h)[:, 0] + (self.project(y) * h).sum(dim=1)

    def rotation(self, images: torch.Tensor) -> torch.Tensor:
        return self.rotation_head(self.features(images))


class ReportFeatures(nn.Module):
    def __init__(self, cfg: EmixerConfig):
        super().__init__()
        self.embed = nn.Linear(cfg.vocab_size, cfg.word_dim, bias=False)
        self.lstm = DPLSTM(cfg.word_dim, cfg.report_hidden, batch_first=True)
        self.out_dim = cfg.report_hidden

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        b = onehot.shape[0]
        h, _ = self.lstm(self.embed(onehot.reshape(b, -1, onehot.shape[-1])))
        return h[:, -1]


class DReport(nn.Module):
    def __init__(self, cfg: EmixerConfig):
        super().__init__()
        self.features = ReportFeatures(cfg)
        self.out = sn_linear(self.features.out_dim, 1)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(onehot))[:, 0]


class DJoint(nn.Module):
    """Image and report features concatenated: does this report belong to this image?"""

    def __init__(self, cfg: EmixerConfig):
        super().__init__()
        self.image = ImageFeatures(cfg.image_size, cfg.d_width)
        self.report = ReportFeatures(cfg)
        width = self.image.out_dim + self.report.out_dim
        self.hidden = sn_linear(width, width)
        self.out = sn_linear(width, 1)

    def forward(self, images: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.image(images), self.report(onehot)], dim=1)
        return self.out(torch.relu(self.hidden(h)))[:, 0]
