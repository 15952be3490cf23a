"""FSQ and LFQ: grids, index bijections, and forward passes against direct computations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig
from hf_vitvq.quantizer_base import entropy_loss
from hf_vitvq.quantizer_fsq import (
    FiniteScalarQuantizer,
    fsq_bound,
    fsq_codes_to_indices,
    fsq_indices_to_codes,
    fsq_quantize,
)
from hf_vitvq.quantizer_lfq import LookupFreeQuantizer, lfq_codes_to_indices, lfq_indices_to_codes

LEVELS = [8, 5, 3]


def fsq_quantizer(levels: list[int] = LEVELS) -> FiniteScalarQuantizer:
    config = ViTVQConfig(
        **tiny_config_kwargs(
            quantizer_type="fsq", fsq_levels=levels, codebook_dim=len(levels), codebook_size=math.prod(levels)
        )
    )
    return FiniteScalarQuantizer(config)


def lfq_quantizer(dim: int = 4, **overrides) -> LookupFreeQuantizer:
    config = ViTVQConfig(
        **tiny_config_kwargs(quantizer_type="lfq", codebook_dim=dim, codebook_size=2**dim, **overrides)
    )
    return LookupFreeQuantizer(config)


def test_fsq_rounds_each_channel_to_its_grid():
    levels = torch.tensor(LEVELS)
    latents = torch.linspace(-20, 20, 2001)[:, None].expand(-1, 3)
    codes = fsq_quantize(latents, levels)
    expected_grids = [
        [v / 4 for v in range(-4, 4)],  # 8 levels: -1, -0.75, ..., 0.75
        [v / 2 for v in range(-2, 3)],  # 5 levels: -1, -0.5, 0, 0.5, 1
        [-1.0, 0.0, 1.0],  # 3 levels
    ]
    for channel, grid in enumerate(expected_grids):
        assert sorted(set(codes[:, channel].tolist())) == grid


def test_fsq_forward_equals_the_formula_written_out():
    torch.manual_seed(0)
    latents = torch.randn(2, 5, 3) * 2
    output = fsq_quantizer()(latents)
    expected = []
    for channel, levels in enumerate(LEVELS):
        half_range = (levels - 1) * (1 + 1e-3) / 2
        offset = 0.5 if levels % 2 == 0 else 0.0
        bounded = torch.tanh(latents[..., channel] + math.atanh(offset / half_range)) * half_range - offset
        expected.append(bounded.round() / (levels // 2))
    torch.testing.assert_close(output.quantized, torch.stack(expected, dim=-1))
    digits = (torch.stack(expected, dim=-1) * torch.tensor([4, 2, 1]) + torch.tensor([4, 2, 1])).round().long()
    assert torch.equal(output.indices, digits[..., 0] + 8 * digits[..., 1] + 40 * digits[..., 2])
    assert output.losses == {}


def test_fsq_index_code_bijection_over_the_whole_grid():
    levels = torch.tensor(LEVELS)
    indices = torch.arange(math.prod(LEVELS))
    codes = fsq_indices_to_codes(indices, levels)
    assert torch.equal(fsq_codes_to_indices(codes, levels), indices)
    assert torch.unique(codes, dim=0).shape[0] == len(indices)
    grid = itertools.product(*[[(v - n // 2) / (n // 2) for v in range(n)] for n in LEVELS])
    assert {tuple(code) for code in codes.tolist()} == set(grid)


def test_fsq_gradient_is_that_of_the_bound():
    levels = torch.tensor(LEVELS)
    latents = torch.randn(4, 3, requires_grad=True)
    fsq_quantize(latents, levels).sum().backward()
    reference = latents.detach().clone().requires_grad_(True)
    (fsq_bound(reference, levels) / (levels // 2)).sum().backward()
    torch.testing.assert_close(latents.grad, reference.grad)


def test_lfq_signs_and_ids():
    quantizer = lfq_quantizer(dim=3)
    output = quantizer(torch.tensor([[[0.3, -2.0, 0.1], [-0.5, -0.1, -3.0], [1.0, 1.0, 1.0]]]))
    torch.testing.assert_close(
        output.quantized, torch.tensor([[[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]])
    )
    assert output.indices.tolist() == [[0b101, 0b000, 0b111]]


def test_lfq_index_code_bijection():
    indices = torch.arange(2**5)
    codes = lfq_indices_to_codes(indices, dim=5)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(lfq_codes_to_indices(codes), indices)
    assert torch.unique(codes, dim=0).shape[0] == 32


def test_lfq_losses_equal_direct_computation():
    torch.manual_seed(1)
    quantizer = lfq_quantizer(dim=4, entropy_loss_weight=0.1, entropy_temperature=0.5, commitment_cost=0.25)
    latents = torch.randn(2, 3, 4, requires_grad=True)
    output = quantizer(latents)
    signs = torch.where(latents > 0, 1.0, -1.0)
    torch.testing.assert_close(output.losses["commitment_loss"], 0.25 * ((latents - signs) ** 2).mean())
    all_codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)))  # id order: channel 0 most significant
    distances = torch.cdist(latents.reshape(-1, 4), all_codes) ** 2
    expected = 0.1 * entropy_loss(-distances / 0.5, codebook_weight=1.0)
    torch.testing.assert_close(output.losses["entropy_loss"], expected, atol=1e-5, rtol=1e-5)
    output.loss.backward()
    assert latents.grad.abs().sum() > 0


@pytest.mark.parametrize("make", [fsq_quantizer, lfq_quantizer])
def test_scalar_quantizers_run_in_float32_under_autocast(make):
    quantizer = make()
    latents = torch.randn(2, 3, len(LEVELS) if make is fsq_quantizer else 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = quantizer(latents)
    assert output.quantized.dtype == torch.float32
    assert torch.equal(output.indices, quantizer(latents.float()).indices)
    torch.testing.assert_close(quantizer.indices_to_codes(output.indices), output.quantized)
