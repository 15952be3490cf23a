"""The contract every quantizer of the package follows, and the codebook statistics they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class QuantizerOutput:
    """What a quantizer returns for latents of shape (B, L, D).

    Attributes:
        quantized: (B, L, D) float32 quantized latents; gradients reach the input through them.
        indices: (B, L) int64 code ids.
        losses: named scalar loss terms; their sum is the quantizer's training loss.
        stats: named scalar statistics (no gradient), e.g. `perplexity`.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        """Sum of the loss terms."""
        return sum(self.losses.values(), torch.zeros((), device=self.quantized.device))


def code_perplexity(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of the code frequencies in `indices`: 1 when one code is used, `codebook_size` at best."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs * torch.log(probs.clamp(min=1e-10))).sum()
    return entropy.exp()
