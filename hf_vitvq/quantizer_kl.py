"""Continuous tokens: a diagonal Gaussian posterior per latent token, as TiTok's VAE variant and latent diffusion
(Rombach et al., arXiv 2112.10752) use it. No ids: `encode` returns latents for diffusion-style downstream models.
"""

from __future__ import annotations

import torch

from .configuration_vitvq import ViTVQConfig
from .quantizer_base import Quantizer, QuantizerOutput

# Clamp of the predicted log-variance, as TiTok and LDM's DiagonalGaussianDistribution do.
LOGVAR_RANGE = (-30.0, 20.0)


def gaussian_parameters(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2 D) encoder outputs -> mean (..., D) and clamped log-variance (..., D): first half, second half."""
    mean, logvar = moments.chunk(2, dim=-1)
    return mean, logvar.clamp(*LOGVAR_RANGE)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) of (B, L, D) posteriors, summed over tokens and channels: (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2))


class DiagonalGaussianQuantizer(Quantizer):
    """Reads (B, L, 2 * codebook_dim) moments; returns a sample mean + std * eps in a training step (see
    [`Quantizer.is_training_step`]), the mean otherwise.

    Loss: `kl_loss` = kl_loss_weight * mean over the batch of the KL summed over tokens and channels (TiTok's
    normalisation). `indices` is `None`; stats: `posterior_std` (mean std of the batch). Runs in float32.
    """

    is_continuous = True

    def __init__(self, config: ViTVQConfig) -> None:
        super().__init__()
        self.kl_loss_weight = config.kl_loss_weight

    def forward(self, moments: torch.Tensor) -> QuantizerOutput:
        """(B, L, 2 D) moments -> latents (B, L, D); see the class docstring."""
        with torch.autocast(device_type=moments.device.type, enabled=False):
            mean, logvar = gaussian_parameters(moments.float())
            std = torch.exp(0.5 * logvar)
            # (the mean is a view of half the channels: contiguous, so callers can save or view it)
            latents = mean + std * torch.randn_like(mean) if self.is_training_step else mean.contiguous()
            losses = {"kl_loss": self.kl_loss_weight * gaussian_kl(mean, logvar).mean()}
            return QuantizerOutput(latents, None, losses, {"posterior_std": std.detach().mean()})

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Continuous tokens are their own codes: (B, L, D) float latents are returned as float32."""
        if not indices.is_floating_point():
            raise TypeError(
                f"The `kl` quantizer has no token ids: pass (batch, num_latent_tokens, codebook_dim) float latents "
                f"(what `encode` returns), got a {indices.dtype} tensor."
            )
        return indices.float()
