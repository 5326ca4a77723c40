"""Encoder q(u | x0) = N(mu, diag sigma^2): the exogenous noise of the latent SCM, one block per variable."""

from __future__ import annotations

import torch
from torch import nn

from .layers import group_norm


def downsampling_depth(image_size: int, final_size: int = 4) -> int:
    """How many stride-2 convolutions bring ``image_size`` to at most ``final_size`` (28 -> 3, 64 -> 4)."""
    if image_size < final_size:
        raise ValueError(f"image_size must be at least {final_size}, got {image_size}")
    depth, size = 0, image_size
    while size > final_size:
        size = (size + 1) // 2
        depth += 1
    return depth


class Encoder(nn.Module):
    """A conv stack sized from the image size, then a linear head to (mu, logvar) of shape (B, n_vars, d).

    The reference code hard-codes the depth and crashes on 28 px images; here the number of stride-2 stages
    follows the image size, so any size from 4 px up works.
    """

    def __init__(self, image_size: int, channels: int, n_vars: int, latent_dim: int, base_channels: int = 32,
                 max_channels: int = 256) -> None:
        super().__init__()
        self.n_vars, self.latent_dim = n_vars, latent_dim
        layers: list[nn.Module] = [nn.Conv2d(channels, base_channels, 3, padding=1)]
        ch, size = base_channels, image_size
        for _ in range(downsampling_depth(image_size)):
            out = min(ch * 2, max_channels)
            layers += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out, 3, stride=2, padding=1)]
            ch, size = out, (size + 1) // 2
        layers += [group_norm(ch), nn.SiLU(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch * size * size, 2 * n_vars * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [-1, 1] -> (mu, logvar), each (B, n_vars, d)."""
        h = self.head(self.features(x))  # (B, 2 * n_vars * d)
        mu, logvar = h.view(x.shape[0], 2, self.n_vars, self.latent_dim).unbind(1)
        return mu, logvar.clamp(-30.0, 20.0)
