"""The training objectives, composed of named, weighted terms: the tokenizer's (generator's) and the discriminator's.

`TokenizerLoss` returns every term it computed, so the loop logs them all: pixel terms (L1, L2), perceptual terms
(LPIPS, TiTok's ConvNeXt term), the quantizer's loss and the adversarial term with its weight. `DiscriminatorLoss`
returns the discriminator's hinge loss, its LeCAM regulariser (whose moving averages it holds, so they are saved
with a checkpoint) and the mean logits. The weights follow TiTok (`bytedance/1d-tokenizer`,
`modeling/modules/losses.py`):

    tokenizer:      w_l1 |x - x_hat| + w_l2 (x - x_hat)^2 + w_lpips LPIPS + w_convnext ConvNeXt + w_q L_quantizer
                    + w_adv * lambda * (-mean D(x_hat))
    discriminator:  hinge(D(x), D(sg[x_hat])) + w_lecam * LeCAM

with lambda = 1 ("fixed", TiTok) or VQGAN's adaptive weight ("adaptive", taming-transformers): the ratio of the
gradient norms of the reconstruction terms and of the adversarial term at the decoder's last layer.

The perceptual networks and the discriminator see images in [-1, 1], mapped from the model's `pixel_value_range`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hf_vitvq import ViTVQModel, ViTVQModelOutput

from .discriminator import (
    LeCAMRegularizer,
    adaptive_generator_weight,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)

GAN_WEIGHT_MODES = ("fixed", "adaptive")


@dataclass
class LossWeights:
    reconstruction_l1: float = 0.0
    reconstruction_l2: float = 1.0
    quantizer: float = 1.0
    lpips: float = 0.0
    convnext: float = 0.0
    adversarial: float = 0.0


def to_signed_unit_range(pixel_values: torch.Tensor, pixel_value_range: tuple[float, float]) -> torch.Tensor:
    """Pixel values in `pixel_value_range` (low, high) -> float32 in [-1, 1] (the identity for (-1, 1))."""
    low, high = pixel_value_range
    pixel_values = pixel_values.float()
    if (low, high) == (-1.0, 1.0):
        return pixel_values
    return (pixel_values - low) * (2.0 / (high - low)) - 1.0


def decoder_last_layer(model: ViTVQModel) -> nn.Parameter:
    """The weight of the decoder's last layer, where the adaptive GAN weight compares gradients: the pixel decoder's
    `conv_out`, or the last conv of the MaskGIT-VQGAN head."""
    decoder = model.decoder
    last_conv = decoder.conv_out if decoder.maskgit_head is None else decoder.maskgit_head.decoder.conv_out
    return last_conv.weight


def frozen_call(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """`module(inputs)` with its parameters detached: gradients reach `inputs` but none of the parameters, whatever
    their `requires_grad`, so a backward pass through the result never changes them (nor triggers the gradient hooks
    of a DDP wrapper, which is not called: pass the plain module)."""
    parameters = {name: parameter.detach() for name, parameter in module.named_parameters()}
    return functional_call(module, parameters, (inputs,))


class TokenizerLoss:
    """The tokenizer's loss: total = w_l1 * |x - x_hat| + w_l2 * (x - x_hat)^2 + w_lpips * LPIPS + w_convnext *
    ConvNeXt + w_q * quantizer loss (codebook + commitment, entropy, KL, ... as the model's quantizer defines it)
    + w_adv * lambda * (-mean D(x_hat)); terms with weight 0 are skipped (the quantizer's is always reported).

    Args:
        weights (`LossWeights`): the weights, all >= 0, L1 or L2 > 0.
        pixel_value_range (`tuple[float, float]`, *optional*, defaults to `(-1.0, 1.0)`): the range of the model's
            pixel values, mapped to [-1, 1] for the perceptual networks and the discriminator.
        lpips (`nn.Module`, *optional*): LPIPS (`hf_vitvq.training.perceptual.LPIPS`), (B,) distances of two [-1, 1]
            batches; needed when `weights.lpips > 0`.
        convnext (`nn.Module`, *optional*): the ConvNeXt term (`ConvNextPerceptualLoss`), a scalar for two [-1, 1]
            batches; needed when `weights.convnext > 0`.
        gan_weight_mode (`str`, *optional*, defaults to `"fixed"`): lambda = 1 (`"fixed"`, TiTok) or VQGAN's
            `adaptive_generator_weight` of the weighted reconstruction terms (pixel and perceptual) and the
            adversarial term at the decoder's last layer (`"adaptive"`).
    """

    def __init__(
        self,
        weights: LossWeights,
        pixel_value_range: tuple[float, float] = (-1.0, 1.0),
        lpips: nn.Module | None = None,
        convnext: nn.Module | None = None,
        gan_weight_mode: str = "fixed",
    ) -> None:
        if min(asdict(weights).values()) < 0:
            raise ValueError(f"Loss weights must be >= 0, got {weights}.")
        if weights.reconstruction_l1 == weights.reconstruction_l2 == 0:
            raise ValueError("At least one of the L1 and L2 reconstruction weights must be > 0.")
        for name, network in (("lpips", lpips), ("convnext", convnext)):
            if getattr(weights, name) > 0 and network is None:
                raise ValueError(f"The {name} weight is {getattr(weights, name)} but no {name} network was given.")
        if gan_weight_mode not in GAN_WEIGHT_MODES:
            raise ValueError(f"`gan_weight_mode` must be one of {GAN_WEIGHT_MODES}, got {gan_weight_mode!r}.")
        self.weights = weights
        self.pixel_value_range = tuple(pixel_value_range)
        self.lpips = lpips if weights.lpips > 0 else None
        self.convnext = convnext if weights.convnext > 0 else None
        self.gan_weight_mode = gan_weight_mode

    def __call__(
        self,
        images: torch.Tensor,
        output: ViTVQModelOutput,
        discriminator: nn.Module | None = None,
        last_layer_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named terms (unweighted; the quantizer's own terms are in `output.quantizer_stats`) and `loss`, their
        weighted sum; computed in float32.

        The adversarial term (`adversarial_loss`, and `adversarial_weight` = w_adv * lambda) is added when
        `discriminator` is given and `weights.adversarial > 0`: the plain discriminator module (not a DDP wrapper),
        called with its parameters detached (`frozen_call`), so that this loss never changes it. The adaptive mode
        needs `last_layer_weight` (`decoder_last_layer(model)`).
        """
        reconstruction = output.reconstruction.float()
        images = images.float()
        weights = self.weights
        terms: dict[str, torch.Tensor] = {}
        if weights.reconstruction_l1:
            terms["l1_loss"] = F.l1_loss(reconstruction, images)
        if weights.reconstruction_l2:
            terms["l2_loss"] = F.mse_loss(reconstruction, images)
        if self.lpips is not None or self.convnext is not None or discriminator is not None:
            reconstruction_unit = to_signed_unit_range(reconstruction, self.pixel_value_range)
            images_unit = to_signed_unit_range(images, self.pixel_value_range)
        if self.lpips is not None:
            terms["lpips_loss"] = self.lpips(reconstruction_unit, images_unit).mean()
        if self.convnext is not None:
            terms["convnext_loss"] = self.convnext(reconstruction_unit, images_unit)
        reconstruction_loss = sum(
            weight * terms[name]
            for name, weight in (
                ("l1_loss", weights.reconstruction_l1),
                ("l2_loss", weights.reconstruction_l2),
                ("lpips_loss", weights.lpips),
                ("convnext_loss", weights.convnext),
            )
            if name in terms
        )
        terms["quantizer_loss"] = output.quantizer_loss
        loss = reconstruction_loss + weights.quantizer * output.quantizer_loss
        if discriminator is not None and weights.adversarial > 0:
            terms["adversarial_loss"] = generator_adversarial_loss(frozen_call(discriminator, reconstruction_unit))
            adversarial_weight = torch.tensor(weights.adversarial, device=reconstruction.device)
            if self.gan_weight_mode == "adaptive":
                if last_layer_weight is None:
                    raise ValueError("The adaptive GAN weight needs `last_layer_weight` (decoder_last_layer(model)).")
                adversarial_weight = adversarial_weight * adaptive_generator_weight(
                    reconstruction_loss, terms["adversarial_loss"], last_layer_weight
                )
            terms["adversarial_weight"] = adversarial_weight
            loss = loss + adversarial_weight * terms["adversarial_loss"]
        terms["loss"] = loss
        return terms


class DiscriminatorLoss(nn.Module):
    """The discriminator's loss: hinge(D(x), D(sg[x_hat])) + `lecam_weight` * LeCAM (TiTok's form; the LeCAM moving
    averages are buffers of this module, so register it for checkpointing).

    Real and reconstructed images go through the discriminator in one batch (one forward, as DDP wants; its
    GroupNorm normalises each image on its own, so the logits are those of two separate calls). Gradients reach
    the discriminator only: the reconstructions are detached. Logits and losses are float32.

    Args:
        lecam_weight (`float`, *optional*, defaults to 0.001): weight of the LeCAM term (TiTok's); the term is
            computed and logged (and its averages kept) also at weight 0.
        lecam_decay (`float`, *optional*, defaults to 0.999): decay of LeCAM's moving averages (TiTok's).
        pixel_value_range (`tuple[float, float]`, *optional*, defaults to `(-1.0, 1.0)`): the model's pixel range,
            mapped to the discriminator's [-1, 1].
    """

    def __init__(
        self,
        lecam_weight: float = 0.001,
        lecam_decay: float = 0.999,
        pixel_value_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if lecam_weight < 0:
            raise ValueError(f"`lecam_weight` must be >= 0, got {lecam_weight}.")
        self.lecam_weight = lecam_weight
        self.pixel_value_range = tuple(pixel_value_range)
        self.lecam = LeCAMRegularizer(lecam_decay)

    def forward(
        self, discriminator: nn.Module, images: torch.Tensor, reconstructions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """`discriminator_loss` (the total), `hinge_loss`, `lecam_loss` and the mean logits `logits_real` and
        `logits_fake` (detached), for (B, C, H, W) images and reconstructions in the model's pixel range.

        In training mode the LeCAM averages move (an all-reduce under torch.distributed: every process must call)."""
        pixels = torch.cat([images, reconstructions.detach()])  # (2B, C, H, W)
        logits = discriminator(to_signed_unit_range(pixels, self.pixel_value_range)).float()
        real_logits, fake_logits = logits.chunk(2)
        terms = {
            "hinge_loss": hinge_discriminator_loss(real_logits, fake_logits),
            "lecam_loss": self.lecam(real_logits, fake_logits),
        }
        terms["discriminator_loss"] = terms["hinge_loss"] + self.lecam_weight * terms["lecam_loss"]
        terms["logits_real"] = real_logits.detach().mean()
        terms["logits_fake"] = fake_logits.detach().mean()
        return terms
