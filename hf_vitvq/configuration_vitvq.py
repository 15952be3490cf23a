"""ViT-VQ (TiTok-style 1D image tokenizer) configuration.

Reference: Yu et al., "An Image is Worth 32 Tokens for Reconstruction and Generation",
arXiv 2406.07550 (TiTok). Every hyperparameter of the model lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from transformers import PretrainedConfig


@dataclass(frozen=True)
class TransformerSizes:
    """Sizes of one ViT stack (the encoder's or the decoder's), read from a `ViTVQConfig`."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


# The published TiTok widths: small / base / large ViTs (arXiv 2406.07550, Table 1).
_VIT_SIZES: dict[str, dict[str, int]] = {
    "S": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8},
    "B": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "L": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}


def _symmetric(size: str, num_latent_tokens: int) -> dict[str, Any]:
    """A TiTok preset: the same ViT size for encoder and decoder, 4096 x 12 l2-normalised codes."""
    vit = _VIT_SIZES[size]
    return {
        "image_size": 256,
        "patch_size": 16,
        **{f"encoder_{key}": value for key, value in vit.items()},
        **{f"decoder_{key}": value for key, value in vit.items()},
        "num_latent_tokens": num_latent_tokens,
        "codebook_size": 4096,
        "codebook_dim": 12,
        "use_l2_norm_codes": True,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "S-128": _symmetric("S", 128),
    "B-64": _symmetric("B", 64),
    "L-32": _symmetric("L", 32),
    # The training config of the seed project simple-1d-tokenizer: one-layer ViTs, Euclidean codes.
    "seed": {
        "image_size": 256,
        "patch_size": 16,
        "encoder_hidden_size": 128,
        "encoder_num_hidden_layers": 1,
        "encoder_num_attention_heads": 8,
        "decoder_hidden_size": 128,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 8,
        "num_latent_tokens": 128,
        "use_class_token": False,
        "codebook_size": 512,
        "codebook_dim": 32,
        "use_l2_norm_codes": False,
    },
    # For tests and CPU demos: 32x32 images, 16 patches of 8x8, 32 tokens.
    "tiny": {
        "image_size": 32,
        "patch_size": 8,
        "encoder_hidden_size": 64,
        "encoder_num_hidden_layers": 2,
        "encoder_num_attention_heads": 4,
        "decoder_hidden_size": 64,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 4,
        "num_latent_tokens": 32,
        "codebook_size": 1024,
        "codebook_dim": 12,
        "use_l2_norm_codes": True,
    },
}


class ViTVQConfig(PretrainedConfig):
    r"""
    Configuration of a [`ViTVQModel`]: a ViT encoder that summarises an image into `num_latent_tokens` learned
    latent tokens, a vector quantizer that maps each latent to one of `codebook_size` codes, and a ViT decoder that
    reconstructs the image from those discrete tokens (TiTok, arXiv 2406.07550). The defaults describe TiTok-L-32
    without its two-stage decoder: 256x256 images, 32 tokens, 4096 codes of dimension 12, l2-normalised.

    Args:
        image_size (`int`, defaults to 256): height and width of the (square) input images.
        patch_size (`int`, defaults to 16): side of the square patches; must divide `image_size`.
        num_channels (`int`, defaults to 3): channels of the input and output images.
        encoder_hidden_size (`int`, defaults to 1024): width of the encoder ViT.
        encoder_num_hidden_layers (`int`, defaults to 24): number of encoder blocks.
        encoder_num_attention_heads (`int`, defaults to 16): attention heads per encoder block.
        encoder_mlp_ratio (`float`, defaults to 4.0): encoder MLP width as a multiple of `encoder_hidden_size`.
        decoder_hidden_size (`int`, defaults to 1024): width of the decoder ViT.
        decoder_num_hidden_layers (`int`, defaults to 24): number of decoder blocks.
        decoder_num_attention_heads (`int`, defaults to 16): attention heads per decoder block.
        decoder_mlp_ratio (`float`, defaults to 4.0): decoder MLP width as a multiple of `decoder_hidden_size`.
        num_latent_tokens (`int`, defaults to 32): number of 1D tokens an image is encoded into.
        use_class_token (`bool`, defaults to `True`): prepend a learned class token to the encoder and decoder
            sequences (TiTok's layout; the seed project had none).
        codebook_size (`int`, defaults to 4096): number of codes; token ids lie in `[0, codebook_size)`.
        codebook_dim (`int`, defaults to 12): dimension of each code (low-dimensional "factorized" codes).
        use_l2_norm_codes (`bool`, defaults to `True`): l2-normalise latents and codes before the nearest-code
            search (cosine similarity), as TiTok does.
        commitment_cost (`float`, defaults to 0.25): beta, the weight of the commitment loss.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on the attention and MLP outputs.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on the attention probabilities.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal init of linear, conv and
            embedding weights.

    Example:

    ```python
    >>> from hf_vitvq import ViTVQConfig, ViTVQModel
    >>> config = ViTVQConfig.from_preset("tiny", codebook_size=256)
    >>> model = ViTVQModel(config)
    ```
    """

    model_type = "vitvq"
    presets_table: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    image_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    encoder_hidden_size: int = 1024
    encoder_num_hidden_layers: int = 24
    encoder_num_attention_heads: int = 16
    encoder_mlp_ratio: float | int = 4.0
    decoder_hidden_size: int = 1024
    decoder_num_hidden_layers: int = 24
    decoder_num_attention_heads: int = 16
    decoder_mlp_ratio: float | int = 4.0
    num_latent_tokens: int = 32
    use_class_token: bool = True
    codebook_size: int = 4096
    codebook_dim: int = 12
    use_l2_norm_codes: bool = True
    commitment_cost: float | int = 0.25
    layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self._check_hyperparameters()

    def _check_hyperparameters(self) -> None:
        """Raise a `ValueError` naming the first inconsistent hyperparameter."""
        positive = (
            "image_size", "patch_size", "num_channels", "num_latent_tokens", "codebook_dim",
            "encoder_hidden_size", "encoder_num_hidden_layers", "encoder_num_attention_heads",
            "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size}) "
                "so that the image splits into whole patches."
            )
        for role in ("encoder", "decoder"):
            width = getattr(self, f"{role}_hidden_size")
            heads = getattr(self, f"{role}_num_attention_heads")
            if width % heads:
                raise ValueError(
                    f"`{role}_hidden_size` ({width}) must be divisible by `{role}_num_attention_heads` ({heads})."
                )
            mlp_ratio = getattr(self, f"{role}_mlp_ratio")
            if not mlp_ratio > 0:
                raise ValueError(f"`{role}_mlp_ratio` must be > 0, got {mlp_ratio!r}.")
        if isinstance(self.codebook_size, bool) or not isinstance(self.codebook_size, int) or self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be an integer >= 2, got {self.codebook_size!r}.")
        if self.commitment_cost < 0:
            raise ValueError(f"`commitment_cost` must be >= 0, got {self.commitment_cost!r}.")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps!r}.")

    @classmethod
    def presets(cls) -> list[str]:
        """Names accepted by [`~ViTVQConfig.from_preset`]."""
        return list(cls.presets_table)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViTVQConfig:
        """Build a configuration from a named preset, e.g. `ViTVQConfig.from_preset("L-32")`.

        Args:
            name: one of [`~ViTVQConfig.presets`]: the published TiTok sizes `"S-128"`, `"B-64"`, `"L-32"`,
                the seed project's `"seed"`, or `"tiny"` for tests and CPU demos.
            overrides: any config field, applied on top of the preset (e.g. `codebook_size=1024`).
        """
        if name not in cls.presets_table:
            raise ValueError(f"Unknown preset {name!r}; expected one of {cls.presets()}.")
        return cls(**{**cls.presets_table[name], **overrides})

    @property
    def grid_size(self) -> int:
        """Number of patches along each side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Number of image patches, `grid_size ** 2`."""
        return self.grid_size**2

    @property
    def bits_per_image(self) -> float:
        """Information in one encoded image: `num_latent_tokens * log2(codebook_size)`."""
        return self.num_latent_tokens * math.log2(self.codebook_size)

    @property
    def encoder_sizes(self) -> TransformerSizes:
        return self._sizes("encoder")

    @property
    def decoder_sizes(self) -> TransformerSizes:
        return self._sizes("decoder")

    def _sizes(self, role: str) -> TransformerSizes:
        width = getattr(self, f"{role}_hidden_size")
        return TransformerSizes(
            hidden_size=width,
            num_hidden_layers=getattr(self, f"{role}_num_hidden_layers"),
            num_attention_heads=getattr(self, f"{role}_num_attention_heads"),
            intermediate_size=int(width * getattr(self, f"{role}_mlp_ratio")),
        )


__all__ = ["ViTVQConfig", "TransformerSizes", "PRESETS"]
