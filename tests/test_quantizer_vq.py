"""The vector quantizer's math and codebook maintenance, against hand computations and brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig
from hf_vitvq import quantizer_vq as vq_module
from hf_vitvq.quantizer_base import CodebookUsage, code_perplexity, entropy_loss
from hf_vitvq.quantizer_vq import (
    EMAVectorQuantizer,
    SimVQQuantizer,
    VectorQuantizer,
    build_vector_quantizer,
    ema_codebook_update,
    kmeans,
    laplace_smoothing,
    nearest_code,
    rotation_trick,
    rows_for,
    squared_distances,
    straight_through,
    vq_losses,
)


def make_quantizer(**overrides) -> VectorQuantizer:
    """A quantizer built the way the model builds it, initialised as the model initialises it."""
    config = ViTVQConfig(**tiny_config_kwargs(**overrides))
    quantizer = build_vector_quantizer(config)
    with torch.no_grad():
        for module in quantizer.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.uniform_(-1.0, 1.0)
        quantizer.init_weights()
    return quantizer


def set_codes(quantizer: VectorQuantizer, codes: list[list[float]]) -> None:
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor(codes))
        if isinstance(quantizer, EMAVectorQuantizer):
            quantizer.init_weights()


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


def test_nearest_code_default_chunks_stay_within_the_distance_budget(monkeypatch):
    torch.manual_seed(2)
    monkeypatch.setattr(vq_module, "MAX_DISTANCES_PER_CHUNK", 3000)  # 3000 // 700 codes = 4 vectors per chunk
    vectors, codebook = torch.randn(101, 5), torch.randn(700, 5)
    seen_rows = []
    original_addmm = torch.addmm

    def spy(*args, **kwargs):
        seen_rows.append(args[1].shape[0])
        return original_addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", spy)
    indices = nearest_code(vectors, codebook)
    assert max(seen_rows) == 4 and sum(seen_rows) == 101
    assert torch.equal(indices, torch.cdist(vectors, codebook).argmin(1))


def test_two_code_codebook_gives_known_indices():
    quantizer = make_quantizer(codebook_size=2, codebook_dim=2, use_l2_norm_codes=False)
    set_codes(quantizer, [[1.0, 0.0], [-1.0, 0.0]])
    output = quantizer(torch.tensor([[[0.9, 0.3], [0.2, 5.0], [-3.0, -1.0]]]))
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


def test_rotation_trick_forwards_codes_and_rotates_gradients():
    torch.manual_seed(3)
    latents = torch.randn(4, 6, requires_grad=True)
    codes = torch.randn(4, 6)
    out = rotation_trick(latents, codes)
    torch.testing.assert_close(out, codes)
    upstream = torch.randn(4, 6)
    (out * upstream).sum().backward()
    for z, q, g, grad in zip(latents.detach(), codes, upstream, latents.grad, strict=True):
        z_hat, q_hat = z / z.norm(), q / q.norm()
        r = (z_hat + q_hat) / (z_hat + q_hat).norm()
        rotation = torch.eye(6) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, z_hat)
        torch.testing.assert_close(rotation @ rotation.t(), torch.eye(6), atol=1e-5, rtol=0)  # a rotation
        torch.testing.assert_close(rotation @ z_hat, q_hat)
        torch.testing.assert_close(grad, q.norm() / z.norm() * rotation.t() @ g, atol=1e-5, rtol=1e-5)


def test_l2_normalised_quantizer_picks_most_cosine_similar_code():
    torch.manual_seed(2)
    quantizer = make_quantizer(codebook_size=16, codebook_dim=4)
    latents = torch.randn(3, 5, 4) * 7  # scale must not matter
    output = quantizer(latents)
    cosine = F.normalize(latents, dim=-1) @ F.normalize(quantizer.embedding.weight, dim=-1).t()
    assert torch.equal(output.indices, cosine.argmax(-1))
    torch.testing.assert_close(output.quantized.norm(dim=-1), torch.ones(3, 5))
    # losses compare the normalised latents with the normalised codes, as TiTok does
    expected = F.mse_loss(F.normalize(quantizer.embedding.weight, dim=-1)[output.indices], F.normalize(latents, dim=-1))
    torch.testing.assert_close(output.losses["codebook_loss"], expected)


def test_factorized_quantizer_searches_in_the_projected_space():
    torch.manual_seed(4)
    quantizer = make_quantizer(codebook_size=9, codebook_dim=6, factorized_code_dim=3)
    latents = torch.randn(2, 5, 6)
    output = quantizer(latents)
    projected = F.normalize(quantizer.in_projection(latents), dim=-1)  # (2, 5, 3)
    codes = F.normalize(quantizer.embedding.weight, dim=-1)
    indices = (projected @ codes.t()).argmax(-1)
    assert torch.equal(output.indices, indices)
    torch.testing.assert_close(output.quantized, quantizer.out_projection(codes[indices]))
    torch.testing.assert_close(quantizer.indices_to_codes(output.indices), output.quantized)
    torch.testing.assert_close(output.losses["commitment_loss"], 0.25 * F.mse_loss(projected, codes[indices]))


def test_quantizer_runs_in_float32_under_bfloat16_autocast():
    quantizer = make_quantizer(codebook_size=8, codebook_dim=3, use_l2_norm_codes=False)
    latents = torch.randn(2, 4, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = quantizer(latents)
    assert output.quantized.dtype == torch.float32
    assert all(loss.dtype == torch.float32 for loss in output.losses.values())
    assert torch.equal(output.indices, quantizer(latents.float()).indices)


def test_indices_to_codes_inverts_quantization():
    quantizer = make_quantizer(codebook_size=10, codebook_dim=3)
    output = quantizer(torch.randn(2, 6, 3))
    torch.testing.assert_close(quantizer.indices_to_codes(output.indices), output.quantized)


def test_perplexity_of_uniform_and_single_code_usage():
    assert code_perplexity(torch.tensor([3, 3, 3, 3]), codebook_size=8).item() == pytest.approx(1.0)  # exp(0): exact
    # exp of a float32 sum of 8 terms p log p: up to ~1e-6 relative in the worst case (vectorised log/exp and sum order
    # differ between AVX2 and AVX-512), 2.4e-7 measured; pytest.approx's default rel=1e-6 is too tight
    assert code_perplexity(torch.arange(8), codebook_size=8).item() == pytest.approx(8.0, rel=1e-5)
    two_thirds = torch.tensor([0, 0, 1])
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert code_perplexity(two_thirds, codebook_size=4).item() == pytest.approx(math.exp(entropy), rel=1e-5)


def test_laplace_smoothing_keeps_the_total_and_lifts_empty_clusters():
    smoothed = laplace_smoothing(torch.tensor([3.0, 0.0, 1.0]), epsilon=0.5)
    # (n_k + 0.5) / (4 + 1.5) * 4
    torch.testing.assert_close(smoothed, torch.tensor([3.5, 0.5, 1.5]) / 5.5 * 4)


def test_ema_update_equals_its_formula_on_a_hand_made_batch():
    quantizer = make_quantizer(
        codebook_size=3, codebook_dim=2, use_l2_norm_codes=False, use_ema_codebook=True, ema_decay=0.5, ema_epsilon=0.1
    )
    set_codes(quantizer, [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    batch = torch.tensor([[[1.0, 1.0], [-1.0, 1.0], [9.0, 2.0]]])  # codes 0, 0, 1; code 2 unused
    output = quantizer.train()(batch)
    assert output.indices.tolist() == [[0, 0, 1]]
    # N = 0.5 * 1 + 0.5 * (2, 1, 0) = (1.5, 1, 0.5); m = 0.5 * e + 0.5 * sums
    cluster_size = torch.tensor([1.5, 1.0, 0.5])
    embed_sum = torch.tensor([[0.0, 1.0], [9.5, 1.0], [0.0, 5.0]])
    smoothed = (cluster_size + 0.1) / (3.0 + 0.3) * 3.0
    torch.testing.assert_close(quantizer.cluster_size, cluster_size)
    torch.testing.assert_close(quantizer.embed_sum, embed_sum)
    torch.testing.assert_close(quantizer.embedding.weight, embed_sum / smoothed[:, None])
    assert set(output.losses) == {"commitment_loss"}
    assert not quantizer.embedding.weight.requires_grad


def test_ema_update_function_matches_the_module():
    cluster_size, embed_sum = torch.tensor([1.0, 1.0]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    counts, sums = torch.tensor([4.0, 0.0]), torch.tensor([[8.0, 4.0], [0.0, 0.0]])
    new_size, new_sum, codes = ema_codebook_update(cluster_size, embed_sum, counts, sums, decay=0.9, epsilon=1e-5)
    torch.testing.assert_close(new_size, torch.tensor([1.3, 0.9]))
    torch.testing.assert_close(new_sum, torch.tensor([[1.7, 0.4], [0.0, 0.9]]))
    torch.testing.assert_close(codes, new_sum / laplace_smoothing(new_size, 1e-5)[:, None])


def test_kmeans_recovers_separated_clusters():
    torch.manual_seed(5)
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    samples = (centers[:, None, :] + 0.1 * torch.randn(3, 40, 2)).reshape(-1, 2)
    initial = samples[[0, 1, 40]]  # two seeds in cluster 0, one in cluster 1: k-means must move one
    centroids = kmeans(samples, initial, iterations=10, use_l2_norm=False)
    assert torch.cdist(centroids, centers).min(dim=1).values.max() < 0.1
    assert sorted(torch.cdist(centroids, centers).argmin(dim=1).tolist()) == [0, 1, 2]


def test_kmeans_init_runs_once_on_the_first_training_batch():
    torch.manual_seed(6)
    quantizer = make_quantizer(codebook_size=2, codebook_dim=2, use_l2_norm_codes=False, kmeans_init=True)
    batch = torch.cat([torch.full((1, 20, 2), 3.0), torch.full((1, 20, 2), -3.0)], dim=1)
    quantizer.train()(batch + 0.01 * torch.randn_like(batch))
    assert bool(quantizer.kmeans_done)
    means = torch.tensor([[3.0, 3.0], [-3.0, -3.0]])
    assert torch.cdist(quantizer.embedding.weight, means).min(dim=1).values.max() < 0.01
    codes = quantizer.embedding.weight.clone()
    quantizer(torch.randn(1, 4, 2))
    assert torch.equal(quantizer.embedding.weight, codes)  # the gradient codebook did not move without a step


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_replaces_exactly_the_dead_codes(ema):
    torch.manual_seed(7)
    quantizer = make_quantizer(
        codebook_size=6, codebook_dim=2, use_l2_norm_codes=False, dead_code_steps=2, use_ema_codebook=ema
    ).train()
    set_codes(quantizer, [[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0], [7.0, 7.0], [-7.0, -7.0]])
    # two steps that only hit codes 0 and 1 (and 4 at the first step)
    first = torch.tensor([[[9.0, 0.0], [-9.0, 0.0], [7.0, 6.0]]])
    second = torch.tensor([[[11.0, 0.0], [-11.0, 0.5], [-9.0, -0.5]]])
    quantizer(first)
    quantizer(second)
    before = quantizer.embedding.weight.clone()
    dead = quantizer.usage.dead_codes(unused_steps=2, threshold=0.0)
    assert dead.tolist() == [False, False, True, True, False, True]
    third = torch.tensor([[[0.0, 1.0], [1.0, 0.5]]])
    if ema:  # a forward would also move every code by EMA: re-seed directly
        assert torch.equal(quantizer.restart_dead_codes_(third.reshape(-1, 2)), dead)
    else:  # the restart happens before this lookup, from this batch, whose vectors then pick the new codes
        indices = quantizer(third).indices.reshape(-1)
        assert dead[indices].all()
    changed = (quantizer.embedding.weight != before).any(dim=1)
    assert changed.tolist() == dead.tolist()
    assert not quantizer.usage.dead_codes(unused_steps=2, threshold=0.0)[dead].any()  # fresh after re-seeding
    assert quantizer.codebook_health()["codebook_usage"].item() == 1.0  # re-seeded codes count as hit
    candidates = third.reshape(-1, 2)
    for code in quantizer.embedding.weight[dead]:
        assert (candidates == code).all(dim=1).any()
    if ema:
        assert quantizer.cluster_size[dead].tolist() == [1.0, 1.0, 1.0]


def test_rows_for_gives_distinct_rows_to_the_selected_entries_then_cycles():
    torch.manual_seed(8)
    vectors = torch.arange(5.0).unsqueeze(1).expand(5, 3)  # row i is (i, i, i)
    few = torch.tensor([False, True, False, True, True, False])
    rows = rows_for(few, vectors)
    assert rows.shape == (6, 3) and torch.equal(rows[:, 0:1].expand(6, 3), rows)
    assert len(set(rows[few, 0].tolist())) == 3  # distinct while there are enough candidates
    many = torch.ones(8, dtype=torch.bool)
    counts = torch.bincount(rows_for(many, vectors)[:, 0].long(), minlength=5)
    assert sorted(counts.tolist()) == [1, 1, 2, 2, 2]  # every candidate once before any twice


def test_dead_code_restart_never_reads_the_number_of_dead_codes():
    """No host sync (which stalls a GPU every step): the restart compiles as one graph, with no data-dependent
    branch or shape."""
    quantizer = make_quantizer(codebook_size=6, codebook_dim=2, use_l2_norm_codes=False, dead_code_steps=2).train()
    set_codes(quantizer, [[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0], [7.0, 7.0], [-7.0, -7.0]])
    quantizer.usage.step.fill_(2)
    quantizer.usage.last_hit.copy_(torch.tensor([2, 2, 0, 0, 1, 0]))  # codes 2, 3 and 5 are dead
    before = quantizer.embedding.weight.clone()
    dead = torch.compile(quantizer.restart_dead_codes_, backend="eager", fullgraph=True)(
        torch.tensor([[0.0, 1.0], [1.0, 0.5]])
    )
    assert dead.tolist() == [False, False, True, True, False, True]
    assert ((quantizer.embedding.weight != before).any(dim=1) == dead).all()


def test_dead_code_threshold_uses_the_moving_average_of_hits():
    quantizer = make_quantizer(
        codebook_size=3, codebook_dim=1, use_l2_norm_codes=False, dead_code_threshold=0.5, usage_window=2
    ).train()
    set_codes(quantizer, [[0.0], [10.0], [20.0]])
    quantizer(torch.tensor([[[0.0], [0.0], [10.0]]]))  # no restart before a step is counted; counts (2, 1, 0)
    torch.testing.assert_close(quantizer.usage.frequency, torch.tensor([1.0, 0.5, 0.0]))
    assert quantizer.usage.dead_codes(unused_steps=0, threshold=0.5).tolist() == [False, False, True]
    assert torch.equal(quantizer.embedding.weight.flatten(), torch.tensor([0.0, 10.0, 20.0]))
    quantizer(torch.tensor([[[3.0]]]))  # re-seeds code 2 with this batch's 3.0, which then picks it
    assert quantizer.embedding.weight[2].item() == 3.0


def test_codebook_usage_statistics_over_the_window():
    usage = CodebookUsage(codebook_size=4, window=2, persistent=False)
    usage.update(torch.tensor([0, 0, 1]))
    usage.update(torch.tensor([0, 2]))
    stats = usage.stats()
    assert stats["codebook_usage"].item() == pytest.approx(0.75) and stats["dead_codes"].item() == 1
    usage.update(torch.tensor([0]))
    usage.update(torch.tensor([0]))  # code 1 was last hit 3 steps ago, code 2 two steps ago: out of the window
    stats = usage.stats()
    assert stats["codebook_usage"].item() == pytest.approx(0.25) and stats["dead_codes"].item() == 3
    histogram = stats["code_frequency"]
    assert histogram.sum().item() == pytest.approx(1.0) and histogram.argmax().item() == 0
    assert stats["window_perplexity"].item() == pytest.approx(math.exp(-(histogram * histogram.log()).nansum()))


def test_entropy_loss_equals_its_definition():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    probs = logits.softmax(-1)
    per_sample = -(probs * probs.log()).sum(-1).mean()
    average = probs.mean(0)
    batch = -(average * average.log()).sum()
    torch.testing.assert_close(entropy_loss(logits, codebook_weight=0.5), per_sample - 0.5 * batch)


def test_vq_entropy_loss_uses_distance_logits():
    torch.manual_seed(8)
    quantizer = make_quantizer(
        codebook_size=5, codebook_dim=3, use_l2_norm_codes=False, entropy_loss_weight=0.1, entropy_temperature=0.5
    )
    latents = torch.randn(2, 4, 3)
    logits = -(torch.cdist(latents.reshape(-1, 3), quantizer.embedding.weight) ** 2) / 0.5
    expected = 0.1 * entropy_loss(logits, codebook_weight=1.0)
    torch.testing.assert_close(quantizer(latents).losses["entropy_loss"], expected, atol=1e-5, rtol=1e-5)


def test_simvq_codes_are_a_learned_map_of_a_frozen_basis():
    torch.manual_seed(9)
    quantizer = make_quantizer(codebook_size=7, codebook_dim=3, use_l2_norm_codes=False, use_simvq=True)
    assert isinstance(quantizer, SimVQQuantizer)
    torch.testing.assert_close(quantizer.code_transform, torch.eye(3))  # init: identity map
    with torch.no_grad():
        quantizer.code_transform.copy_(torch.randn(3, 3))
    codes = quantizer.embedding.weight @ quantizer.code_transform.t()
    latents = torch.randn(2, 5, 3)
    output = quantizer(latents)
    assert torch.equal(output.indices, torch.cdist(latents, codes.expand(2, -1, -1)).argmin(-1))
    torch.testing.assert_close(output.quantized, codes[output.indices])
    output.loss.backward()
    assert quantizer.embedding.weight.grad is None
    assert quantizer.code_transform.grad.abs().sum() > 0
