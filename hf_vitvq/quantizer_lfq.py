"""Lookup-free quantization (LFQ, MAGVIT-v2, Yu et al., arXiv 2310.05737): each channel's sign is one bit.

The implicit codebook is {-1, 1}^D (2^D codes); a code's id is its bits read with channel 0 as the most significant.
An entropy loss (confident bits per token, all codes used across the batch) keeps the codebook in use.
"""

from __future__ import annotations

import torch

from .configuration_vitvq import ViTVQConfig
from .quantizer_base import CodebookUsage, Quantizer, QuantizerOutput, code_perplexity, entropy_loss
from .quantizer_vq import straight_through, vq_losses


def bit_weights(dim: int, device: torch.device) -> torch.Tensor:
    """(D,) int64 place values 2^(D-1), ..., 2, 1."""
    return 2 ** torch.arange(dim - 1, -1, -1, device=device)


def lfq_quantize(latents: torch.Tensor) -> torch.Tensor:
    """(..., D) latents -> (..., D) codes in {-1, 1}: +1 where z > 0 (no gradient; see `straight_through`)."""
    return torch.where(latents > 0, 1.0, -1.0).to(latents.dtype)


def lfq_codes_to_indices(codes: torch.Tensor) -> torch.Tensor:
    """(..., D) codes in {-1, 1} -> (...) int64 ids in [0, 2^D)."""
    return ((codes > 0).long() * bit_weights(codes.shape[-1], codes.device)).sum(dim=-1)


def lfq_indices_to_codes(indices: torch.Tensor, dim: int) -> torch.Tensor:
    """(...) int64 ids -> (..., D) float32 codes in {-1, 1}; the inverse of [`lfq_codes_to_indices`]."""
    bits = (indices.unsqueeze(-1) // bit_weights(dim, indices.device)) % 2  # (..., D)
    return bits.float() * 2 - 1


class LookupFreeQuantizer(Quantizer):
    """LFQ on `codebook_dim` channels (`codebook_size` must be 2^codebook_dim). Losses: `commitment_loss`
    (commitment_cost * mean((sg[q] - z)^2)) and, when `entropy_loss_weight > 0`, `entropy_loss` over the soft
    assignments softmax(2 z.c / entropy_temperature) to all 2^D codes (memory (B*L, 2^D)). Runs in float32."""

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        self.dim = config.codebook_dim
        self.codebook_size = config.codebook_size
        self.commitment_cost = config.commitment_cost
        self.entropy_loss_weight = config.entropy_loss_weight
        self.entropy_temperature = config.entropy_temperature
        self.codebook_entropy_weight = config.codebook_entropy_weight
        self.usage = CodebookUsage(self.codebook_size, config.usage_window, persistent=False)

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, L, D) latents to signs; indices (B, L)."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            latents = latents.float()
            codes = lfq_quantize(latents.detach())
            indices = lfq_codes_to_indices(codes)
            losses = {"commitment_loss": vq_losses(latents, codes, self.commitment_cost)["commitment_loss"]}
            if self.entropy_loss_weight > 0:
                all_codes = self.indices_to_codes(torch.arange(self.codebook_size, device=latents.device))  # (K, D)
                # softmax(-|z - c|^2 / T) = softmax(2 z.c / T) since |c|^2 = D for every code
                logits = 2 * latents.reshape(-1, self.dim) @ all_codes.t() / self.entropy_temperature  # (B*L, K)
                losses["entropy_loss"] = self.entropy_loss_weight * entropy_loss(logits, self.codebook_entropy_weight)
            if self.is_training_step:
                self.usage.update(indices)
            stats = {"perplexity": code_perplexity(indices, self.codebook_size)}
            return QuantizerOutput(straight_through(latents, codes), indices, losses, stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) int64 ids -> (..., D) float32 codes in {-1, 1}."""
        return lfq_indices_to_codes(indices, self.dim)
