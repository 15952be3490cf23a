"""Residual VQ and continuous (KL) tokens against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig
from hf_vitvq.quantizer_kl import DiagonalGaussianQuantizer, gaussian_kl
from hf_vitvq.quantizer_rvq import ResidualVectorQuantizer


def test_rvq_quantizes_residuals_level_by_level():
    torch.manual_seed(0)
    config = ViTVQConfig(
        **tiny_config_kwargs(quantizer_type="rvq", num_quantizers=3, codebook_size=11, use_l2_norm_codes=False)
    )
    quantizer = ResidualVectorQuantizer(config)
    latents = torch.randn(2, 4, config.codebook_dim, requires_grad=True)
    output = quantizer(latents)
    residual, total, expected_ids, codebook_loss = latents.detach(), 0, [], 0
    for level in quantizer.levels:
        codes = level.embedding.weight
        ids = torch.cdist(residual, codes.expand(2, -1, -1)).argmin(-1)
        codebook_loss = codebook_loss + F.mse_loss(codes[ids], residual)
        residual, total = residual - codes[ids], total + codes[ids]
        expected_ids.append(ids)
    assert output.indices.shape == (2, 4, 3)
    assert torch.equal(output.indices, torch.stack(expected_ids, dim=-1))
    torch.testing.assert_close(output.quantized, total)
    torch.testing.assert_close(quantizer.indices_to_codes(output.indices), total)
    torch.testing.assert_close(output.losses["codebook_loss"], codebook_loss)
    first_level_only = quantizer.levels[0].embedding.weight[expected_ids[0]]
    assert (latents - output.quantized).norm() < (latents - first_level_only).norm()  # the second level helps
    output.quantized.sum().backward()
    torch.testing.assert_close(latents.grad, torch.ones_like(latents))  # one straight-through copy, not 3


def kl_quantizer(**overrides) -> DiagonalGaussianQuantizer:
    return DiagonalGaussianQuantizer(ViTVQConfig(**tiny_config_kwargs(quantizer_type="kl", **overrides)))


def test_kl_splits_mean_and_clamped_logvar_and_samples_in_training():
    quantizer = kl_quantizer(kl_loss_weight=0.5)
    mean = torch.tensor([[[0.5, -1.0]]])
    logvar = torch.tensor([[[-40.0, 1.0]]])  # -40 is clamped to -30
    moments = torch.cat([mean, logvar], dim=-1)
    eval_output = quantizer.eval()(moments)
    assert eval_output.indices is None
    torch.testing.assert_close(eval_output.quantized, mean)
    clamped = torch.tensor([[[-30.0, 1.0]]])
    kl = 0.5 * (mean**2 + clamped.exp() - 1 - clamped).sum()
    torch.testing.assert_close(eval_output.losses["kl_loss"], 0.5 * kl)
    torch.manual_seed(1)
    sample = quantizer.train()(moments).quantized
    torch.manual_seed(1)
    noise = torch.randn(1, 1, 2)
    torch.testing.assert_close(sample, mean + torch.exp(0.5 * clamped) * noise)


def test_gaussian_kl_is_summed_over_tokens_and_channels():
    mean, logvar = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    torch.testing.assert_close(gaussian_kl(mean, logvar), torch.full((2,), 0.5 * 12))


def test_kl_indices_to_codes_rejects_integer_ids():
    with pytest.raises(TypeError, match="no token ids"):
        kl_quantizer().indices_to_codes(torch.zeros(1, 7, dtype=torch.long))


def test_kl_latents_at_inference_are_contiguous():
    from safetensors.torch import save

    quantizer = DiagonalGaussianQuantizer(ViTVQConfig(**tiny_config_kwargs(quantizer_type="kl"))).eval()
    latents = quantizer(torch.randn(2, 3, 2 * 5)).quantized
    assert latents.is_contiguous()
    save({"latents": latents})  # what a user does with encode()'s output
