"""Building blocks shared by G, F and the discriminators; all of them work under Opacus.

Spectral normalization (Miyato et al. 2018) divides the *input* of a plain Conv2d/Linear by the
largest singular value of its weight, estimated by power iteration on the weight alone. Because
the layer is linear, conv(x / sigma, W) + b = conv(x, W / sigma) + b, so the normalized layer is
exact, while the wrapped layer stays an ordinary Conv2d/Linear whose per-sample gradients Opacus
computes (torch's spectral_norm parametrization is rejected by Opacus). Sigma is a constant in
the backward pass, as it is for the power-iteration vector in Miyato et al.'s implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpectralNorm(nn.Module):
    def __init__(self, layer: nn.Module, eps: float = 1e-12):
        super().__init__()
        self.layer = layer
        self.eps = eps
        out = layer.weight.shape[0]
        self.register_buffer("u", F.normalize(torch.randn(out), dim=0, eps=eps))

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @torch.no_grad()
    def sigma(self) -> torch.Tensor:
        w = self.layer.weight.detach().flatten(1)
        u = self.u
        if self.training:
            v = F.normalize(w.t() @ u, dim=0, eps=self.eps)
            u = F.normalize(w @ v, dim=0, eps=self.eps)
            self.u.copy_(u)
        v = F.normalize(w.t() @ u, dim=0, eps=self.eps)
        return (u @ w @ v).clamp_min(self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x / self.sigma())


def sn_conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> SpectralNorm:
    return SpectralNorm(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias))


def sn_linear(cin: int, cout: int, bias: bool = True) -> SpectralNorm:
    return SpectralNorm(nn.Linear(cin, cout, bias=bias))


class ConditionalNorm(nn.Module):
    """BatchNorm whose gain and bias come from the condition (z chunk + class embedding), BigGAN sec. 3.

    Only in G, which never sees real data, so BatchNorm is allowed here.
    """

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = sn_linear(cond_dim, channels, bias=False)
        self.bias = sn_linear(cond_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        g = 1.0 + self.gain(cond)[:, :, None, None]
        b = self.bias(cond)[:, :, None, None]
        return self.bn(x) * g + b


class GBlock(nn.Module):
    """Pre-activation residual block of G with conditional norms; up-samples by 2 when `up`."""

    def __init__(self, cin: int, cout: int, cond_dim: int, up: bool = True):
        super().__init__()
        self.up = up
        self.norm1 = ConditionalNorm(cin, cond_dim)
        self.conv1 = sn_conv(cin, cout)
        self.norm2 = ConditionalNorm(cout, cond_dim)
        self.conv2 = sn_conv(cout, cout)
        self.skip = sn_conv(cin, cout, k=1)

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else x

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._up(F.relu(self.norm1(x, cond))))
        h = self.conv2(F.relu(self.norm2(h, cond)))
        return h + self.skip(self._up(x))


class DBlock(nn.Module):
    """Residual block of the discriminators (no normalization: DP-SGD needs per-sample independence)."""

    def __init__(self, cin: int, cout: int, down: bool = True, first: bool = False):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = sn_conv(cin, cout)
        self.conv2 = sn_conv(cout, cout)
        self.skip = sn_conv(cin, cout, k=1)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self._down(self.conv2(F.relu(self.conv1(h))))
        s = self.skip(self._down(x)) if self.first else self._down(self.skip(x))
        return h + s


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): 1x1 convolutions, softmax over positions.

    Keys and values are max-pooled by 2 as in BigGAN's implementation, which cuts memory by 4.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.q = sn_conv(channels, max(channels // 8, 1), k=1, bias=False)
        self.k = sn_conv(channels, max(channels // 8, 1), k=1, bias=False)
        self.v = sn_conv(channels, max(channels // 2, 1), k=1, bias=False)
        self.o = sn_conv(max(channels // 2, 1), channels, k=1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q(x).flatten(2)
        k = F.max_pool2d(self.k(x), 2).flatten(2)
        v = F.max_pool2d(self.v(x), 2).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
        o = (v @ attn.transpose(1, 2)).view(b, -1, h, w)
        return x + self.gamma * self.o(o)


class ImageFeatures(nn.Module):
    """Residual down-blocks to 4x4, one more block, ReLU and sum pooling: (B, 1, S, S) -> (B, C)."""

    def __init__(self, image_size: int, width: int):
        super().__init__()
        n_down = (image_size // 4).bit_length() - 1
        chans = [width * min(2**i, 16) for i in range(n_down + 1)]
        blocks = [DBlock(1, chans[0], first=True)]
        blocks += [DBlock(chans[i - 1], chans[i]) for i in range(1, n_down)]
        blocks += [DBlock(chans[n_down - 1], chans[n_down], down=False)]
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = chans[n_down]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(x)).sum(dim=(2, 3))
