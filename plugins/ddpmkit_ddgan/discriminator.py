"""The time-conditioned discriminator D(x_{t-1}, x_t, t) of Xiao et al. (2022), section 3.2."""

from __future__ import annotations

import torch
from torch import nn

from ddpmkit import timestep_features


class Discriminator(nn.Module):
    """D(x_{t-1}, x_t, t) -> logit: is x_{t-1} a real step back from x_t at index t?

    For images ``(C, H, W)``: [x_{t-1}, x_t] concatenated channel-wise, then ``levels``
    residual blocks, each adding a projection of the time embedding and halving the
    resolution, then a sum over positions and a linear layer (DDGAN's small discriminator in
    outline). For vectors ``(D,)``: an MLP on [x_{t-1}, x_t, embedding(t)].
    """

    def __init__(
        self, data_shape: tuple[int, ...], width: int = 64, levels: int = 2, time_dim: int = 64
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time = nn.Sequential(
            nn.Linear(time_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, width)
        )
        self.image = len(data_shape) == 3
        channels = data_shape[0]
        if self.image:
            self.stem = nn.Conv2d(2 * channels, width, 3, padding=1)
            self.blocks = nn.ModuleList(_DownBlock(width, width) for _ in range(levels))
            self.head = nn.Linear(width, 1)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(2 * channels + width, width),
                nn.LeakyReLU(0.2),
                nn.Linear(width, width),
                nn.LeakyReLU(0.2),
                nn.Linear(width, width),
                nn.LeakyReLU(0.2),
                nn.Linear(width, 1),
            )

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)``."""
        emb = self.time(timestep_features(t, self.time_dim).to(x_t.dtype))
        if not self.image:
            return self.mlp(torch.cat([x_prev, x_t, emb], dim=1)).squeeze(1)
        h = self.stem(torch.cat([x_prev, x_t], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        return self.head(nn.functional.leaky_relu(h, 0.2).sum(dim=(2, 3))).squeeze(1)


class _DownBlock(nn.Module):
    """Residual block with the time embedding added, then 2x average-pool downsampling."""

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        act = nn.functional.leaky_relu
        r = self.conv1(act(h, 0.2)) + self.emb(emb)[:, :, None, None]
        r = self.conv2(act(r, 0.2))
        return nn.functional.avg_pool2d(h + r, 2) if min(h.shape[2:]) >= 2 else h + r
