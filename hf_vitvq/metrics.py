"""Reconstruction and codebook metrics as pure functions on tensors (no state, no I/O)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(images: torch.Tensor, references: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image: (B,) float32 for (B, C, H, W) inputs in [0, data_range]."""
    mse = (images.float() - references.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=1e-12))


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    kernel_1d = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    # (size, size) -> (C, 1, size, size): one depthwise filter per channel
    return torch.outer(kernel_1d, kernel_1d).expand(channels, 1, size, size).contiguous()


def ssim(
    images: torch.Tensor, references: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian window, valid positions only) of each image: (B,) float32.

    Inputs are (B, C, H, W) in [0, data_range] (any dtype, e.g. uint8 with `data_range=255`); matches
    `skimage.metrics.structural_similarity` with `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`.
    """
    channels = images.shape[1]
    x, y = images.double(), references.double()
    window = _gaussian_window(window_size, sigma, channels, x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).float()


def codebook_usage(token_ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Fraction of the `codebook_size` codes that occur at least once in `token_ids`."""
    used = torch.zeros(codebook_size, dtype=torch.bool, device=token_ids.device)
    used[token_ids.reshape(-1)] = True
    return used.float().mean()
