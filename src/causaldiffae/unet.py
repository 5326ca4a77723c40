"""A compact noise-prediction UNet eps(x_t, t, cond) with AdaGN ResBlocks.

It knows nothing of causality, schedules or condition dropout: the condition is one vector per image,
projected to the time-embedding width and added to it; every ResBlock applies the sum through scale-shift
group normalisation (AdaGN, Dhariwal & Nichol 2021), as the CausalDiffAE reference does.

The containers are ModuleLists indexed by number because the shipped weights' state-dict keys
(``down.<i>.<j>``, ``mid.<j>``, ``up.<i>.<j>``) depend on that layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    """Conv block whose second normalisation is scaled and shifted by the (time + condition) embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = group_norm(out_ch)
        self.out = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift  # AdaGN
        return self.skip(x) + self.out(h)  # (B, out, H, W)


class Attention(nn.Module):
    """Single-head self-attention over positions, used at the coarsest resolutions."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = group_norm(ch), nn.Conv2d(ch, 3 * ch, 1), _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (B, HW, C) each
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)  # (B, C, H, W)


class Downsample(nn.Sequential):
    """Strided conv halving the resolution (rounding up: 7 -> 4). A Sequential, for the key ``0.weight``."""

    def __init__(self, ch: int) -> None:
        super().__init__(nn.Conv2d(ch, ch, 3, stride=2, padding=1))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the next skip's size (so odd sizes such as 7 -> 14 -> 28 work), then conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))  # (B, C, *size)


class Stage(nn.ModuleList):
    """One step at one resolution: a ResBlock, then self-attention where the level has it, then (last step of
    an up level but the finest) upsampling. Its parts are numbered 0, 1, 2 in that order, as the weights expect."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float,
                 attention: bool, upsample: bool = False) -> None:
        super().__init__([ResBlock(in_ch, out_ch, emb_dim, dropout)])
        self.attends, self.upsamples = attention, upsample
        if attention:
            self.append(Attention(out_ch))
        if upsample:
            self.append(Upsample(out_ch))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """``size``: the resolution an upsampling stage grows to (the next skip's); other stages keep theirs."""
        x = self[0](x, emb)  # (B, out, H, W)
        if self.attends:
            x = self[1](x)
        if self.upsamples:
            x = self[-1](x, size)  # (B, out, *size)
        return x


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the UNet; level l works at 1 / 2**l of the input resolution with channel_mult[l] times
    base_channels channels."""

    channels: int  # image channels in and out
    cond_dim: int  # width of the per-image condition vector
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1  # ResBlocks per level on the way down (one more on the way up, for the extra skip)
    attention_levels: tuple[int, ...] = ()  # levels (0 = full resolution) with self-attention
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))  # lists from JSON configs
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        if not self.channel_mult:
            raise ValueError("channel_mult needs at least one level, e.g. [1, 2, 2]")
        bad = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside the {len(self.channel_mult)} levels of channel_mult")


class UNet(nn.Module):
    """eps_theta(x_t, t, cond): x_t (B, C, H, W), t (B,) integer timesteps, cond (B, cond_dim) -> (B, C, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        base, levels = config.base_channels, len(config.channel_mult)
        emb_dim, dropout = 4 * base, config.dropout
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(config.cond_dim, emb_dim)
        self.stem = nn.Conv2d(config.channels, base, 3, padding=1)

        # down: per level num_res_blocks stages, then a Downsample (but at the coarsest level); every output is
        # a skip, as is the stem's
        self.down, skips, ch = nn.ModuleList(), [base], base
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(Stage(ch, base * mult, emb_dim, dropout, level in config.attention_levels))
                ch = base * mult
                skips.append(ch)
            if level < levels - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), Attention(ch),
                                  ResBlock(ch, ch, emb_dim, dropout)])
        # up: per level num_res_blocks + 1 stages, each eating one skip; the last one upsamples (but at level 0)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                upsample = level > 0 and i == config.num_res_blocks
                self.up.append(Stage(ch + skips.pop(), base * mult, emb_dim, dropout,
                                     level in config.attention_levels, upsample))
                ch = base * mult
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, config.channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # C_l = base_channels * channel_mult[l], H_l = ceil(H / 2**l) (28 -> 14 -> 7), L = number of levels
        cfg, levels = self.config, len(self.config.channel_mult)
        emb = self.time_mlp(timestep_embedding(t, cfg.base_channels)) + self.cond_proj(cond)  # (B, 4 C_0)
        h = self.stem(x)  # (B, base_channels, H, W)
        skips = [h]
        down = iter(self.down)  # walked in the order __init__ built it
        for level in range(levels):
            for _ in range(cfg.num_res_blocks):
                h = next(down)(h, emb)  # (B, C_l, H_l, W_l)
                skips.append(h)
            if level < levels - 1:
                h = next(down)(h)  # (B, C_l, H_{l+1}, W_{l+1})
                skips.append(h)
        res1, attention, res2 = self.mid
        h = res2(attention(res1(h, emb)), emb)  # (B, C_{L-1}, H_{L-1}, W_{L-1})
        for stage in self.up:
            skip = skips.pop()  # same resolution as h
            next_size = (skips[-1] if skips else skip).shape[-2:]
            h = stage(torch.cat([h, skip], dim=1), emb, next_size)  # (B, C_l, *next_size)
        return self.head(h)  # (B, C, H, W)
