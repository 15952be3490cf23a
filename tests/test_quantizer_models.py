"""Every quantizer type inside ViTVQModel: gradients reach the encoder, encode/decode agree, save/load round trips,
the codebook-health numbers reach the training loop, and the config rejects inconsistent quantizer fields."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig, ViTVQModel

VARIANTS = {
    "vq": {},
    "vq_euclidean_ema_kmeans_restart": {
        "use_l2_norm_codes": False,
        "use_ema_codebook": True,
        "kmeans_init": True,
        "dead_code_steps": 1,
        "dead_code_threshold": 0.5,
    },
    "vq_factorized_rotation_entropy": {
        "factorized_code_dim": 3,
        "use_rotation_trick": True,
        "entropy_loss_weight": 0.1,
    },
    "vq_simvq": {"use_simvq": True},
    "fsq": {"quantizer_type": "fsq", "fsq_levels": [5, 3, 3], "codebook_dim": 3, "codebook_size": 45},
    "lfq": {"quantizer_type": "lfq", "codebook_dim": 5, "codebook_size": 32, "entropy_loss_weight": 0.1},
    "rvq": {"quantizer_type": "rvq", "num_quantizers": 2, "use_l2_norm_codes": False, "dead_code_steps": 1},
    "kl": {"quantizer_type": "kl"},
}


def make_model(name: str, seed: int = 0) -> ViTVQModel:
    torch.manual_seed(seed)
    return ViTVQModel(ViTVQConfig(**tiny_config_kwargs(**VARIANTS[name])))


def pixels(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def train_steps(model: ViTVQModel, steps: int) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for step in range(steps):
        x = pixels(seed=step)
        output = model(x)
        (F.mse_loss(output.reconstruction, x) + output.quantizer_loss).backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradients_reach_the_encoder_and_outputs_are_consistent(name):
    model = make_model(name).train()
    config = model.config
    x = pixels()
    output = model(x)
    (F.mse_loss(output.reconstruction, x) + output.quantizer_loss).backward()
    assert model.encoder.projection.weight.grad.abs().sum() > 0
    assert model.encoder.projection.out_features == (2 if name == "kl" else 1) * config.codebook_dim
    assert output.quantized_latents.shape == (4, config.num_latent_tokens, config.codebook_dim)
    expected_loss = sum(output.quantizer_stats[key] for key in output.quantizer_stats if key.endswith("_loss"))
    torch.testing.assert_close(output.quantizer_loss, expected_loss + torch.zeros(()))

    model.eval()
    output = model(x)
    tokens = model.encode(x)
    if name == "kl":
        assert output.token_ids is None and tokens.dtype == torch.float32
        torch.testing.assert_close(tokens, output.quantized_latents)
    else:
        expected_shape = (4, config.num_latent_tokens) + ((2,) if name == "rvq" else ())
        assert tokens.shape == expected_shape and tokens.dtype == torch.int64
        assert torch.equal(tokens, output.token_ids)
        assert int(tokens.min()) >= 0 and int(tokens.max()) < config.codebook_size
    torch.testing.assert_close(model.decode(tokens), output.reconstruction)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_save_load_round_trip(name, tmp_path):
    model = make_model(name)
    train_steps(model, steps=2)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = ViTVQModel.from_pretrained(tmp_path).eval()
    config_fields = [{k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"} for m in (model, loaded)]
    assert config_fields[0] == config_fields[1]
    expected_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert expected_state.keys() == loaded_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(loaded_state[key], value), key
    x = pixels(seed=9)
    torch.testing.assert_close(loaded(x).reconstruction, model(x).reconstruction)
    if name == "vq_euclidean_ema_kmeans_restart":  # the restart timers and EMA sums resume with the model
        assert bool(loaded.quantize.kmeans_done) and int(loaded.quantize.usage.step) == 2
        torch.testing.assert_close(loaded.codebook_health(), model.codebook_health())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_encode_on_a_model_in_train_mode_changes_nothing_and_does_not_sample(name):
    """`ViTVQModel(config)` starts in train mode; `encode` / `decode` (inference mode) on it must not maintain the
    codebook (k-means, EMA, dead-code restarts, usage counts) nor sample (`kl`): the same ids as in eval mode."""
    model = make_model(name)
    train_steps(model, 1)  # past k-means, with restart candidates held
    before = {key: value.clone() for key, value in [*model.named_parameters(), *model.named_buffers()]}
    x = pixels(seed=5)
    token_ids = [model.encode(x) for _ in range(3)]
    model.decode(token_ids[0])
    assert model.training
    after = dict([*model.named_parameters(), *model.named_buffers()])
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert all(torch.equal(ids, token_ids[0]) for ids in token_ids)
    assert torch.equal(model.eval().encode(x), token_ids[0])


# Variants whose codebook-usage window is not saved: no dead-code restart reads it (`kl` has none).
WITHOUT_SAVED_USAGE = [name for name in VARIANTS if name not in ("vq_euclidean_ema_kmeans_restart", "rvq", "kl")]


@pytest.mark.parametrize("name", WITHOUT_SAVED_USAGE)
def test_loaded_model_starts_its_unsaved_buffers_fresh(name, tmp_path):
    """Buffers not saved with the model (the codebook-usage window unless restarts need it) are initialised on load,
    not left as uninitialised memory: a fine-tuning run logs the codebook health of its own steps."""
    model = make_model(name)
    model.save_pretrained(tmp_path)
    fresh = make_model(name, seed=1)
    loaded = ViTVQModel.from_pretrained(tmp_path)
    saved = set(model.state_dict())
    unsaved = {key: buffer for key, buffer in fresh.named_buffers() if key not in saved}
    assert unsaved, "expected the usage window to stay out of the checkpoint"
    loaded_buffers = dict(loaded.named_buffers())
    for key, buffer in unsaved.items():
        assert torch.equal(loaded_buffers[key], buffer), key


def test_simvq_inside_the_model_starts_from_the_papers_init():
    """Basis ~ N(0, 1/D) and an identity map, as `SimVQQuantizer.init_weights` says, also when the model builds it
    (the generic init of its `embedding` runs first and gives U(-1/K, 1/K))."""
    quantizer = make_model("vq_simvq").quantize
    dim = quantizer.embedding.embedding_dim
    assert torch.equal(quantizer.code_transform.detach(), torch.eye(dim))
    std = quantizer.embedding.weight.std().item()
    assert abs(std - dim**-0.5) < 0.1 * dim**-0.5, std


def test_default_vq_keeps_titok_parameter_names():
    keys = {key for key in make_model("vq").state_dict() if key.startswith("quantize.")}
    assert keys == {"quantize.embedding.weight"}


def test_codebook_health_reports_the_training_window():
    model = make_model("vq")
    train_steps(model, steps=3)
    health = model.codebook_health()
    config = model.config
    assert set(health) == {"codebook_usage", "window_perplexity", "dead_codes", "code_frequency"}
    assert health["code_frequency"].shape == (config.codebook_size,)
    used = int((health["code_frequency"] > 0).sum())
    assert health["codebook_usage"].item() == pytest.approx(used / config.codebook_size)
    assert int(health["dead_codes"]) == config.codebook_size - used
    assert 1.0 <= health["window_perplexity"].item() <= used + 1e-4
    assert make_model("kl").codebook_health() == {}


def test_rvq_decode_rejects_flat_ids():
    model = make_model("rvq").eval()
    with pytest.raises(ValueError, match=r"shape \(batch_size, 7, 2\)"):
        model.decode(torch.zeros(1, 7, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quantizer_type": "vqgan"}, "quantizer_type"),
        ({"quantizer_type": "fsq", "fsq_levels": [8, 5]}, "codebook_dim=2 and codebook_size=40"),
        ({"quantizer_type": "fsq", "fsq_levels": [1, 5], "codebook_dim": 2}, "integers >= 2"),
        ({"quantizer_type": "lfq", "codebook_dim": 4, "codebook_size": 10}, "codebook_size=16"),
        ({"quantizer_type": "fsq", "use_ema_codebook": True}, "only apply to quantizer_type 'vq' or 'rvq'"),
        ({"use_simvq": True, "dead_code_steps": 5}, "cannot be combined"),
        ({"quantizer_type": "rvq"}, "use_l2_norm_codes=False"),
        ({"quantizer_type": "rvq", "use_l2_norm_codes": False, "use_rotation_trick": True}, "use_rotation_trick"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"dead_code_steps": -1}, "dead_code_steps"),
        ({"factorized_code_dim": 0}, "factorized_code_dim"),
        ({"entropy_temperature": 0.0}, "entropy_temperature"),
    ],
)
def test_config_rejects_inconsistent_quantizer_fields(overrides, message):
    with pytest.raises(ValueError, match=message):
        ViTVQConfig(**tiny_config_kwargs(**overrides))


def test_rvq_bits_per_image_count_every_level():
    config = ViTVQConfig(**tiny_config_kwargs(**VARIANTS["rvq"]))
    assert config.bits_per_image == pytest.approx(7 * 2 * torch.log2(torch.tensor(37.0)).item())
