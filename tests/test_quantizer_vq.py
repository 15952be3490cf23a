"""The vector quantizer's math, against hand computations and brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_vitvq.quantizer_base import code_perplexity
from hf_vitvq.quantizer_vq import (
    VectorQuantizer,
    nearest_code,
    squared_distances,
    straight_through,
    vq_losses,
)


def test_squared_distances_equal_cdist_squared():
    torch.manual_seed(0)
    vectors, codebook = torch.randn(50, 12), torch.randn(33, 12)
    torch.testing.assert_close(squared_distances(vectors, codebook), torch.cdist(vectors, codebook) ** 2)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_nearest_code_matches_brute_force_argmin(chunk_size):
    torch.manual_seed(1)
    vectors, codebook = torch.randn(200, 6), torch.randn(64, 6)
    brute_force = ((vectors[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)
    assert torch.equal(nearest_code(vectors, codebook, chunk_size=chunk_size), brute_force)


def test_two_code_codebook_gives_known_indices():
    quantizer = VectorQuantizer(codebook_size=2, codebook_dim=2, commitment_cost=0.25, use_l2_norm=False)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    latents = torch.tensor([[[0.9, 0.3], [0.2, 5.0], [-3.0, -1.0]]])
    output = quantizer(latents)
    assert output.indices.tolist() == [[0, 0, 1]]
    torch.testing.assert_close(output.quantized, torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]]))


def test_losses_equal_hand_computation():
    latents = torch.tensor([[[1.0, 2.0], [0.0, -1.0]]])
    codes = torch.tensor([[[1.5, 2.0], [0.0, 0.0]]])
    # squared errors: 0.25, 0, 0, 1 -> mean 0.3125
    losses = vq_losses(latents, codes, commitment_cost=0.25)
    assert losses["codebook_loss"].item() == pytest.approx(0.3125)
    assert losses["commitment_loss"].item() == pytest.approx(0.25 * 0.3125)


def test_loss_gradients_go_to_the_right_side():
    latents = torch.randn(2, 3, 4, requires_grad=True)
    codes = torch.randn(2, 3, 4, requires_grad=True)
    losses = vq_losses(latents, codes, commitment_cost=0.25)
    losses["codebook_loss"].backward(retain_graph=True)
    assert latents.grad is None and codes.grad is not None
    codes.grad = None
    losses["commitment_loss"].backward()
    assert codes.grad is None
    torch.testing.assert_close(latents.grad, 0.25 * 2 * (latents - codes).detach() / latents.numel())


def test_straight_through_forwards_codes_and_copies_gradients():
    latents = torch.randn(5, requires_grad=True)
    codes = torch.randn(5)
    out = straight_through(latents, codes)
    torch.testing.assert_close(out, codes)
    (out * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(latents.grad, torch.arange(5.0))


def test_l2_normalised_quantizer_picks_most_cosine_similar_code():
    torch.manual_seed(2)
    quantizer = VectorQuantizer(codebook_size=16, codebook_dim=4, commitment_cost=0.25, use_l2_norm=True)
    latents = torch.randn(3, 5, 4) * 7  # scale must not matter
    output = quantizer(latents)
    cosine = F.normalize(latents, dim=-1) @ F.normalize(quantizer.embedding.weight, dim=-1).t()
    assert torch.equal(output.indices, cosine.argmax(-1))
    torch.testing.assert_close(output.quantized.norm(dim=-1), torch.ones(3, 5))
    # losses compare the normalised latents with the normalised codes, as TiTok does
    expected = F.mse_loss(F.normalize(quantizer.embedding.weight, dim=-1)[output.indices], F.normalize(latents, dim=-1))
    torch.testing.assert_close(output.losses["codebook_loss"], expected)


def test_quantizer_runs_in_float32_under_bfloat16_autocast():
    quantizer = VectorQuantizer(codebook_size=8, codebook_dim=3, commitment_cost=0.25, use_l2_norm=False)
    latents = torch.randn(2, 4, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = quantizer(latents)
    assert output.quantized.dtype == torch.float32
    assert all(loss.dtype == torch.float32 for loss in output.losses.values())
    assert torch.equal(output.indices, quantizer(latents.float()).indices)


def test_indices_to_codes_inverts_quantization():
    quantizer = VectorQuantizer(codebook_size=10, codebook_dim=3, commitment_cost=0.25, use_l2_norm=True)
    output = quantizer(torch.randn(2, 6, 3))
    torch.testing.assert_close(quantizer.indices_to_codes(output.indices), output.quantized)


def test_perplexity_of_uniform_and_single_code_usage():
    assert code_perplexity(torch.tensor([3, 3, 3, 3]), codebook_size=8).item() == pytest.approx(1.0)
    assert code_perplexity(torch.arange(8), codebook_size=8).item() == pytest.approx(8.0)
    two_thirds = torch.tensor([0, 0, 1])
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert code_perplexity(two_thirds, codebook_size=4).item() == pytest.approx(math.exp(entropy), rel=1e-5)
