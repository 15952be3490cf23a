"""The training objective, composed of named, weighted terms.

`TokenizerLoss` returns every term it computed, so the loop logs them all; a later perceptual or adversarial term
is one more entry in `terms`, computed from the same (images, output) pair, without touching the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_vitvq import ViTVQModelOutput


@dataclass
class LossWeights:
    reconstruction_l1: float = 0.0
    reconstruction_l2: float = 1.0
    quantizer: float = 1.0


class TokenizerLoss:
    """total = w_l1 * |x - x_hat| + w_l2 * (x - x_hat)^2 + w_q * quantizer loss (codebook + commitment, entropy,
    KL, ... as the model's quantizer defines it); reconstruction terms with weight 0 are skipped."""

    def __init__(self, weights: LossWeights) -> None:
        if min(weights.reconstruction_l1, weights.reconstruction_l2, weights.quantizer) < 0:
            raise ValueError(f"Loss weights must be >= 0, got {weights}.")
        if weights.reconstruction_l1 == weights.reconstruction_l2 == 0:
            raise ValueError("At least one of the L1 and L2 reconstruction weights must be > 0.")
        self.weights = weights

    def __call__(self, images: torch.Tensor, output: ViTVQModelOutput) -> dict[str, torch.Tensor]:
        """Named terms (unweighted; the quantizer's own terms are in `output.quantizer_stats`) and `loss`, their
        weighted sum; computed in float32."""
        reconstruction = output.reconstruction.float()
        images = images.float()
        terms: dict[str, torch.Tensor] = {}
        if self.weights.reconstruction_l1:
            terms["l1_loss"] = F.l1_loss(reconstruction, images)
        if self.weights.reconstruction_l2:
            terms["l2_loss"] = F.mse_loss(reconstruction, images)
        terms["quantizer_loss"] = output.quantizer_loss
        terms["loss"] = (
            self.weights.reconstruction_l1 * terms.get("l1_loss", 0.0)
            + self.weights.reconstruction_l2 * terms.get("l2_loss", 0.0)
            + self.weights.quantizer * output.quantizer_loss
        )
        return terms
