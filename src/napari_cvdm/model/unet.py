"""The SR3-style U-Net used for the denoiser, the schedule network and the mean network.

Residual blocks (GroupNorm, swish, 3x3 convolutions) at each level, self-attention at the
lowest resolution. The denoiser is conditioned on a per-pixel noise map (the gamma map of
SPEC section 1) instead of a time embedding: the map goes through one 7x7 convolution and
each residual block adds a 1x1 projection of it, pooled to the block's resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig


def _groups(channels: int) -> int:
    """GroupNorm(32) as in SR3, fewer groups where a small preset has fewer channels."""
    return math.gcd(32, channels)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_cond: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.cond = nn.Conv2d(c_cond, c_out, 1) if c_cond else None
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(h)))
        if self.cond is not None and cond is not None:
            out = out + self.cond(cond)
        out = self.conv2(self.dropout(F.silu(self.norm2(out))))
        return out + self.skip(h)


class SelfAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, c, hh * ww).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )[:, 0]
        return h + self.proj(out.transpose(1, 2).reshape(b, c, hh, ww))


class UNet(nn.Module):
    """U-Net mapping ``in_channels`` to ``out_channels`` at the same resolution.

    ``cond_channels`` > 0 enables the per-pixel conditioning map (e.g. gamma).
    Input sides must be multiples of ``config.stride``.
    """

    def __init__(self, config: UNetConfig, in_channels: int, out_channels: int,
                 cond_channels: int = 0, cond_features: int = 0):
        super().__init__()
        self.config = config
        widths = [config.base_channels * m for m in config.channel_mults]
        c_cond = cond_features if cond_channels else 0
        self.cond_in = nn.Conv2d(cond_channels, c_cond, 7, padding=3) if cond_channels else None
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        skips = [widths[0]]
        c = widths[0]
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(ResidualBlock(c, width, c_cond, config.dropout))
                c = width
                skips.append(c)
            downsample = (nn.Conv2d(c, c, 3, stride=2, padding=1)
                          if level < len(widths) - 1 else None)
            if downsample is not None:
                skips.append(c)
            stage = nn.ModuleDict({"blocks": blocks})
            if downsample is not None:
                stage["downsample"] = downsample
            self.down.append(stage)

        self.mid1 = ResidualBlock(c, c, c_cond, config.dropout)
        self.mid_attn = SelfAttention(c) if config.attention_at_lowest else nn.Identity()
        self.mid2 = ResidualBlock(c, c, c_cond, config.dropout)

        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level + 1):
                blocks.append(ResidualBlock(c + skips.pop(), width, c_cond, config.dropout))
                c = width
            stage = nn.ModuleDict({"blocks": blocks})
            if level > 0:
                stage["upsample"] = nn.Conv2d(c, c, 3, padding=1)
            self.up.append(stage)
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out_conv = nn.Conv2d(c, out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # Conditioning features at every resolution, computed once per call.
        cond_levels: list[torch.Tensor | None] = [None] * len(self.down)
        if self.cond_in is not None:
            if cond is None:
                raise ValueError("this network needs a conditioning map")
            feat = self.cond_in(cond)
            for level in range(len(self.down)):
                cond_levels[level] = feat
                if level < len(self.down) - 1:
                    feat = F.avg_pool2d(feat, 2)

        h = self.stem(h)
        skips = [h]
        for level, stage in enumerate(self.down):
            for block in stage["blocks"]:
                h = block(h, cond_levels[level])
                skips.append(h)
            if "downsample" in stage:
                h = stage["downsample"](h)
                skips.append(h)

        lowest = cond_levels[-1]
        h = self.mid2(self.mid_attn(self.mid1(h, lowest)), lowest)

        for i, stage in enumerate(self.up):
            level = len(self.up) - 1 - i
            for block in stage["blocks"]:
                h = block(torch.cat([h, skips.pop()], dim=1), cond_levels[level])
            if "upsample" in stage:
                h = stage["upsample"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out_conv(F.silu(self.out_norm(h)))
