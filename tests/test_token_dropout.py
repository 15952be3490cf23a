"""Tail-token dropout (`token_dropout="tail"`): prefix decoding, the kept-length draws, where gradients go, exact
resume; and `token_dropout="none"` leaving the model, its outputs and its saved files as they were before the option
existed (reference files in tests/fixtures/token_dropout_none, made with the code of commit 56bb641)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_script, tiny_config_kwargs
from safetensors.torch import load_file
from training_utils import QUICK_RUN, losses_by_step, run_in_process

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.modeling_vitvq import sample_kept_lengths
from hf_vitvq.training.evaluation import evaluate_reconstruction, prefix_lengths, reconstruct

FIXTURES = Path(__file__).parent / "fixtures" / "token_dropout_none"
reference = load_script(FIXTURES / "make_reference.py", "make_reference")
SIZES, VARIANTS = reference.SIZES, reference.VARIANTS

# The quantizer layouts: (B, L) ids, (B, L, num_quantizers) ids, (B, L, codebook_dim) continuous latents.
QUANTIZERS = {
    "vq": {},
    "rvq": {"quantizer_type": "rvq", "num_quantizers": 2, "use_l2_norm_codes": False},
    "kl": {"quantizer_type": "kl"},
}
# Different CPU kinds round float32 kernels differently (see tests/test_convert_titok.py): relative plus absolute.
CROSS_CPU = {"rtol": 1e-5, "atol": 1e-5}


def make_model(seed: int = 0, **overrides) -> ViTVQModel:
    torch.manual_seed(seed)
    return ViTVQModel(ViTVQConfig(**tiny_config_kwargs(**overrides))).eval()


def tail_model(**overrides) -> ViTVQModel:
    """7 tokens, prefixes of 2 to 7 decode."""
    return make_model(token_dropout="tail", tail_dropout_min_tokens=2, **overrides)


def pixels(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------ prefix decoding


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_every_prefix_decodes_deterministically_as_the_decoder_reads_it_in_training(quantizer):
    """For each k in [2, 7]: `encode(num_tokens=k)` is the first k of the full encoding; `decode` of it gives an
    image, the same twice, the same as `forward(num_tokens=k)`, and bit for bit what the decoder computes in a
    training step for a sample whose k tokens were kept (the learned embedding at the dropped positions); the images
    differ from one k to the next."""
    model = tail_model(**QUANTIZERS[quantizer])
    x = pixels()
    tokens = model.encode(x)
    codes = model(x).quantized_latents
    previous = None
    for k in range(2, 8):
        prefix = model.encode(x, num_tokens=k)
        assert torch.equal(prefix, tokens[:, :k]) and prefix.shape[:2] == (3, k)
        decoded = model.decode(prefix)
        assert decoded.shape == (3, 3, 32, 32)
        assert torch.equal(decoded, model.decode(prefix))
        with torch.no_grad():
            output = model(x, num_tokens=k)
            as_in_training = model.decoder(codes, num_kept=torch.full((3,), k))
            from_the_prefix = model.decoder(codes[:, :k])
        torch.testing.assert_close(output.reconstruction, decoded)
        assert output.quantized_latents.shape[1] == k and output.num_kept_tokens is None
        # the same values; not bit for bit: embedding k rows or all L can take other matmul kernels
        torch.testing.assert_close(from_the_prefix, as_in_training, rtol=1e-5, atol=1e-6)
        assert previous is None or not torch.allclose(decoded, previous)
        previous = decoded
    torch.testing.assert_close(model.decode(tokens), model(x).reconstruction)


def test_prefix_decoding_survives_save_and_load(tmp_path):
    model = tail_model()
    model.save_pretrained(tmp_path)
    loaded = ViTVQModel.from_pretrained(tmp_path).eval()
    assert loaded.config.token_dropout == "tail" and loaded.config.min_num_tokens == 2
    assert "decoder.dropped_token_embedding" in loaded.state_dict()
    prefix = model.encode(pixels(), num_tokens=3)
    assert torch.equal(loaded.decode(prefix), model.decode(prefix))


def test_the_mask_embedding_exists_only_with_tail_dropout():
    plain, tail = make_model(), tail_model()
    assert set(tail.state_dict()) - set(plain.state_dict()) == {"decoder.dropped_token_embedding"}
    assert plain.decoder.dropped_token_embedding is None


def test_evaluation_and_reconstruction_read_prefixes():
    model = tail_model()
    batches = [pixels(4, seed) for seed in range(2)]
    full, prefix = evaluate_reconstruction(model, batches), evaluate_reconstruction(model, batches, num_tokens=3)
    assert full == evaluate_reconstruction(model, batches, num_tokens=7)
    assert prefix["psnr"] != full["psnr"]
    token_ids, images = reconstruct(model, ViTVQImageProcessor.for_config(model.config), batches[0], num_tokens=3)
    assert token_ids.shape == (4, 3) and len(images) == 4
    assert prefix_lengths(model.config) == [2, 4, 7]
    assert prefix_lengths(make_model().config) == [7]


# ------------------------------------------------------------------------------------------------ kept lengths


def test_kept_lengths_are_uniform_over_the_configured_range_and_seeded():
    config = ViTVQConfig(**tiny_config_kwargs(token_dropout="tail", tail_dropout_min_tokens=3, tail_dropout_prob=1.0))
    torch.manual_seed(0)
    kept = sample_kept_lengths(config, 5000, "cpu")
    torch.manual_seed(0)
    assert torch.equal(sample_kept_lengths(config, 5000, "cpu"), kept)  # torch's global generator
    assert kept.dtype == torch.int64 and kept.shape == (5000,)
    frequencies = torch.bincount(kept, minlength=8).float() / 5000
    assert frequencies[:3].sum() == 0
    torch.testing.assert_close(frequencies[3:], torch.full((5,), 0.2), rtol=0, atol=0.03)


def test_kept_lengths_follow_the_listed_lengths_weights_and_probability():
    config = ViTVQConfig(**tiny_config_kwargs(token_dropout="tail", tail_dropout_lengths=[1, 4, 6],
                                              tail_dropout_weights=[1, 0, 3], tail_dropout_prob=0.5))  # fmt: skip
    assert config.min_num_tokens == 1
    torch.manual_seed(0)
    frequencies = torch.bincount(sample_kept_lengths(config, 8000, "cpu"), minlength=8).float() / 8000
    # half the samples keep all 7; of the others, 1/4 keep 1 and 3/4 keep 6; never 4
    expected = torch.tensor([0, 0.125, 0, 0, 0, 0, 0.375, 0.5])
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.03)
    assert frequencies[4] == 0


def test_a_training_step_draws_lengths_and_inference_does_not():
    model = tail_model().train()
    torch.manual_seed(1)
    kept = model(pixels(64)).num_kept_tokens
    assert kept.shape == (64,) and int(kept.min()) >= 2 and int(kept.max()) <= 7 and len(kept.unique()) > 1
    with torch.no_grad():
        assert model(pixels(64)).num_kept_tokens is None
    assert model.eval()(pixels(4)).num_kept_tokens is None
    assert make_model().train()(pixels(4)).num_kept_tokens is None


@pytest.mark.parametrize("rotation_trick", [False, True], ids=["straight-through", "rotation-trick"])
def test_the_reconstruction_gradient_reaches_only_the_kept_tokens(rotation_trick):
    """In a training step, the encoder output of a token past its sample's kept length gets exactly no gradient from
    the reconstruction (the quantizer's commitment loss, left out here, still trains it); every kept token gets
    some, and so does the mask embedding."""
    overrides = {"use_rotation_trick": True, "use_l2_norm_codes": False} if rotation_trick else {}
    model = tail_model(**overrides).train()
    latents = []

    def keep_latents(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        latents.append(output)

    model.encoder.register_forward_hook(keep_latents)
    torch.manual_seed(0)
    output = model(pixels(16))
    output.reconstruction.square().sum().backward()
    grad_norms = latents[0].grad.norm(dim=-1)  # (B, L)
    kept = torch.arange(7) < output.num_kept_tokens[:, None]
    assert (~kept).any() and kept.all(dim=0).any()  # some dropped tokens, some kept by every sample
    assert torch.all(grad_norms[~kept] == 0)
    assert torch.all(grad_norms[kept] > 0)
    assert model.decoder.dropped_token_embedding.grad.norm() > 0


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_a_model_without_tail_dropout_rejects_prefixes_and_says_why(quantizer):
    model = make_model(**QUANTIZERS[quantizer])
    x = pixels()
    tokens = model.encode(x)
    why = r"trained without tail-token dropout \(token_dropout='none'\): it decodes all 7 tokens only"
    with pytest.raises(ValueError, match=r"must have shape \(batch_size, 7.*\), got \(3, 4.*" + why):
        model.decode(tokens[:, :4])
    with pytest.raises(ValueError, match=r"`num_tokens` must be 7, got 4: .*" + why):
        model.encode(x, num_tokens=4)
    with pytest.raises(ValueError, match=why):
        model(x, num_tokens=4)
    with pytest.raises(ValueError, match=r"`quantized_latents` must have shape \(batch_size, 7, 5\).*" + why):
        model.decode_latents(model(x).quantized_latents[:, :4])
    assert torch.equal(model.encode(x, num_tokens=7), tokens)


@pytest.mark.parametrize("num_tokens", [1, 8, 0, True, 2.0])
def test_prefix_lengths_outside_the_trained_range_are_errors(num_tokens):
    model = tail_model()
    with pytest.raises(ValueError, match=r"`num_tokens` must be an integer in \[2, 7\], got .*decodes any prefix of k"):
        model.encode(pixels(), num_tokens=num_tokens)


def test_a_too_short_prefix_names_the_accepted_lengths():
    model = tail_model()
    with pytest.raises(ValueError, match=r"\(batch_size, k\), got \(3, 1\).* 2 <= k <= 7"):
        model.decode(torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"token_dropout": "random"}, r"`token_dropout` must be one of \('none', 'tail'\)"),
        ({"tail_dropout_prob": 0.25}, r"\['tail_dropout_prob'\] only apply to token_dropout='tail'"),
        ({"token_dropout": "tail", "tail_dropout_min_tokens": 8}, r"in \[1, num_latent_tokens=7\], got 8"),
        ({"token_dropout": "tail", "tail_dropout_prob": 0.0}, r"`tail_dropout_prob` must be in \(0, 1\]"),
        ({"token_dropout": "tail", "tail_dropout_lengths": [2, 2]}, "distinct integers"),
        ({"token_dropout": "tail", "tail_dropout_lengths": [0, 4]}, "distinct integers in \\[1, num_latent_tokens"),
        ({"token_dropout": "tail", "tail_dropout_lengths": [3, 5], "tail_dropout_min_tokens": 2}, "smallest of"),
        ({"token_dropout": "tail", "tail_dropout_weights": [1.0]}, "set those too"),
        ({"token_dropout": "tail", "tail_dropout_lengths": [3, 5], "tail_dropout_weights": [1.0]}, "one weight"),
        ({"token_dropout": "tail", "tail_dropout_lengths": [3, 5], "tail_dropout_weights": [0, 0]}, "not all zero"),
    ],
)
def test_config_errors_name_the_tail_dropout_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        ViTVQConfig(**tiny_config_kwargs(**overrides))


def test_min_tokens_is_derived_from_the_listed_lengths_and_saved(tmp_path):
    config = ViTVQConfig(**tiny_config_kwargs(token_dropout="tail", tail_dropout_lengths=[4, 2, 7]))
    assert config.tail_dropout_min_tokens == 2 and config.min_num_tokens == 2
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["token_dropout"] == "tail" and saved["tail_dropout_lengths"] == [4, 2, 7]
    assert ViTVQConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


# ------------------------------------------------------------------------------------------------ "none" unchanged


def without_version(config_json: Path) -> dict:
    config = json.loads(config_json.read_text())
    config.pop("transformers_version")
    return config


@pytest.mark.parametrize("name", list(VARIANTS))
def test_without_tail_dropout_a_seeded_model_saves_what_it_saved_before(name, tmp_path):
    """The same config.json (all but the transformers version), the same weight names and shapes, and the same
    initial values (up to the rounding of the CPU kind: a change in how many random numbers the init draws would
    change them entirely)."""
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs(**SIZES, **VARIANTS[name])))
    model.save_pretrained(tmp_path)
    assert without_version(tmp_path / "config.json") == without_version(FIXTURES / name / "config.json")
    weights, reference = load_file(tmp_path / "model.safetensors"), load_file(FIXTURES / name / "model.safetensors")
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        assert weights[key].dtype == value.dtype, key
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_without_tail_dropout_a_saved_model_loads_computes_and_saves_as_before(name, tmp_path):
    """The folder saved before the option existed loads and saves again to the same bytes; its token ids are
    exactly the old ones and its images (eval and one training step) equal the old ones up to the CPU kind's
    rounding; and a training step consumes exactly the random numbers it consumed before (the next draws match)."""
    model = ViTVQModel.from_pretrained(FIXTURES / name).eval()
    model.save_pretrained(tmp_path)
    reference_bytes = (FIXTURES / name / "model.safetensors").read_bytes()
    assert (tmp_path / "model.safetensors").read_bytes() == reference_bytes
    assert without_version(tmp_path / "config.json") == without_version(FIXTURES / name / "config.json")

    reference = load_file(FIXTURES / name / "reference.safetensors")
    x = reference["pixel_values"]
    tokens = model.encode(x)
    if model.quantize.is_continuous:
        torch.testing.assert_close(tokens, reference["tokens"], **CROSS_CPU)
    else:
        assert torch.equal(tokens, reference["tokens"])
    torch.testing.assert_close(model.decode(tokens), reference["decoded"], **CROSS_CPU)
    with torch.no_grad():
        torch.testing.assert_close(model(x).reconstruction, reference["reconstruction"], **CROSS_CPU)
    trained = copy.deepcopy(model).train()
    torch.manual_seed(2)
    step = trained(x)
    (step.reconstruction.square().mean() + step.quantizer_loss).backward()
    torch.testing.assert_close(step.reconstruction.detach(), reference["train_reconstruction"], **CROSS_CPU)
    torch.testing.assert_close(step.quantizer_loss.detach(), reference["train_quantizer_loss"], **CROSS_CPU)
    assert torch.equal(torch.rand(4), reference["rand_after_train_step"])


# ------------------------------------------------------------------------------------------------ exact resume


def test_training_with_tail_dropout_resumes_exactly(tmp_path):
    """A 8-step run with tail dropout (checkpoints at 4 and 8); then the same run resumed from checkpoint-4: steps
    5-8 give the same losses and final weights, bit for bit. The kept lengths come from torch's global generator,
    whose state the checkpoint holds: drawn from a generator the checkpoint did not restore, steps 5-8 would see
    other lengths and other losses."""
    overrides = {"token_dropout": "tail", "use_l2_norm_codes": False, "use_ema_codebook": True, "dead_code_steps": 2,
                 "use_rotation_trick": True}  # fmt: skip
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    common = [*QUICK_RUN, "--max_train_steps", "8", "--checkpointing_steps", "4", "--checkpoints_total_limit", "3",
              "--validation_steps", "100", "--model_overrides", json.dumps(overrides)]  # fmt: skip
    run_in_process([*common, "--output_dir", str(reference_dir)])
    shutil.copytree(reference_dir, resumed_dir)
    for folder in ("checkpoint-8", "final"):
        shutil.rmtree(resumed_dir / folder)
    run_in_process([*common, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", "latest"])

    expected, actual = losses_by_step(reference_dir), losses_by_step(resumed_dir)
    assert sorted(actual) == list(range(1, 9))
    assert [actual[step] for step in range(5, 9)] == [expected[step] for step in range(5, 9)]
    reference_weights = load_file(reference_dir / "final" / "model.safetensors")
    resumed_weights = load_file(resumed_dir / "final" / "model.safetensors")
    assert "decoder.dropped_token_embedding" in reference_weights
    assert all(torch.equal(reference_weights[name], resumed_weights[name]) for name in reference_weights)


def test_training_validation_logs_psnr_from_the_first_k_tokens(tmp_path, capsys):
    """With tail dropout, train.py's validation adds `psnr_k{k}` for each shorter length of `prefix_lengths`: the
    PSNR of the final weights from the first k tokens of the validation images (reported, and in the card)."""
    from hf_vitvq.training.data import embedded_streams
    from hf_vitvq.training.image_shards import validation_batches

    overrides = {"token_dropout": "tail", "tail_dropout_min_tokens": 8}
    run_in_process([*QUICK_RUN, "--max_train_steps", "2", "--checkpointing_steps", "100", "--validation_steps", "100",
                    "--model_overrides", json.dumps(overrides), "--output_dir", str(tmp_path / "tail")])  # fmt: skip
    printed = capsys.readouterr().out
    final = tmp_path / "tail" / "final"
    model, processor = ViTVQModel.from_pretrained(final).eval(), ViTVQImageProcessor.from_pretrained(final)
    validation = validation_batches(embedded_streams(32)[1], "image", processor, 8, 4)  # QUICK_RUN's 8, batches of 4
    assert prefix_lengths(model.config) == [8, 16, 32]
    for k in (8, 16):
        psnr = evaluate_reconstruction(model, validation, num_tokens=k)["psnr"]
        assert f"psnr_k{k} {psnr:.4g}" in printed and f"psnr_k{k} {psnr:.4g}" in (final / "README.md").read_text()
    assert "psnr_k32" not in printed  # all tokens: `psnr`


# ------------------------------------------------------------------------------------------------ benchmark


def test_benchmark_runs_and_writes_its_table_and_curve(photo_paths, tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "token_dropout.py"
    load_script(path.parent / "collapse_ablation.py", "collapse_ablation")  # the sibling it imports by name
    benchmark = load_script(path, "token_dropout_benchmark")
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in photo_paths[:4]:
        shutil.copy(path, photos)
    benchmark.main(["--photos", str(photos), "--validation_files", "1", "--variants", "plain", "tail U[1,32]",
                    "--max_train_steps", "2", "--output_json", str(tmp_path / "result.json"), "--plot",
                    str(tmp_path / "curve.png")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| plain, position-mean fill |" in printed and "| tail U[1,32] |" in printed
    results = json.loads((tmp_path / "result.json").read_text())["results"]
    assert set(results) == {"plain, codebook-mean fill", "plain, position-mean fill", "tail U[1,32]"}
    assert all(set(by_k) == {"1", "2", "4", "8", "16", "32"} for by_k in results.values())
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
