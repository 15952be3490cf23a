"""Metric functions against independent references (scikit-image) and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hf_vitvq.metrics import codebook_usage, psnr, ssim


def test_psnr_closed_form_and_skimage():
    reference = torch.zeros(1, 3, 8, 8)
    noisy = reference + 0.1  # mse 0.01 -> 20 dB
    assert psnr(noisy, reference).item() == pytest.approx(20.0, abs=1e-4)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 16, 16, generator=generator), torch.rand(2, 3, 16, 16, generator=generator)
    for i in range(2):
        expected = peak_signal_noise_ratio(b[i].numpy(), a[i].numpy(), data_range=1.0)
        assert psnr(a, b)[i].item() == pytest.approx(expected, rel=1e-5)


def test_ssim_matches_skimage_gaussian_ssim():
    generator = torch.Generator().manual_seed(1)
    reference = torch.rand(2, 3, 32, 32, generator=generator)
    distorted = (reference + 0.1 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(0, 1)
    ours = ssim(distorted, reference)
    for i in range(2):
        expected = structural_similarity(
            distorted[i].permute(1, 2, 0).numpy().astype(np.float64),
            reference[i].permute(1, 2, 0).numpy().astype(np.float64),
            data_range=1.0,
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(expected, abs=1e-4)
    assert ssim(reference, reference).min().item() == pytest.approx(1.0, abs=1e-6)


def test_metrics_of_uint8_images_are_float32_and_equal_those_of_the_same_values_as_floats():
    generator = torch.Generator().manual_seed(2)
    reference = torch.randint(0, 256, (2, 3, 24, 24), generator=generator, dtype=torch.uint8)
    distorted = (reference.int() + torch.randint(-20, 21, reference.shape, generator=generator)).clamp(0, 255)
    distorted = distorted.to(torch.uint8)
    for metric in (psnr, ssim):
        ours = metric(distorted, reference, data_range=255)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, metric(distorted.float(), reference.float(), data_range=255))


def test_codebook_usage_counts_distinct_codes():
    assert codebook_usage(torch.tensor([[0, 0, 3], [3, 5, 0]]), codebook_size=8).item() == pytest.approx(3 / 8)
    assert math.isclose(codebook_usage(torch.arange(4), codebook_size=4).item(), 1.0)
