"""A compact noise-prediction UNet eps(x_t, t, cond) with AdaGN ResBlocks.

It knows nothing of causality, schedules or condition dropout: the condition is one vector per image,
projected to the time-embedding width and added to it; every ResBlock applies the sum through scale-shift
group normalisation (AdaGN, Dhariwal & Nichol 2021), as the CausalDiffAE reference does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import group_norm, timestep_embedding


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = group_norm(out_ch)
        self.out = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift  # AdaGN
        return self.skip(x) + self.out(h)


class Attention(nn.Module):
    """Single-head self-attention over positions, used at the coarsest resolutions."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = group_norm(ch), nn.Conv2d(ch, 3 * ch, 1), _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """eps_theta(x_t, t, cond): x_t (B, C, H, W), t (B,) integer timesteps, cond (B, cond_dim) -> (B, C, H, W)."""

    def __init__(self, channels: int, cond_dim: int, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult needs at least one level, e.g. [1, 2, 2]")
        bad = [lv for lv in attention_levels if not 0 <= lv < len(channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside the {len(channel_mult)} levels of channel_mult")
        self.base_channels, emb_dim = base_channels, 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(cond_dim, emb_dim)
        self.stem = nn.Conv2d(channels, base_channels, 3, padding=1)

        widths = [base_channels * m for m in channel_mult]
        self.down, skips, ch = nn.ModuleList(), [base_channels], base_channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, width, emb_dim, dropout)]
                if level in attention_levels:
                    blocks.append(Attention(width))
                self.down.append(nn.ModuleList(blocks))
                ch = width
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), Attention(ch),
                                  ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), width, emb_dim, dropout)]
                if level in attention_levels:
                    blocks.append(Attention(width))
                if level > 0 and i == num_res_blocks:
                    blocks.append(Upsample(width))
                self.up.append(nn.ModuleList(blocks))
                ch = width
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels)) + self.cond_proj(cond)  # (B, emb)
        h = self.stem(x)
        hs = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, emb) if isinstance(block, (ResBlock, Attention)) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for blocks in self.up:
            skip = hs.pop()
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, emb, hs[-1]) if isinstance(block, Upsample) else block(h, emb)
        return self.head(h)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the next skip's size (so odd sizes such as 7 -> 14 -> 28 work), then conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
