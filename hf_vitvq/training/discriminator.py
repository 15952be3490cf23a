"""Adversarial training parts: a patch discriminator and the GAN losses around it, as pure functions.

- `PatchDiscriminator`: MaskBit's improved PatchGAN discriminator as TiTok uses it (Weber et al., "MaskBit", 2024;
  `bytedance/1d-tokenizer`, `modeling/modules/discriminator.py`, `NLayerDiscriminator` with 3 stages).
- Hinge loss (Lim & Ye 2017; Miyato et al. 2018), generator loss -mean D(x_hat).
- LeCAM regularisation (Tseng et al., "Regularizing Generative Adversarial Networks under Limited Data", CVPR 2021) in
  TiTok's form, with EMA decay 0.999.
- The adaptive generator weight of VQGAN (Esser et al. 2021, `CompVis/taming-transformers`,
  `taming/modules/losses/vqperceptual.py`).

Precision: the discriminator returns float32 logits and every loss here casts its inputs to float32, so under
autocast (fp16/bf16) the discriminator's convolutions may run in low precision while logits and losses do not.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

_BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one spatial side: the output has ceil(size / stride) positions,
    and the odd extra pixel, if any, goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class BlurDownsample(nn.Module):
    """Anti-aliased 2x downsampling: a depthwise (1, 3, 3, 1) x (1, 3, 3, 1) / 64 blur at stride 2 with "SAME" zero
    padding, (B, C, H, W) -> (B, C, ceil(H / 2), ceil(W / 2))."""

    def __init__(self) -> None:
        super().__init__()
        kernel_1d = torch.tensor(_BLUR_KERNEL)
        kernel = torch.outer(kernel_1d, kernel_1d)
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None], persistent=False)  # (1, 1, 4, 4)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        channels, height, width = hidden_states.shape[-3:]
        kernel_size = self.kernel.shape[-1]
        pad_top, pad_bottom = same_padding(height, kernel_size, stride=2)
        pad_left, pad_right = same_padding(width, kernel_size, stride=2)
        hidden_states = F.pad(hidden_states, (pad_left, pad_right, pad_top, pad_bottom))
        weight = self.kernel.to(hidden_states.dtype).expand(channels, 1, kernel_size, kernel_size)
        return F.conv2d(hidden_states, weight, stride=2, groups=channels)


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    # stride 1 and an odd kernel: PyTorch's symmetric padding k // 2 equals TiTok's TF-style "SAME" padding
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class PatchDiscriminator(nn.Module):
    """MaskBit / TiTok patch discriminator: one logit per patch of the input image.

    Layers: 5x5 conv (C -> h) + LeakyReLU(0.1); `num_stages` stages of 3x3 conv -> `BlurDownsample` -> GroupNorm ->
    LeakyReLU(0.1), with widths h * (1, 2, 4, ...) (TiTok: 128 -> 128 -> 256 -> 512); adaptive max-pool to
    `pooled_size` x `pooled_size`; 1x1 conv + LeakyReLU(0.1); 5x5 conv to one channel. PyTorch's default init, as
    TiTok. The defaults are TiTok's: (B, 3, 256, 256) -> (B, 1, 16, 16), about 1.9 M parameters.

    Input range: images in [-1, 1] (the package's default pixel range, the same images LPIPS takes). TiTok feeds
    [0, 1]; for a discriminator trained from scratch that is an affine change of input its first conv absorbs.

    Args:
        num_channels (`int`, *optional*, defaults to 3): image channels.
        hidden_channels (`int`, *optional*, defaults to 128): width h of the input conv and the first stage.
        num_stages (`int`, *optional*, defaults to 3): downsampling stages; the last is h * 2^(num_stages - 1) wide.
        num_groups (`int`, *optional*, defaults to 32): GroupNorm groups; must divide every stage's width.
        pooled_size (`int`, *optional*, defaults to 16): side of the adaptive max-pool, so of the logit map.
    """

    def __init__(
        self,
        num_channels: int = 3,
        hidden_channels: int = 128,
        num_stages: int = 3,
        num_groups: int = 32,
        pooled_size: int = 16,
    ) -> None:
        super().__init__()
        if num_stages < 1 or pooled_size < 1:
            raise ValueError(f"`num_stages` and `pooled_size` must be >= 1, got {num_stages} and {pooled_size}.")
        # stage i maps h * multipliers[i] -> h * multipliers[i + 1] channels
        multipliers = (1,) + tuple(2**stage for stage in range(num_stages))
        widths = [hidden_channels * multiplier for multiplier in multipliers]
        if any(width % num_groups for width in widths[1:]):
            raise ValueError(
                f"`num_groups` ({num_groups}) must divide every stage's width {widths[1:]} "
                f"(hidden_channels={hidden_channels})."
            )
        self.block_in = nn.Sequential(_conv(num_channels, hidden_channels, 5), nn.LeakyReLU(0.1))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                _conv(in_width, out_width, 3),
                BlurDownsample(),
                nn.GroupNorm(num_groups, out_width),
                nn.LeakyReLU(0.1),
            )
            for in_width, out_width in zip(widths[:-1], widths[1:], strict=True)
        )
        self.pool = nn.AdaptiveMaxPool2d((pooled_size, pooled_size))
        self.to_logits = nn.Sequential(_conv(widths[-1], widths[-1], 1), nn.LeakyReLU(0.1), _conv(widths[-1], 1, 5))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, 1, pooled_size, pooled_size) float32 logits (real > 0 > fake)."""
        hidden_states = self.block_in(pixel_values)
        for block in self.blocks:
            hidden_states = block(hidden_states)  # (B, w_i, H_i, W_i) -> (B, w_i+1, ceil(H_i / 2), ceil(W_i / 2))
        return self.to_logits(self.pool(hidden_states)).float()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))), a float32 scalar, for logits of any shape."""
    return 0.5 * (F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean D(x_hat), a float32 scalar: the generator's hinge-GAN term."""
    return -fake_logits.float().mean()


def lecam_regularization(
    real_mean: torch.Tensor, fake_mean: torch.Tensor, ema_real: torch.Tensor, ema_fake: torch.Tensor
) -> torch.Tensor:
    """relu(mean D(x) - ema_fake)^2 + relu(ema_real - mean D(x_hat))^2 (scalars in, scalar out)."""
    return F.relu(real_mean - ema_fake).square() + F.relu(ema_real - fake_mean).square()


class LeCAMRegularizer(nn.Module):
    """LeCAM regularisation of the discriminator, as TiTok / MaskBit compute it.

    Each call returns `lecam_regularization` of the batch means of the logits against the exponential moving averages
    of the earlier calls (unweighted: TiTok multiplies it by `lecam_regularization_weight` = 0.001 and adds it to the
    discriminator loss), then, in training mode, updates ema <- decay * ema + (1 - decay) * batch mean. The averages
    are buffers (`ema_real`, `ema_fake`, both starting at 0), so they are saved in the state dict and resume exactly.

    Under `torch.distributed` (initialised, more than one process) the batch means that update the averages are
    averaged over processes (one all-reduce of 2 floats per call, which every process must make), so every process
    holds the same averages and a checkpoint written by one of them resumes all. The returned value uses the local
    batch means, as in TiTok.

    Args:
        decay (`float`, *optional*, defaults to 0.999): EMA decay (TiTok's `lecam_ema_decay`).
    """

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"`decay` must be in [0, 1), got {decay}.")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("ema_fake", torch.zeros((), dtype=torch.float32))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Logits of any shape for real and reconstructed images -> the float32 scalar regulariser."""
        real_mean, fake_mean = real_logits.float().mean(), fake_logits.float().mean()
        regularization = lecam_regularization(real_mean, fake_mean, self.ema_real, self.ema_fake)
        if self.training:
            means = torch.stack([real_mean, fake_mean]).detach()
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(means)
                means = means / dist.get_world_size()
            # the graph above keeps no reference to the old averages' values, so updating them in place is safe
            self.ema_real.lerp_(means[0], 1 - self.decay)
            self.ema_fake.lerp_(means[1], 1 - self.decay)
        return regularization


def adaptive_generator_weight(
    reconstruction_loss: torch.Tensor,
    generator_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """VQGAN's adaptive weight of the adversarial term: ||dL_rec/dW|| / (||dL_gan/dW|| + 1e-4), clamped to
    [0, max_weight] and detached, where W is the decoder's last layer weight (taming multiplies it by the fixed
    discriminator weight). Which terms count as L_rec is the caller's choice (taming: pixel + perceptual).

    Both losses must depend on `last_layer_weight`; their graphs are kept (`retain_graph=True`) for the backward pass
    of the total loss. Returns a float32 scalar.
    """
    (reconstruction_grad,) = torch.autograd.grad(reconstruction_loss, last_layer_weight, retain_graph=True)
    (generator_grad,) = torch.autograd.grad(generator_loss, last_layer_weight, retain_graph=True)
    weight = torch.linalg.vector_norm(reconstruction_grad.float()) / (
        torch.linalg.vector_norm(generator_grad.float()) + 1e-4
    )
    return weight.clamp(0.0, max_weight).detach()
