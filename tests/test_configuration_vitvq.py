"""ViTVQConfig: presets, parameter counts, validation, serialisation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig, ViTVQModel


def expected_parameter_count(config: ViTVQConfig) -> int:
    """Parameters of the architecture, counted from its description (independently of the modules)."""
    cls = int(config.use_class_token)
    channels, patch, tokens, dim = config.num_channels, config.patch_size, config.num_latent_tokens, config.codebook_dim

    def vit(width: int, depth: int, mlp_ratio: float) -> int:
        hidden = int(width * mlp_ratio)
        block = 2 * 2 * width + (3 * width * width + 3 * width) + (width * width + width)
        block += width * hidden + hidden + hidden * width + width
        return 2 * 2 * width + depth * block  # ln_pre, ln_post, blocks

    enc, dec = config.encoder_hidden_size, config.decoder_hidden_size
    encoder = channels * patch * patch * enc + enc  # patch embedding
    encoder += cls * enc + (cls + config.num_patches) * enc + 2 * tokens * enc  # class, positions, latents
    encoder += vit(enc, config.encoder_num_hidden_layers, config.encoder_mlp_ratio) + enc * dim + dim
    decoder = dim * dec + dec + cls * dec + dec + (cls + config.num_patches) * dec + tokens * dec
    decoder += vit(dec, config.decoder_num_hidden_layers, config.decoder_mlp_ratio)
    decoder += dec * patch * patch * channels + patch * patch * channels + channels * channels * 9 + channels
    return encoder + config.codebook_size * dim + decoder


# Parameter counts of the presets (also in the README table).
PRESET_PARAMETERS = {
    "S-128": 51_753_312,
    "B-64": 171_909_216,
    "L-32": 606_904_160,
    "seed": 734_708,
    "tiny": 247_776,
}


@pytest.mark.parametrize("name", ViTVQConfig.presets())
def test_preset_parameter_counts(name):
    config = ViTVQConfig.from_preset(name)
    with torch.device("meta"):
        model = ViTVQModel(config)
    count = sum(param.numel() for param in model.parameters())
    assert count == expected_parameter_count(config) == PRESET_PARAMETERS[name]


def test_published_presets_have_titok_sizes():
    for name, width, depth, heads, tokens in [
        ("S-128", 512, 8, 8, 128),
        ("B-64", 768, 12, 12, 64),
        ("L-32", 1024, 24, 16, 32),
    ]:
        config = ViTVQConfig.from_preset(name)
        assert (config.encoder_hidden_size, config.encoder_num_hidden_layers, config.encoder_num_attention_heads) == (
            width,
            depth,
            heads,
        )
        assert config.decoder_sizes == config.encoder_sizes
        assert config.num_latent_tokens == tokens and config.image_size == 256 and config.patch_size == 16
        assert (config.codebook_size, config.codebook_dim, config.use_l2_norm_codes) == (4096, 12, True)
        assert config.bits_per_image == tokens * 12


def test_seed_preset_reproduces_the_seed_project():
    config = ViTVQConfig.from_preset("seed")
    assert (config.encoder_hidden_size, config.encoder_num_hidden_layers, config.encoder_num_attention_heads) == (
        128,
        1,
        8,
    )
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        128,
        1,
        8,
    )
    assert (config.patch_size, config.num_latent_tokens, config.codebook_size, config.codebook_dim) == (
        16,
        128,
        512,
        32,
    )
    assert config.use_l2_norm_codes is False and config.use_class_token is False


def test_from_preset_applies_overrides_and_rejects_unknown_names():
    config = ViTVQConfig.from_preset("tiny", codebook_size=1024, num_latent_tokens=16)
    assert config.codebook_size == 1024 and config.num_latent_tokens == 16 and config.image_size == 32
    assert ViTVQConfig.presets() == ["S-128", "B-64", "L-32", "seed", "tiny"]
    with pytest.raises(ValueError, match="Unknown preset 'XL'.*'L-32'"):
        ViTVQConfig.from_preset("XL")


def test_derived_sizes():
    config = ViTVQConfig(**tiny_config_kwargs())
    assert config.grid_size == 4 and config.num_patches == 16
    assert config.encoder_sizes.intermediate_size == 128 and config.decoder_sizes.intermediate_size == 144
    assert config.bits_per_image == pytest.approx(7 * math.log2(37))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"image_size": 30}, "divisible by `patch_size`"),
        (
            {"encoder_hidden_size": 66},
            r"`encoder_hidden_size` \(66\) must be divisible by `encoder_num_attention_heads` \(4\)",
        ),
        ({"decoder_hidden_size": 50}, "decoder_hidden_size"),
        ({"codebook_size": 1}, "codebook_size` must be an integer >= 2, got 1"),
        ({"num_latent_tokens": 0}, "num_latent_tokens` must be a positive integer"),
        ({"patch_size": 8.0}, "patch_size` must be a positive integer"),
        ({"chunk_size_feed_forward": -1}, "chunk_size_feed_forward` must be an integer >= 0"),
        ({"commitment_cost": -0.1}, "commitment_cost"),
        ({"hidden_dropout_prob": 1.0}, r"hidden_dropout_prob` must be in \[0, 1\)"),
        ({"encoder_mlp_ratio": 0}, "encoder_mlp_ratio"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ],
)
def test_config_validation_errors_name_the_problem(overrides, match):
    with pytest.raises(ValueError, match=match):
        ViTVQConfig(**tiny_config_kwargs(**overrides))


def test_config_json_round_trip(tmp_path):
    config = ViTVQConfig(**tiny_config_kwargs(use_class_token=False, use_l2_norm_codes=False))
    config.save_pretrained(tmp_path)
    loaded = ViTVQConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.model_type == "vitvq" and loaded.use_class_token is False
