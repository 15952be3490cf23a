"""Converting the published TiTok checkpoints (`hf_vitvq.convert_titok`): exactness, loading, CLI and errors.

Exactness is checked against fixtures made once with the OFFICIAL implementation (github.com/bytedance/1d-tokenizer,
commit 942a96f) and committed in `tests/fixtures/titok/` (its README.md has every detail); no official code is in
this repository. How they were made:

- The official code ran from a scratch copy with its own virtualenv, patched only to add two test ViT sizes to its
  size tables (`tiny` = width 32 / 2 layers / 4 heads, `mini` = 64 / 3 / 4) and to read the MaskGIT-VQGAN pixel
  decoder's sizes from optional `model.vq_model.pixel_*` config keys (official values as defaults).
- Three models at 32x32 pixels, patch 8: `titok_tiny_legacy_vq` (two-stage like TiTok-L-32/B-64/S-128:
  `is_legacy`, l2-normalised 64 x 12 codebook, MaskGIT-VQGAN head with 64 codes, channel_mult [2, 1, 1, 1] so that
  one block has a shortcut conv), `titok_tiny_vq` (single-stage like the VQ-8k models: encoder `tiny`, decoder
  `mini`, Euclidean 128 x 16 codebook) and `titok_tiny_vae` (continuous tokens, 16 channels).
- Random weights from the official constructor (seeded), then perturbed so that no LayerNorm is the identity and the
  latent tokens clearly depend on the image; saved by the official `save_pretrained` (nested `config.json` and
  `model.safetensors`), or with `torch.save` as `pytorch_model.bin` for the VAE.
- Inputs: two real photos from `../shared/data/photos` (short side resized to 32 with PIL bicubic, centre crop,
  RGB / 255); outputs in `reference.safetensors`: encoder output, token ids, quantized latents, decoder logits,
  posterior moments, and the decoded images (unclamped, far outside [0, 1] with random weights).

The shapes of the nine released models are checked too, by their key and parameter counts, taken from the official
code's state dicts at their published configs.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_remote_code import load_without_the_package
from transformers import AutoImageProcessor, AutoModel

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.convert_titok import config_from_titok, convert_titok, titok_key_map

FIXTURES = Path(__file__).parent / "fixtures" / "titok"
LEGACY, SINGLE_STAGE, VAE = "titok_tiny_legacy_vq", "titok_tiny_vq", "titok_tiny_vae"
# The fixtures' test-only ViT sizes: (width, layers, heads).
TEST_SIZES = {"tiny": (32, 2, 4), "mini": (64, 3, 4)}
FIXTURE_PHOTOS = ("sun80_abbey_sun_asztnlqhlrvirneh.jpg", "sun80_beach_sun_bgtlposotyokcsdg.jpg")
# Float outputs must agree within FLOAT32_TOLERANCE, token ids exactly. Derivation: float32 rounds every operation to
# a relative u = 2^-24 ~ 6e-8; a sum of K products is off by about sqrt(K) * u * sum|terms|, and the ~20 matmuls,
# convolutions and norms in a row add their errors, amplified by the LayerNorms and the perturbed weights. Running the
# official models in float64 (next to exact) shows how far float32 lands: up to 4.2e-5 = 9.5e-6 * max|value| (values
# reach 8.7, rms 1-3). CPUs that sum in another order (AVX-512 vs AVX2 kernels, other blocking) are each that close
# to the exact result, so two float32 results may differ by twice that. atol = rtol = 1e-4 covers twice each element's
# float64 deviation 1.7 times over: the relative part scales with the large values, the absolute floor covers values
# near zero, whose error is set by the size of the terms they sum, not by their own. Measured against the fixtures
# (made on Intel AVX-512): 0.18 of the tolerance on AMD EPYC AVX-512 (up to 2.4e-5), 0.16 with ATen, MKL and oneDNN held
# to AVX2 (`ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2`: the AMD AVX2 machine's
# four failures, 1.05e-5 to 1.43e-5 against atol=1e-5), 0.25 with SSE4 kernels or MKL_CBWR=COMPATIBLE (up to 4e-5).
# Still tight: GELU's tanh approximation, or LayerNorm eps 1e-6 instead of 1e-5, exceed it 1.9 to 10 times.
# Token ids are robust: the nearest code leads by >= 0.026 in squared distance; float32 moves distances by < 1e-4.
FLOAT32_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, **FLOAT32_TOLERANCE)


@functools.cache
def converted(name: str) -> ViTVQModel:
    return convert_titok(FIXTURES / name, extra_model_sizes=TEST_SIZES)[0]


def reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / name / "reference.safetensors")


def as_tokens(official: torch.Tensor) -> torch.Tensor:
    """Official (B, C, 1, N) latents -> our (B, N, C)."""
    return official.squeeze(2).transpose(1, 2)


def titok_config(enc: str, dec: str, tokens: int, quantize_mode: str = "vq", **vq_fields) -> dict:
    """A released TiTok config.json (configs/infer/TiTok/*.yaml), patch 16, 256x256."""
    vq = {
        "vit_enc_model_size": enc,
        "vit_dec_model_size": dec,
        "vit_enc_patch_size": 16,
        "vit_dec_patch_size": 16,
        "num_latent_tokens": tokens,
        **vq_fields,
    }
    if quantize_mode != "vq":
        vq["quantize_mode"] = quantize_mode
    return {"model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": 256}}}


_TWO_STAGE = {"token_size": 12, "codebook_size": 4096, "use_l2_norm": True, "commitment_cost": 0.25}
_VQ_8K = {"token_size": 64, "codebook_size": 8192, "use_l2_norm": False, "commitment_cost": 0.25,
          "is_legacy": False, "finetune_decoder": False}  # fmt: skip
_VAE = {"token_size": 16, "is_legacy": False, "finetune_decoder": False}
# name: (config.json, number of tensors, number of parameters) of the official state dict.
RELEASED = {
    "titok_l32": (titok_config("large", "large", 32, **_TWO_STAGE), 692, 641_054_735),
    "titok_b64": (titok_config("base", "base", 64, **_TWO_STAGE), 404, 204_814_095),
    "titok_s128": (titok_config("small", "small", 128, **_TWO_STAGE), 308, 83_674_639),
    "titok_bl64_vq8k": (titok_config("base", "large", 64, **_VQ_8K), 459, 390_016_148),
    "titok_bl128_vq8k": (titok_config("base", "large", 128, **_VQ_8K), 459, 390_179_988),
    "titok_sl256_vq8k": (titok_config("small", "large", 256, **_VQ_8K), 411, 330_260_884),
    "titok_ll32_vae_c16": (titok_config("large", "large", 32, "vae", **_VAE), 602, 606_879_604),
    "titok_bl64_vae_c16": (titok_config("base", "large", 64, "vae", **_VAE), 458, 389_418_100),
    "titok_bl128_vae_c16": (titok_config("base", "large", 128, "vae", **_VAE), 458, 389_581_940),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_configs_give_the_official_tensor_and_parameter_counts(name):
    titok, num_tensors, num_parameters = RELEASED[name]
    config = config_from_titok(titok)
    two_stage = name in ("titok_l32", "titok_b64", "titok_s128")
    assert config.legacy_latent_layout is two_stage
    assert config.decoder_head == ("maskgit_vqgan" if two_stage else "pixels")
    assert config.quantizer_type == ("kl" if "vae" in name else "vq")
    assert config.pixel_value_range == [0.0, 1.0]
    with torch.device("meta"):
        model = ViTVQModel(config)
    assert len(titok_key_map(model)) == num_tensors
    assert sum(param.numel() for param in model.parameters()) == num_parameters


def test_maskgit_vqgan_decoder_has_the_released_shapes():
    """Spot checks against the official TiTok-S-128 state dict (channel_mult [1, 1, 2, 2, 4] on 128 channels)."""
    official_shapes = {
        "decoder.ffn.0.weight": (1024, 512, 1, 1),
        "decoder.ffn.2.weight": (1024, 1024, 1, 1),
        "pixel_quantize.embedding.weight": (1024, 256),
        "pixel_decoder.conv_in.weight": (512, 256, 3, 3),
        "pixel_decoder.mid.0.conv1.weight": (512, 512, 3, 3),
        "pixel_decoder.up.0.block.0.conv1.weight": (128, 128, 3, 3),
        "pixel_decoder.up.1.block.0.conv1.weight": (128, 256, 3, 3),
        "pixel_decoder.up.1.block.0.nin_shortcut.weight": (128, 128, 1, 1),
        "pixel_decoder.up.1.upsample_conv.weight": (128, 128, 3, 3),
        "pixel_decoder.up.3.block.0.conv1.weight": (256, 512, 3, 3),
        "pixel_decoder.up.4.upsample_conv.bias": (512,),
        "pixel_decoder.norm_out.weight": (128,),
        "pixel_decoder.conv_out.weight": (3, 128, 3, 3),
    }
    with torch.device("meta"):
        model = ViTVQModel(config_from_titok(RELEASED["titok_s128"][0]))
    ours = {theirs: dict(model.named_parameters())[name].shape for name, theirs in titok_key_map(model).items()}
    for key, shape in official_shapes.items():
        linear = key.startswith("decoder.ffn")  # the head's 1x1 convs are linear layers here
        assert tuple(ours[key]) == (shape[:2] if linear else shape), key
    assert "pixel_decoder.up.2.block.0.nin_shortcut.weight" not in ours  # same width in and out: identity shortcut


@pytest.mark.parametrize("name", [LEGACY, SINGLE_STAGE])
def test_vq_conversion_reproduces_the_official_outputs(name):
    model, ref = converted(name), reference(name)
    pixel_values = ref["pixel_values"]
    with torch.no_grad():
        assert_float32_close(model.encoder(pixel_values), as_tokens(ref["encoder_output"]))
        token_ids = model.encode(pixel_values)
        assert torch.equal(token_ids, ref["token_ids"].squeeze(1))
        # a lookup (of normalised codes if l2); the official z + (q - z) is within an ulp of it: default tolerance
        torch.testing.assert_close(model.quantize.indices_to_codes(token_ids), as_tokens(ref["z_quantized"]))
        assert_float32_close(model.decode(token_ids), ref["decoded"])
        # forward() decodes the straight-through latents z + (q - z), which round differently from q: close, not exact
        assert_float32_close(model(pixel_values).reconstruction, ref["decoded"])


def test_two_stage_head_reproduces_the_official_code_logits():
    model, ref = converted(LEGACY), reference(LEGACY)
    assert model.config.legacy_latent_layout and model.config.decoder_head == "maskgit_vqgan"
    logits = []
    model.decoder.maskgit_head.fc2.register_forward_hook(lambda module, args, output: logits.append(output))
    model.decode(ref["token_ids"].squeeze(1))
    grid = model.config.grid_size
    # official (B, K, grid, grid) -> ours (B, grid^2, K)
    expected = ref["decoder_logits"].flatten(2).transpose(1, 2)
    assert expected.shape[1] == grid**2
    assert_float32_close(logits[0], expected)


def test_the_legacy_layout_flag_matters():
    """Without the reshape quirk the same weights give other latents: the flag is what makes the tokens exact."""
    model, ref = converted(LEGACY), reference(LEGACY)
    model.encoder.legacy_latent_layout = False
    try:
        latents = model.encoder(ref["pixel_values"])
    finally:
        model.encoder.legacy_latent_layout = True
    assert (latents - as_tokens(ref["encoder_output"])).abs().max() > 0.1


def test_vae_conversion_reproduces_the_official_posterior_and_decoding():
    model, ref = converted(VAE), reference(VAE)
    assert model.config.quantizer_type == "kl" and model.config.codebook_dim == 16
    pixel_values = ref["pixel_values"]
    moments = model.encoder(pixel_values)  # (B, N, 2 * 16): mean, then log-variance
    assert_float32_close(moments, as_tokens(ref["encoder_output"]))
    posterior_mean = as_tokens(ref["posterior_mean"])
    assert_float32_close(model.encode(pixel_values), posterior_mean)  # the posterior mean at inference
    # Decode the official latents, as the VQ tests decode the (exact) official ids: our own latents' rounding would
    # pass through the decoder, which amplifies it 3 to 5 times.
    assert_float32_close(model.decode(posterior_mean), ref["decoded"])


def test_processor_of_a_converted_model_reproduces_the_official_inputs(photo_paths, tmp_path):
    """The fixtures' inputs are TiTok's preprocessing of two photos; the converted folder's processor gives them
    bit for bit, and postprocess maps the [0, 1] reconstructions back to 8-bit images."""
    by_name = {path.name: path for path in photo_paths}
    if not all(name in by_name for name in FIXTURE_PHOTOS):
        pytest.skip("the fixtures' photos are not in ../shared/data/photos")
    from PIL import Image

    convert_titok(FIXTURES / SINGLE_STAGE, tmp_path, extra_model_sizes=TEST_SIZES)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, ViTVQImageProcessor) and not processor.do_normalize
    images = [Image.open(by_name[name]) for name in FIXTURE_PHOTOS]
    pixel_values = processor(images, return_tensors="pt").pixel_values
    assert torch.equal(pixel_values, reference(SINGLE_STAGE)["pixel_values"])
    restored = processor.postprocess(pixel_values, output_type="pt")
    assert torch.equal(restored.float() / 255, pixel_values)


@pytest.mark.parametrize("name", [LEGACY, SINGLE_STAGE, VAE])
def test_converted_folder_loads_with_auto_classes_and_without_the_package(name, tmp_path):
    folder = tmp_path / "converted"
    model = convert_titok(FIXTURES / name, folder, extra_model_sizes=TEST_SIZES)[0]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        path.name for path in folder.iterdir()
    }
    assert (folder / "modeling_maskgit_vqgan.py").is_file()  # imported by modeling_vitvq.py, so copied with it
    card = (folder / "README.md").read_text()
    assert "license: apache-2.0" in card and "bytedance/1d-tokenizer" in card and "2406.07550" in card

    pixel_values = reference(name)["pixel_values"]
    loaded = AutoModel.from_pretrained(folder).eval()
    assert isinstance(loaded, ViTVQModel)
    assert loaded.config.to_dict() == {**model.config.to_dict(), "_name_or_path": str(folder)}
    codes = model.encode(pixel_values)
    assert torch.equal(loaded.encode(pixel_values), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))

    remote = load_without_the_package(folder, pixel_values, tmp_path)
    assert torch.equal(remote["token_ids"], codes)
    assert torch.equal(remote["decoded"], model.decode(codes))


def test_command_line_converts_a_weights_file(tmp_path):
    output = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_vitvq.convert_titok",
            "--checkpoint",
            str(FIXTURES / SINGLE_STAGE / "model.safetensors"),
            "--output",
            str(output),
            "--extra_model_size",
            "tiny=32,2,4",
            "--extra_model_size",
            "mini=64,3,4",
        ],  # fmt: skip
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 tokens" in result.stdout
    config = ViTVQConfig.from_pretrained(output)
    assert (config.encoder_hidden_size, config.decoder_hidden_size, config.codebook_size) == (32, 64, 128)
    assert json.loads((output / "preprocessor_config.json").read_text())["do_normalize"] is False


def test_command_line_rejects_a_malformed_model_size(capsys):
    from hf_vitvq.convert_titok import main

    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--output", "y", "--extra_model_size", "tiny=32,2"])
    assert "NAME=WIDTH,LAYERS,HEADS" in capsys.readouterr().err


def copy_fixture(name: str, folder: Path, edit_config=None, edit_weights=None) -> Path:
    """A copy of a fixture checkpoint in `folder`, with its config.json and/or weights edited in place."""
    folder.mkdir()
    config = json.loads((FIXTURES / name / "config.json").read_text())
    weights = load_file(FIXTURES / name / "model.safetensors")
    if edit_config:
        edit_config(config)
    if edit_weights:
        edit_weights(weights)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, folder / "model.safetensors")
    return folder


def _vq(config: dict) -> dict:
    return config["model"]["vq_model"]


@pytest.mark.parametrize(
    ("edit_config", "edit_weights", "error", "match"),
    [
        (lambda c: c.pop("dataset"), None, ValueError, r"`config\.json\.dataset` is missing"),
        (lambda c: _vq(c).pop("token_size"), None, ValueError, r"`model\.vq_model\.token_size` is missing"),
        (lambda c: _vq(c).update(vit_dec_model_size="huge"), None, ValueError, "Unknown TiTok decoder model size"),
        (lambda c: _vq(c).update(vit_dec_patch_size=16), None, ValueError, "patch sizes differ"),
        (lambda c: _vq(c).update(quantize_mode="fsq"), None, ValueError, "Unsupported TiTok quantize_mode"),
        (lambda c: _vq(c).update(finetune_decoder=True), None, ValueError, "is_legacy=False with finetune_decoder"),
        (lambda c: _vq(c).update(num_latent_tokens=10), None, ValueError, r"'latent_tokens' has shape \(12, 32\)"),
        (None, lambda w: w.pop("decoder.conv_out.bias"), ValueError, r"missing keys \['decoder\.conv_out\.bias'\]"),
        (None, lambda w: w.update(extra=torch.zeros(1)), ValueError, r"unexpected keys \['extra'\]"),
        (None, lambda w: w.update(latent_tokens=torch.zeros(12, 33)), ValueError, r"'latent_tokens' has shape"),
    ],
)
def test_bad_checkpoints_get_clear_errors(tmp_path, edit_config, edit_weights, error, match):
    folder = copy_fixture(SINGLE_STAGE, tmp_path / "checkpoint", edit_config, edit_weights)
    with pytest.raises(error, match=match):
        convert_titok(folder, extra_model_sizes=TEST_SIZES)


def test_missing_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_titok(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No weights"):
        convert_titok(tmp_path)
    weights = tmp_path / "model.safetensors"
    save_file({"latent_tokens": torch.zeros(1)}, weights)
    with pytest.raises(FileNotFoundError, match="No config.json"):
        convert_titok(weights)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="Not an official TiTok config"):
        convert_titok(weights)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"decoder_head": "conv"}, "`decoder_head` must be one of"),
        ({"decoder_head": "maskgit_vqgan", "maskgit_channel_mult": [1, 2]}, "must equal `patch_size` \\(8\\)"),
        ({"decoder_head": "maskgit_vqgan", "maskgit_channel_mult": [1, 1, 1, 1], "maskgit_hidden_channels": 48},
         "divisible by 32"),
        ({"pixel_value_range": (1.0, 0.0)}, "low < high"),
    ],
)  # fmt: skip
def test_config_rejects_inconsistent_decoder_heads(overrides, match):
    with pytest.raises(ValueError, match=match):
        ViTVQConfig.from_preset("tiny", **overrides)
