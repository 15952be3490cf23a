"""ViTVQModel: shapes, the TiTok computation, API contracts, attention back-ends, checkpointing, save/load."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig, ViTVQModel, ViTVQModelOutput

BATCH = 3


def make_model(seed: int = 0, **overrides) -> ViTVQModel:
    torch.manual_seed(seed)
    attn_implementation = overrides.pop("attn_implementation", None)
    config = ViTVQConfig(**tiny_config_kwargs(**overrides))
    return ViTVQModel._from_config(config, attn_implementation=attn_implementation).eval()


def pixels(config: ViTVQConfig, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.num_channels, config.image_size, config.image_size, generator=generator) * 2 - 1


def test_forward_output_shapes_and_types():
    model = make_model()
    config = model.config
    output = model(pixels(config))
    assert isinstance(output, ViTVQModelOutput)
    assert output.reconstruction.shape == (BATCH, 3, 32, 32)
    assert output.token_ids.shape == (BATCH, config.num_latent_tokens) and output.token_ids.dtype == torch.int64
    assert output.quantized_latents.shape == (BATCH, config.num_latent_tokens, config.codebook_dim)
    assert int(output.token_ids.min()) >= 0 and int(output.token_ids.max()) < config.codebook_size
    for name in ("codebook_loss", "commitment_loss", "quantizer_loss", "perplexity"):
        assert output[name].shape == ()
    torch.testing.assert_close(output.quantizer_loss, output.codebook_loss + output.commitment_loss)
    assert 1.0 <= output.perplexity.item() <= BATCH * config.num_latent_tokens
    as_tuple = model(pixels(config), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.reconstruction)


def test_encode_decode_agree_with_forward():
    model = make_model()
    x = pixels(model.config)
    output = model(x)
    token_ids = model.encode(x)
    assert torch.equal(token_ids, output.token_ids)
    torch.testing.assert_close(model.decode(token_ids), output.reconstruction)
    torch.testing.assert_close(model.decode_latents(output.quantized_latents), output.reconstruction)


def test_encode_and_decode_outputs_can_enter_a_graph_autograd_records():
    """The helpers run in inference mode, but what they return is an ordinary tensor: a downstream prior can embed
    the token ids, and a network being trained can read the decoded pixels, with autograd saving them."""
    model = make_model()
    token_ids = model.encode(pixels(model.config))
    reconstruction = model.decode(token_ids)
    assert not token_ids.is_inference() and not reconstruction.is_inference()
    prior_embedding = torch.nn.Embedding(model.config.codebook_size, 4)
    scale = torch.ones((), requires_grad=True)
    (prior_embedding(token_ids).sum() + (reconstruction * scale).sum()).backward()
    assert prior_embedding.weight.grad.abs().sum() > 0 and scale.grad is not None


def test_encoder_matches_titok_computation_written_out():
    """The encoder, spelled out step by step as TiTok computes it (with torch's MultiheadAttention)."""
    model = make_model()
    encoder, config = model.encoder, model.config
    x = pixels(config)
    width = config.encoder_hidden_size

    h = encoder.patch_embeddings(x).reshape(BATCH, width, -1).permute(0, 2, 1)
    h = torch.cat([encoder.class_embedding.expand(BATCH, 1, width), h], dim=1) + encoder.position_embeddings
    latents = encoder.latent_tokens.expand(BATCH, -1, -1) + encoder.latent_position_embeddings
    h = encoder.transformer.pre_layernorm(torch.cat([h, latents], dim=1))
    for layer in encoder.transformer.layers:
        mha = torch.nn.MultiheadAttention(width, config.encoder_num_attention_heads, batch_first=True)
        mha.in_proj_weight.data.copy_(layer.attention.qkv.weight)
        mha.in_proj_bias.data.copy_(layer.attention.qkv.bias)
        mha.out_proj.weight.data.copy_(layer.attention.out_proj.weight)
        mha.out_proj.bias.data.copy_(layer.attention.out_proj.bias)
        normed = layer.layernorm_before(h)
        h = h + mha(normed, normed, normed, need_weights=False)[0]
        h = h + layer.mlp.fc2(torch.nn.functional.gelu(layer.mlp.fc1(layer.layernorm_after(h))))
    expected = encoder.projection(encoder.transformer.post_layernorm(h[:, 1 + config.num_patches :]))
    torch.testing.assert_close(encoder(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_last_layer_computes_only_the_kept_positions_with_the_same_result(stack):
    """The stack's last layer runs its queries, MLP and residuals on the kept positions only; every layer run on all
    positions and the kept ones sliced out afterwards must give the same output."""
    model = make_model()
    transformer = getattr(model, stack).transformer
    keep = model.decoder.keep if stack == "decoder" else slice(-model.config.num_latent_tokens, None)
    width = transformer.pre_layernorm.normalized_shape[0]
    hidden_states = torch.randn(BATCH, 1 + model.config.num_patches + model.config.num_latent_tokens, width)
    full = transformer.pre_layernorm(hidden_states)
    for layer in transformer.layers:
        full = layer(full)
    expected = transformer.post_layernorm(full[:, keep])
    output = transformer(hidden_states, keep=keep)
    assert output.shape == expected.shape
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-5)


def test_feed_forward_in_chunks_for_inference_gives_the_same_tokens_and_pixels():
    """Without autograd the CPU path runs each MLP over at most 16 of the batch's positions at a time (in equal
    chunks); tokens and pixels must match the model that runs it in one piece. With autograd it runs in one piece."""
    chunked, whole = make_model(seed=5, chunk_size_feed_forward=16), make_model(seed=5, chunk_size_feed_forward=0)
    x = pixels(chunked.config)
    first_layer, calls = chunked.encoder.transformer.layers[0], []
    feed_forward = first_layer.feed_forward
    first_layer.feed_forward = lambda rows: calls.append(rows.shape) or feed_forward(rows)
    ids_chunked, ids_whole = chunked.encode(x), whole.encode(x)
    config = chunked.config
    rows = BATCH * (1 + config.num_patches + config.num_latent_tokens)
    assert [shape[1] for shape in calls] == [config.encoder_hidden_size] * len(calls)
    sizes = [shape[0] for shape in calls]
    assert sum(sizes) == rows and len(sizes) == -(-rows // 16) and max(sizes) - min(sizes) <= 1
    assert torch.equal(ids_chunked, ids_whole)
    torch.testing.assert_close(chunked.decode(ids_whole), whole.decode(ids_whole), atol=1e-6, rtol=1e-5)
    calls.clear()
    chunked(x)  # forward with autograd recording
    assert calls == [torch.Size([BATCH, rows // BATCH, config.encoder_hidden_size])]
    del first_layer.feed_forward


def test_depth_to_space_uses_titok_channel_order():
    """TiTok rearranges 'b (p1 p2 c) h w -> b c (h p1) (w p2)': channel (p1 * p + p2) * C + c."""
    model = make_model()
    decoder = model.decoder
    grid, patch, channels = decoder.grid_size, decoder.patch_size, decoder.num_channels
    patches = torch.randn(2, grid * grid, patch * patch * channels)
    image = decoder.depth_to_space(patches)
    for row, col, p1, p2, c in [(0, 0, 0, 0, 0), (1, 2, 3, 5, 2), (3, 3, 7, 7, 1), (2, 0, 4, 1, 0)]:
        expected = patches[1, row * grid + col, (p1 * patch + p2) * channels + c]
        assert image[1, c, row * patch + p1, col * patch + p2] == expected


def test_without_class_token_the_layout_has_no_class_slot():
    model = make_model(use_class_token=False)
    assert model.encoder.class_embedding is None and model.decoder.class_embedding is None
    assert model.encoder.position_embeddings.shape[0] == model.config.num_patches
    output = model(pixels(model.config))
    assert output.reconstruction.shape == (BATCH, 3, 32, 32)


def test_sdpa_and_eager_attention_agree():
    sdpa = make_model(seed=3, attn_implementation="sdpa")
    eager = make_model(seed=3, attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    x = pixels(sdpa.config)
    out_sdpa, out_eager = sdpa(x), eager(x)
    torch.testing.assert_close(out_sdpa.reconstruction, out_eager.reconstruction, atol=1e-5, rtol=1e-5)
    assert torch.equal(out_sdpa.token_ids, out_eager.token_ids)


def reconstruction_gradients(model: ViTVQModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    output = model(x)
    loss = (output.reconstruction - x).pow(2).mean() + output.quantizer_loss
    loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model().train()
    x = pixels(model.config)
    plain = reconstruction_gradients(model, x)
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.encoder.transformer.layers)
    checkpointed = reconstruction_gradients(model, x)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_encoder_receives_gradients_through_straight_through_estimator():
    model = make_model().train()
    x = pixels(model.config)
    model.zero_grad()
    output = model(x)
    (output.reconstruction - x).abs().mean().backward()  # reconstruction loss only: no quantizer loss term
    for name in ("patch_embeddings.weight", "latent_tokens", "projection.weight"):
        grad = model.encoder.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.quantize.embedding.weight.grad is None or model.quantize.embedding.weight.grad.abs().sum() == 0


def test_weight_init_follows_titok():
    model = make_model(seed=0, **{"encoder_hidden_size": 128, "encoder_num_attention_heads": 4})
    linear = model.encoder.transformer.layers[0].mlp.fc1
    # trunc_normal_ with torch's default cut-offs (+-2, absolute), as TiTok calls it: in effect N(0, 0.02^2)
    assert linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(linear.bias) == 0
    layernorm = model.encoder.transformer.post_layernorm
    assert torch.all(layernorm.weight == 1) and torch.count_nonzero(layernorm.bias) == 0
    assert model.encoder.position_embeddings.std().item() == pytest.approx(128**-0.5, rel=0.1)
    assert model.quantize.embedding.weight.abs().max() <= 1 / model.config.codebook_size


@pytest.mark.parametrize(
    ("bad_input", "error", "match"),
    [
        (torch.zeros(2, 1, 32, 32), ValueError, "channels"),
        (torch.zeros(2, 3, 64, 64), ValueError, "64x64"),
        (torch.zeros(3, 32, 32), ValueError, "4-d"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "floating point"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_pixel_values_get_clear_errors(bad_input, error, match):
    model = make_model()
    with pytest.raises(error, match=match):
        model.encode(bad_input)
    with pytest.raises(error, match=match):
        model(bad_input)


@pytest.mark.parametrize(
    ("bad_ids", "error", "match"),
    [
        (torch.full((2, 7), 37), ValueError, r"\[0, 37\)"),
        (torch.full((2, 7), -1), ValueError, r"\[0, 37\)"),
        (torch.zeros(2, 7, dtype=torch.float32), TypeError, "integer"),
        (torch.zeros(2, 6, dtype=torch.long), ValueError, r"\(batch_size, 7\)"),
        (torch.zeros(7, dtype=torch.long), ValueError, r"\(batch_size, 7\)"),
        ([1, 2, 3], TypeError, "torch.Tensor"),
    ],
)
def test_bad_token_ids_get_clear_errors(bad_ids, error, match):
    model = make_model()
    with pytest.raises(error, match=match):
        model.decode(bad_ids)


def test_decode_latents_rejects_wrong_shape():
    model = make_model()
    with pytest.raises(ValueError, match=r"\(batch_size, 7, 5\)"):
        model.decode_latents(torch.zeros(2, 7, 4))


def test_save_and_load_round_trip_is_exact_and_never_unpickles(tmp_path, monkeypatch):
    model = make_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert not list(tmp_path.glob("*.bin"))

    def no_pickle(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = ViTVQModel.from_pretrained(tmp_path).eval()
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == model.config.to_dict()
    x = pixels(model.config)
    expected, actual = model(x), loaded(x)
    assert torch.equal(actual.token_ids, expected.token_ids)
    assert torch.equal(actual.reconstruction, expected.reconstruction)


def test_auto_classes_load_a_saved_model(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = make_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ViTVQConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, ViTVQModel)
    x = pixels(model.config)
    assert torch.equal(loaded.eval().encode(x), model.encode(x))
