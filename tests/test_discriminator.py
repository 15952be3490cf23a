"""The patch discriminator and the adversarial losses: shapes, hand-computed losses, LeCAM's moving averages (also
across two processes), VQGAN's adaptive weight, and a discriminator that learns to tell two distributions apart."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_vitvq.training.discriminator import (
    BlurDownsample,
    LeCAMRegularizer,
    PatchDiscriminator,
    adaptive_generator_weight,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    same_padding,
)

TINY = {"hidden_channels": 32, "num_stages": 2, "pooled_size": 4}


def test_titok_discriminator_shapes_and_size():
    discriminator = PatchDiscriminator()
    logits = discriminator(torch.randn(1, 3, 256, 256))
    assert logits.shape == (1, 1, 16, 16)
    assert logits.dtype == torch.float32
    # TiTok's NLayerDiscriminator(): 128 -> 128 -> 256 -> 512 channels, 1.91 M parameters
    assert sum(p.numel() for p in discriminator.parameters()) == 1_909_889
    assert [block[0].out_channels for block in discriminator.blocks] == [128, 256, 512]


@pytest.mark.parametrize("size", [32, 29])
def test_tiny_discriminator_shape(size):
    assert PatchDiscriminator(**TINY)(torch.randn(3, 3, size, size)).shape == (3, 1, 4, 4)


def test_logits_stay_float32_under_autocast():
    discriminator = PatchDiscriminator(**TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = discriminator(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32


def test_group_count_must_divide_widths():
    with pytest.raises(ValueError, match="must divide every stage's width"):
        PatchDiscriminator(hidden_channels=24, num_groups=32)


def test_same_padding_matches_tensorflow():
    assert same_padding(32, 4, 2) == (1, 1)  # output 16
    assert same_padding(5, 4, 2) == (1, 2)  # output 3, the extra pixel after
    assert same_padding(7, 5, 1) == (2, 2)


def test_blur_downsample_by_hand():
    blurred = BlurDownsample()(torch.ones(1, 2, 8, 8))
    assert blurred.shape == (1, 2, 4, 4)
    # interior windows see only ones; a border window has one zero-padded row (or column) of weight 1/8
    torch.testing.assert_close(blurred[0, 0, 1:3, 1:3], torch.ones(2, 2))
    torch.testing.assert_close(blurred[0, 1, 0, 0], torch.tensor((7 / 8) ** 2))
    torch.testing.assert_close(blurred[0, 1, 0, 1], torch.tensor(7 / 8))


def test_hinge_and_generator_losses_by_hand():
    real = torch.tensor([[2.0, 0.5], [-1.0, 0.0]])
    fake = torch.tensor([[-2.0, 0.5], [1.0, -0.5]], dtype=torch.bfloat16)
    # real: relu(1 - r) = 0, 0.5, 2, 1 -> mean 0.875; fake: relu(1 + f) = 0, 1.5, 2, 0.5 -> mean 1.0
    loss = hinge_discriminator_loss(real, fake)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.875 + 1.0)))
    torch.testing.assert_close(generator_adversarial_loss(fake), torch.tensor(0.25))  # -mean(-2, 0.5, 1, -0.5)


def test_lecam_two_updates_by_hand():
    lecam = LeCAMRegularizer()  # decay 0.999
    real_1, fake_1 = torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), -0.2)
    fake_1[0] = -0.4  # mean -0.3
    # previous averages 0: relu(0.5 - 0)^2 + relu(0 - (-0.3))^2
    torch.testing.assert_close(lecam(real_1, fake_1), torch.tensor(0.25 + 0.09))
    torch.testing.assert_close(lecam.ema_real, torch.tensor(0.001 * 0.5))
    torch.testing.assert_close(lecam.ema_fake, torch.tensor(0.001 * -0.3))

    real_2 = torch.full((2, 1, 2, 2), 0.1, requires_grad=True)
    fake_2 = torch.full((2, 1, 2, 2), 0.3, requires_grad=True)
    regularization = lecam(real_2, fake_2)
    # relu(0.1 - (-0.0003))^2 + relu(0.0005 - 0.3)^2
    torch.testing.assert_close(regularization, torch.tensor(0.1003**2), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(lecam.ema_real, torch.tensor(0.999 * 0.0005 + 0.001 * 0.1), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(lecam.ema_fake, torch.tensor(0.999 * -0.0003 + 0.001 * 0.3), rtol=1e-5, atol=1e-9)
    # gradient reaches the real logits after the in-place update: d/dr of (r - ema_f)^2 spread over 8 logits
    regularization.backward()
    torch.testing.assert_close(real_2.grad, torch.full_like(real_2, 2 * 0.1003 / 8), rtol=1e-4, atol=1e-9)
    assert torch.count_nonzero(fake_2.grad) == 0  # relu(ema_r - f) is inactive


def test_lecam_state_resumes_and_eval_does_not_update():
    lecam = LeCAMRegularizer(decay=0.9)
    for step in range(3):
        lecam(torch.full((4,), 1.0 + step), torch.full((4,), -1.0))
    resumed = LeCAMRegularizer(decay=0.9)
    resumed.load_state_dict(lecam.state_dict())
    assert set(lecam.state_dict()) == {"ema_real", "ema_fake"}
    real, fake = torch.randn(4), torch.randn(4)
    assert torch.equal(resumed(real, fake), lecam(real, fake))
    assert torch.equal(resumed.ema_real, lecam.ema_real) and torch.equal(resumed.ema_fake, lecam.ema_fake)

    frozen = {name: value.clone() for name, value in lecam.state_dict().items()}
    lecam.eval()
    lecam(real + 5, fake - 5)
    assert all(torch.equal(value, frozen[name]) for name, value in lecam.state_dict().items())


def _lecam_rank(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    lecam = LeCAMRegularizer(decay=0.5)
    value = lecam(torch.full((3,), 1.0 + 2 * rank), torch.full((3,), -float(rank)))  # means r = 1, 3; f = 0, -1
    torch.save({"value": value, **lecam.state_dict()}, f"{folder}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_lecam_averages_agree_across_processes(tmp_path):
    context = mp.start_processes(_lecam_rank, args=(str(tmp_path),), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 60
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError("the 2 ranks did not finish within 60 s")
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for state in states:  # the averages move by (1 - decay) * the mean over both processes
        torch.testing.assert_close(state["ema_real"], torch.tensor(0.5 * 2.0))
        torch.testing.assert_close(state["ema_fake"], torch.tensor(0.5 * -0.5))
    # the returned value uses each process's own batch: relu(r)^2 + relu(-f)^2 with averages 0
    torch.testing.assert_close(states[0]["value"], torch.tensor(1.0**2 + 0.0**2))
    torch.testing.assert_close(states[1]["value"], torch.tensor(3.0**2 + 1.0**2))


def test_adaptive_weight_by_hand():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)  # a 2-parameter "last layer"
    reconstruction_loss = 3 * weight[0] + 4 * weight[1]  # gradient (3, 4), norm 5
    generator_loss = weight.square().sum()  # gradient 2w = (2, 4), norm sqrt(20)
    adaptive = adaptive_generator_weight(reconstruction_loss, generator_loss, weight)
    torch.testing.assert_close(adaptive, torch.tensor(5 / (math.sqrt(20) + 1e-4)))
    assert not adaptive.requires_grad
    (reconstruction_loss + adaptive * generator_loss).backward()  # the graphs were kept for the real backward
    torch.testing.assert_close(weight.grad, torch.tensor([3.0, 4.0]) + adaptive * 2 * weight.detach())


def test_adaptive_weight_clamps():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    reconstruction_loss = 3 * weight[0] + 4 * weight[1]
    tiny_generator_loss = 1e-6 * weight[1]  # 5 / (1e-6 + 1e-4) = 49505 > 1e4
    assert adaptive_generator_weight(reconstruction_loss, tiny_generator_loss, weight).item() == 1e4
    assert adaptive_generator_weight(reconstruction_loss, tiny_generator_loss, weight, max_weight=10.0).item() == 10.0


def test_discriminator_learns_two_distributions():
    """Real images brighter than fake ones: 20 Adam steps take the hinge loss from about 1 (untrained logits near 0)
    to under 0.2."""
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(**TINY)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        real = (torch.randn(8, 3, 32, 32) * 0.3 + 0.3).clamp(-1, 1)
        fake = (torch.randn(8, 3, 32, 32) * 0.3 - 0.3).clamp(-1, 1)
        loss = hinge_discriminator_loss(discriminator(real), discriminator(fake))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.8
    assert sum(losses[-3:]) / 3 < 0.2, losses
