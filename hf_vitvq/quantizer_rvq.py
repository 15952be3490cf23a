"""Residual vector quantization (SoundStream, arXiv 2107.03312): `num_quantizers` codebooks applied in turn, each
to what the previous ones left unexplained; the code of a token is the sum of its levels' codes.

Token ids have shape (B, L, num_quantizers). A downstream prior over one vocabulary can flatten them level-major per
token with offsets, `flat = (ids + codebook_size * torch.arange(num_quantizers)).flatten(1)`, a (B, L * Q) sequence
over Q * codebook_size ids (`(flat % codebook_size).view(B, L, Q)` inverts it), or predict the Q ids of each token
with Q output heads.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .configuration_vitvq import ViTVQConfig
from .quantizer_base import Quantizer, QuantizerOutput
from .quantizer_vq import build_vector_quantizer, straight_through


class ResidualVectorQuantizer(Quantizer):
    """`num_quantizers` [`VectorQuantizer`] levels, each with every option of the `vq` quantizer except the ones that
    change the gradient path (factorized projections, rotation trick): level q quantizes r_q = z - sum_{j<q} sg[c_j],
    and the output is z + sg[sum_q c_q - z]. Loss terms are summed over levels; `perplexity` is their mean."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        self.levels = nn.ModuleList(build_vector_quantizer(config) for _ in range(config.num_quantizers))

    def codebook_health(self) -> dict[str, torch.Tensor]:
        """Per-level statistics: usage and perplexities averaged over levels, dead codes summed, and the histograms
        stacked to (num_quantizers, codebook_size)."""
        per_level = [level.codebook_health() for level in self.levels]
        return {
            "codebook_usage": torch.stack([s["codebook_usage"] for s in per_level]).mean(),
            "window_perplexity": torch.stack([s["window_perplexity"] for s in per_level]).mean(),
            "dead_codes": torch.stack([s["dead_codes"] for s in per_level]).sum(),
            "code_frequency": torch.stack([s["code_frequency"] for s in per_level]),
        }

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, L, D) latents; indices (B, L, num_quantizers)."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            latents = latents.float()
            residual, total = latents, torch.zeros_like(latents)
            indices, losses, perplexities = [], defaultdict(list), []
            for level in self.levels:
                output = level(residual)
                codes = output.quantized.detach()
                residual, total = residual - codes, total + codes
                indices.append(output.indices)
                perplexities.append(output.stats["perplexity"])
                for name, value in output.losses.items():
                    losses[name].append(value)
            summed = {name: torch.stack(values).sum() for name, values in losses.items()}
            stats = {"perplexity": torch.stack(perplexities).mean()}
            return QuantizerOutput(straight_through(latents, total), torch.stack(indices, dim=-1), summed, stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., num_quantizers) int64 ids -> (..., D) float32 sums of the levels' codes."""
        return torch.stack([level.indices_to_codes(indices[..., q]) for q, level in enumerate(self.levels)]).sum(dim=0)
