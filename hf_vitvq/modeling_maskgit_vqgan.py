"""The two-stage TiTok decoder head: ViT features -> logits over a MaskGIT-VQGAN codebook -> convolutional decoder.

TiTok's first released tokenizers (TiTok-L-32, B-64, S-128; Yu et al., arXiv 2406.07550, Sec. 3.3) do not predict
pixels with their ViT decoder. Per patch position it predicts a distribution over the codes of a frozen MaskGIT-VQGAN
(Chang et al., arXiv 2202.04200); the softmax-weighted sum of those codes forms a (grid x grid) latent image that
the MaskGIT-VQGAN convolutional decoder turns into pixels. The decoder is the taming-transformers VQGAN decoder
(Esser et al., arXiv 2012.09841) without attention: GroupNorm(32) ResNet blocks, nearest-neighbour upsampling.

    (B, grid^2, W) -> Linear W->2W, tanh, Linear 2W->K -> softmax -> @ codebook (K, D) -> (B, D, grid, grid)
      -> conv_in -> mid ResNet blocks -> per level (lowest resolution first): ResNet blocks, x2 upsample + conv
      -> GroupNorm, SiLU, conv_out -> (B, C, grid * 2^(levels-1), grid * 2^(levels-1))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_vitvq import ViTVQConfig

# Every GroupNorm of the MaskGIT-VQGAN decoder uses 32 groups and eps 1e-6.
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6


def _group_norm(num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, num_channels, eps=GROUP_NORM_EPS)


class MaskGitResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, plus a residual.

    When the width changes, MaskGIT-VQGAN's residual is a 1x1 conv of the block's *output* (not of its input, as in
    taming-transformers): `out = h + shortcut(h)`. The released weights were trained that way, so we keep it.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.nin_shortcut = (
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h, w)."""
        output = self.conv1(F.silu(self.norm1(hidden_states)))
        output = self.conv2(F.silu(self.norm2(output)))
        residual = hidden_states if self.nin_shortcut is None else self.nin_shortcut(output)
        return output + residual


class MaskGitUpBlock(nn.Module):
    """ResNet blocks at one resolution, then (except at the highest resolution) x2 nearest upsampling + 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            [MaskGitResnetBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_res_blocks)]
        )
        self.upsample_conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) if upsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, 2h, 2w), or (B, out_channels, h, w) without upsampling."""
        for block in self.block:
            hidden_states = block(hidden_states)
        if self.upsample_conv is not None:
            hidden_states = self.upsample_conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))
        return hidden_states


class MaskGitVQGANDecoder(nn.Module):
    """The MaskGIT-VQGAN convolutional decoder: (B, maskgit_code_dim, g, g) codes -> (B, C, g * 2^(n-1), ...) pixels.

    `up[i]` works at the i-th resolution counted from the highest (taming-transformers' storage order) and runs
    from `up[n-1]` (lowest resolution) to `up[0]`; its width is `maskgit_hidden_channels * maskgit_channel_mult[i]`.
    """

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        widths = [config.maskgit_hidden_channels * mult for mult in config.maskgit_channel_mult]
        num_levels = len(widths)
        self.conv_in = nn.Conv2d(config.maskgit_code_dim, widths[-1], kernel_size=3, padding=1)
        self.mid = nn.ModuleList(
            [MaskGitResnetBlock(widths[-1], widths[-1]) for _ in range(config.maskgit_num_res_blocks)]
        )
        self.up = nn.ModuleList(
            [
                MaskGitUpBlock(
                    in_channels=widths[min(level + 1, num_levels - 1)],
                    out_channels=widths[level],
                    num_res_blocks=config.maskgit_num_res_blocks,
                    upsample=level != 0,
                )
                for level in range(num_levels)
            ]
        )
        self.norm_out = _group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], config.num_channels, kernel_size=3, padding=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, maskgit_code_dim, g, g) -> (B, num_channels, g * 2^(n-1), g * 2^(n-1)); no output nonlinearity."""
        hidden_states = self.conv_in(codes)
        for block in self.mid:
            hidden_states = block(hidden_states)
        for block in reversed(self.up):
            hidden_states = block(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


class MaskGitVQGANHead(nn.Module):
    """Decoder head of the two-stage TiTok models: ViT patch features -> soft MaskGIT-VQGAN codes -> pixels."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        width = config.decoder_hidden_size
        self.grid_size = config.grid_size
        self.fc1 = nn.Linear(width, 2 * width)
        self.activation = nn.Tanh()
        self.fc2 = nn.Linear(2 * width, config.maskgit_num_codes)
        self.codebook = nn.Embedding(config.maskgit_num_codes, config.maskgit_code_dim)
        self.decoder = MaskGitVQGANDecoder(config)

    def code_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, grid^2, W) patch features -> (B, grid^2, maskgit_num_codes) logits over the MaskGIT-VQGAN codes."""
        return self.fc2(self.activation(self.fc1(hidden_states)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, grid^2, W) patch features -> (B, C, H, W) pixels."""
        logits = self.code_logits(hidden_states)
        batch_size, num_codes = logits.shape[0], logits.shape[-1]
        # (B, grid^2, K) -> (B, K, grid, grid): TiTok's layout, in which the official checkpoints' outputs were
        # computed; the same operations on the same memory layout round the same way.
        logits = logits.transpose(1, 2).reshape(batch_size, num_codes, self.grid_size, self.grid_size)
        # softmax-weighted sum of the codes: (B, K, grid, grid) x (K, D) -> (B, D, grid, grid)
        codes = torch.einsum("bkhw,kd->bdhw", logits.softmax(dim=1), self.codebook.weight)
        return self.decoder(codes).contiguous()  # einsum's output is channels-last in memory, and so is the conv's


__all__ = ["MaskGitResnetBlock", "MaskGitUpBlock", "MaskGitVQGANDecoder", "MaskGitVQGANHead"]
