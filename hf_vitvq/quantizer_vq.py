"""Vector quantization against a learned codebook (VQ-VAE, arXiv 1711.00937), as TiTok does it.

Math lives in pure functions so that it can be tested on its own; `VectorQuantizer` holds the codebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer_base import QuantizerOutput, code_perplexity


def squared_distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between (N, D) vectors and (K, D) codes, as one matmul: (N, K).

    (z - e)^2 = z^2 + e^2 - 2 z.e
    """
    return vectors.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * vectors @ codebook.t()


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 16384) -> torch.Tensor:
    """Index of the nearest code for each of the (N, D) vectors: (N,) int64.

    Works through `vectors` in chunks so that at most (chunk_size, K) distances exist at once.
    """
    return torch.cat([squared_distances(chunk, codebook).argmin(dim=1) for chunk in vectors.split(chunk_size)])


def straight_through(latents: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward value `quantized`, gradient of the identity to `latents`: z + sg[q - z]."""
    return latents + (quantized - latents).detach()


def vq_losses(latents: torch.Tensor, quantized: torch.Tensor, commitment_cost: float) -> dict[str, torch.Tensor]:
    """The two VQ-VAE loss terms.

    codebook_loss = mean((q - sg[z])^2) moves codes towards the encoder outputs;
    commitment_loss = beta * mean((sg[q] - z)^2) keeps the encoder close to its codes.
    """
    return {
        "codebook_loss": F.mse_loss(quantized, latents.detach()),
        "commitment_loss": commitment_cost * F.mse_loss(latents, quantized.detach()),
    }


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer with a (codebook_size, codebook_dim) codebook.

    With `use_l2_norm`, latents and codes are l2-normalised before the search, so the nearest code is the most
    cosine-similar one, and the quantized vectors are the normalised codes. Runs in float32 under autocast.
    """

    def __init__(self, codebook_size: int, codebook_dim: int, commitment_cost: float, use_l2_norm: bool) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment_cost = commitment_cost
        self.use_l2_norm = use_l2_norm
        self.embedding = nn.Embedding(codebook_size, codebook_dim)

    def codebook(self) -> torch.Tensor:
        """The (K, D) float32 codes as the search sees them (normalised when `use_l2_norm`)."""
        codes = self.embedding.weight.float()
        return F.normalize(codes, dim=-1) if self.use_l2_norm else codes

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, L, D) latents; see [`QuantizerOutput`]."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            latents = latents.float()
            if self.use_l2_norm:
                latents = F.normalize(latents, dim=-1)
            batch_size, seq_len, dim = latents.shape
            # (B, L, D) -> (B*L, D)
            indices = nearest_code(latents.reshape(-1, dim), self.codebook()).view(batch_size, seq_len)
            quantized = self.indices_to_codes(indices)
            losses = vq_losses(latents, quantized, self.commitment_cost)
            stats = {"perplexity": code_perplexity(indices.detach(), self.codebook_size)}
            return QuantizerOutput(straight_through(latents, quantized), indices, losses, stats)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Look up (...) int64 code ids: (..., D) float32 codes."""
        return F.embedding(indices, self.codebook())
