"""Finite scalar quantization (FSQ, Mentzer et al., arXiv 2309.15505): no codebook to learn or collapse.

Each of the D channels is bounded and rounded to one of `levels[d]` values; the implicit codebook is the grid of all
prod(levels) combinations, and a code's id is its mixed-radix number (channel 0 the least significant digit).
"""

from __future__ import annotations

import math

import torch

from .configuration_vitvq import ViTVQConfig
from .quantizer_base import CodebookUsage, Quantizer, QuantizerOutput, code_perplexity
from .quantizer_vq import straight_through


def fsq_bound(latents: torch.Tensor, levels: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Squash (..., D) latents into (-L/2, L/2) per channel, shifted for even L so that rounding hits exactly L
    integers: tanh(z + atanh(offset / h)) * h - offset, h = (L - 1)(1 + eps) / 2, offset = 0.5 for even L else 0."""
    half_range = (levels - 1) * (1 + eps) / 2
    offset = (levels % 2 == 0).to(latents.dtype) * 0.5
    shift = torch.atanh(offset / half_range)
    return torch.tanh(latents + shift) * half_range - offset


def round_ste(values: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient."""
    return straight_through(values, values.round())


def fsq_quantize(latents: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(..., D) latents -> (..., D) grid codes in [-1, 1]: round(bound(z)) / (L // 2), straight-through."""
    return round_ste(fsq_bound(latents, levels)) / (levels // 2)


def mixed_radix_basis(levels: torch.Tensor) -> torch.Tensor:
    """Place values of the digits: (1, L_0, L_0 L_1, ...), the product of the levels below each digit (written as a
    masked product, not `cumprod`, which the ONNX exporter cannot convert)."""
    below = torch.ones(len(levels), len(levels), dtype=torch.bool, device=levels.device).tril(-1)  # (D, D): j < i
    return torch.where(below, levels, 1).prod(dim=1)


def fsq_codes_to_indices(codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(..., D) grid codes -> (...) int64 ids in [0, prod(levels))."""
    half_width = levels // 2
    digits = (codes * half_width + half_width).round().long()  # (..., D) in [0, L)
    return (digits * mixed_radix_basis(levels)).sum(dim=-1)


def fsq_indices_to_codes(indices: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(...) int64 ids -> (..., D) float32 grid codes; the inverse of [`fsq_codes_to_indices`]."""
    half_width = levels // 2
    digits = (indices.unsqueeze(-1) // mixed_radix_basis(levels)) % levels  # (..., D)
    return (digits - half_width).float() / half_width


class FiniteScalarQuantizer(Quantizer):
    """FSQ over `config.fsq_levels` (one level count per channel, `codebook_dim` channels, `codebook_size` =
    prod(levels) codes). No loss terms; runs in float32 under autocast."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        self.levels = list(config.fsq_levels)
        self.codebook_size = math.prod(self.levels)
        self.usage = CodebookUsage(self.codebook_size, config.usage_window, persistent=False)

    def levels_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.levels, device=device)

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, L, D) latents to the grid; indices (B, L)."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            levels = self.levels_tensor(latents.device)
            quantized = fsq_quantize(latents.float(), levels)
            indices = fsq_codes_to_indices(quantized.detach(), levels)
            if self.is_training_step:
                self.usage.update(indices)
            stats = {"perplexity": code_perplexity(indices, self.codebook_size)}
            return QuantizerOutput(quantized, indices, {}, stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) int64 ids -> (..., D) float32 grid codes."""
        return fsq_indices_to_codes(indices, self.levels_tensor(indices.device))
