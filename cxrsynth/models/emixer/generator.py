"""G(z, y): label-conditioned image generator (EMIXER sec. 3.1, after BigGAN and SAGAN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrsynth.models.emixer.config import EmixerConfig
from cxrsynth.models.emixer.labels import COND_DIM
from cxrsynth.models.emixer.layers import GBlock, SelfAttention, sn_conv, sn_linear


def split_z(z: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """The hierarchical latent: chunk 0 feeds the first linear layer, chunk i the i-th conditional block."""
    if z.shape[1] % chunk:
        raise ValueError(f"z has {z.shape[1]} dims, not a multiple of the chunk size {chunk}")
    return list(z.split(chunk, dim=1))


class Generator(nn.Module):
    def __init__(self, cfg: EmixerConfig):
        super().__init__()
        self.cfg = cfg
        self.base = cfg.image_size >> cfg.up_blocks
        chans = [cfg.g_width * min(2 ** (cfg.up_blocks - i), 16) for i in range(cfg.up_blocks + 1)]
        cond_dim = cfg.z_chunk + cfg.class_embed_dim
        self.embed = sn_linear(COND_DIM, cfg.class_embed_dim, bias=False)
        self.linear = sn_linear(cfg.z_chunk, chans[0] * self.base * self.base)
        self.ups = nn.ModuleList(GBlock(chans[i], chans[i + 1], cond_dim) for i in range(cfg.up_blocks))
        self.attn_after = [self.base << (i + 1) for i in range(cfg.up_blocks)].index(cfg.attn_resolution)
        self.attn = SelfAttention(chans[self.attn_after + 1])
        self.final = GBlock(chans[-1], chans[-1], cond_dim, up=False)
        self.out_norm = nn.BatchNorm2d(chans[-1])
        self.out_conv = sn_conv(chans[-1], 1)
        self.c0 = chans[0]

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim), y (B, COND_DIM) -> images (B, 1, S, S) in [-1, 1]."""
        chunks = split_z(z, self.cfg.z_chunk)
        e = self.embed(y)
        h = self.linear(chunks[0]).view(-1, self.c0, self.base, self.base)
        for i, block in enumerate(self.ups):
            h = block(h, torch.cat([chunks[i + 1], e], dim=1))
            if i == self.attn_after:
                h = self.attn(h)
        h = self.final(h, torch.cat([chunks[-1], e], dim=1))
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))
