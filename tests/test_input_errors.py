"""Bad and unusual inputs to the library: non-finite or non-float32 pixels, empty batches, token ids of any integer
dtype, missing or broken model folders, misspelt config fields, and the codebook shape derived for fsq / lfq."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig, ViTVQModel


def make_model(seed: int = 0, **overrides) -> ViTVQModel:
    torch.manual_seed(seed)
    return ViTVQModel(ViTVQConfig(**tiny_config_kwargs(**overrides))).eval()


def pixels(config: ViTVQConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.num_channels, config.image_size, config.image_size, generator=generator) * 2 - 1


# ---------------------------------------------------------------------------------------------- pixel values


def test_nan_and_inf_pixels_are_rejected_naming_the_images():
    model = make_model()
    x = pixels(model.config, batch=4)
    x[1, 0, 3, 4] = float("nan")
    x[3, 2, 0, :3] = float("inf")
    message = r"4 NaN or infinite value\(s\) in image\(s\) \[1, 3\] of the batch of 4"
    with pytest.raises(ValueError, match=message):
        model.encode(x)
    with pytest.raises(ValueError, match=message):
        model(x)
    with pytest.raises(ValueError, match=message):
        model.train()(x)


def test_a_rejected_training_batch_leaves_the_codebook_statistics_as_they_were():
    model = make_model(dead_code_steps=2).train()
    model(pixels(model.config))
    state = {name: tensor.clone() for name, tensor in model.quantize.state_dict().items()}
    x = pixels(model.config)
    x[0, 0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match="infinite"):
        model(x)
    for name, tensor in model.quantize.state_dict().items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_pixels_of_other_float_dtypes_are_cast_to_the_model_dtype(dtype):
    model = make_model()
    x = pixels(model.config).to(dtype)
    as_float32 = x.float()  # the same values (bf16 / fp16 / fp64 -> fp32 rounds nothing in [-1, 1] here)
    assert torch.equal(model.encode(x), model.encode(as_float32))
    output, expected = model(x), model(as_float32)
    assert torch.equal(output.token_ids, expected.token_ids)
    assert output.reconstruction.dtype == torch.float32
    torch.testing.assert_close(output.reconstruction, expected.reconstruction, rtol=0, atol=0)


def test_float32_pixels_run_on_a_bfloat16_model():
    model = make_model().to(torch.bfloat16)
    x = pixels(model.config)
    assert torch.equal(model.encode(x), model.encode(x.to(torch.bfloat16)))
    assert model(x).reconstruction.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- empty batches

EMPTY_BATCH_VARIANTS = {
    "vq": ({}, (0, 7), torch.int64),
    "rvq": ({"quantizer_type": "rvq", "num_quantizers": 2, "use_l2_norm_codes": False}, (0, 7, 2), torch.int64),
    "fsq": (
        {"quantizer_type": "fsq", "fsq_levels": [5, 3, 3], "codebook_dim": 3, "codebook_size": 45},
        (0, 7),
        torch.int64,
    ),
    "kl": ({"quantizer_type": "kl"}, (0, 7, 5), torch.float32),
}


@pytest.mark.parametrize("variant", list(EMPTY_BATCH_VARIANTS))
def test_an_empty_batch_gives_empty_results(variant):
    overrides, codes_shape, codes_dtype = EMPTY_BATCH_VARIANTS[variant]
    model = make_model(**overrides)
    empty = pixels(model.config, batch=0)
    codes = model.encode(empty)
    assert codes.shape == codes_shape and codes.dtype == codes_dtype
    decoded = model.decode(codes)
    assert decoded.shape == (0, 3, 32, 32) and decoded.dtype == torch.float32
    output = model(empty)
    assert output.reconstruction.shape == (0, 3, 32, 32)
    assert output.quantized_latents.shape[:2] == (0, 7)
    if codes_dtype is not torch.float32:
        assert output.token_ids.shape == codes_shape and output.token_ids.dtype == torch.int64


def test_an_empty_training_batch_leaves_k_means_and_restarts_to_a_batch_with_latents():
    """k-means initialisation and dead-code restarts draw from the batch's latents: an empty batch (which crashed
    them) changes no code, and the first batch with latents runs them."""
    model = make_model(kmeans_init=True, dead_code_steps=1).train()
    codes = model.quantize.embedding.weight.clone()
    output = model(pixels(model.config, batch=0))
    assert output.token_ids.shape == (0, 7)
    assert torch.equal(model.quantize.embedding.weight, codes) and not bool(model.quantize.kmeans_done)
    model(pixels(model.config))
    assert bool(model.quantize.kmeans_done) and not torch.equal(model.quantize.embedding.weight, codes)
    model(pixels(model.config, batch=0))  # the restart after k-means: none to draw either


# ---------------------------------------------------------------------------------------------- token ids


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("variant", ["vq", "rvq", "fsq"])
def test_token_ids_of_any_integer_dtype_decode_like_int64(dtype, variant):
    overrides = {
        "vq": {"codebook_size": 1024},
        "rvq": {"quantizer_type": "rvq", "num_quantizers": 2, "use_l2_norm_codes": False, "codebook_size": 1024},
        "fsq": {"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5], "codebook_dim": None, "codebook_size": None},
    }[variant]
    model = make_model(**overrides)
    shape = (2, 7, 2) if variant == "rvq" else (2, 7)
    token_ids = torch.randint(0, 127, shape, generator=torch.Generator().manual_seed(0))
    expected = model.decode(token_ids)
    torch.testing.assert_close(model.decode(token_ids.to(dtype)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
def test_out_of_range_token_ids_are_reported_as_they_are(dtype):
    model = make_model(codebook_size=1024)
    token_ids = torch.full((2, 7), 5, dtype=dtype)
    token_ids[0, 3], token_ids[1, 0], token_ids[1, 1] = 1030, -3, -3
    with pytest.raises(ValueError, match=r"must lie in \[0, 1024\), got 3 id\(s\) outside it: \[-3, 1030\]"):
        model.decode(token_ids)


# ---------------------------------------------------------------------------------------------- ONNX decoder


@pytest.fixture(scope="module")
def onnx_sessions(tmp_path_factory):
    """`{variant: (model, encoder session, decoder session)}` for a vq and an fsq model (whose decoder computes codes
    from ids by arithmetic, with no lookup that could reject an id)."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX tests need the onnx extra: pip install '.[onnx]'")
    pytest.importorskip("onnxscript", reason="torch.onnx.export (dynamo) needs onnxscript: pip install '.[onnx]'")
    from hf_vitvq.onnx_export import export_onnx

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    sessions = {}
    for name, overrides in {"vq": {}, "fsq": EMPTY_BATCH_VARIANTS["fsq"][0]}.items():
        model = make_model(**overrides)
        paths = export_onnx(model, tmp_path_factory.mktemp(f"onnx_{name}"))
        encoder, decoder = (
            onnxruntime.InferenceSession(paths[graph], options, providers=["CPUExecutionProvider"])
            for graph in ("encoder", "decoder")
        )
        sessions[name] = (model, encoder, decoder)
    return sessions


@pytest.mark.parametrize("variant", ["vq", "fsq"])
def test_onnx_graphs_match_pytorch(onnx_sessions, variant):
    model, encoder, decoder = onnx_sessions[variant]
    x = pixels(model.config, batch=2)
    (token_ids,) = encoder.run(None, {"pixel_values": x.numpy()})
    assert torch.equal(torch.from_numpy(token_ids), model.encode(x))
    (decoded,) = decoder.run(None, {"token_ids": token_ids})
    torch.testing.assert_close(torch.from_numpy(decoded), model.decode(model.encode(x)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["vq", "fsq"])
@pytest.mark.parametrize("bad_id", [-1, "-codebook_size", "codebook_size", 10**6])
def test_onnx_decoder_rejects_ids_outside_the_codebook(onnx_sessions, variant, bad_id):
    model, _, decoder = onnx_sessions[variant]
    codebook_size = model.config.codebook_size
    token_ids = torch.zeros(2, 7, dtype=torch.int64)
    token_ids[1, 2] = {"-codebook_size": -codebook_size, "codebook_size": codebook_size}.get(bad_id, bad_id)
    # onnxruntime's GatherND (Gather) names the index the graph maps every bad id to: codebook_size
    with pytest.raises(Exception, match=rf"invalid index found, index = {codebook_size}\b|idx={codebook_size}\b"):
        decoder.run(None, {"token_ids": token_ids.numpy()})


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("load", ["model", "config"])
@pytest.mark.parametrize("path", ["absolute", "./missing-tokenizer", "runs/missing/final", "~/missing-tokenizer"])
def test_a_missing_local_folder_is_reported_as_missing(tmp_path, monkeypatch, load, path):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "missing") if path == "absolute" else path
    cls = ViTVQModel if load == "model" else ViTVQConfig
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{path}' does not exist")):
        cls.from_pretrained(path)


def test_a_hub_id_that_is_not_a_local_folder_still_goes_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="cached files") as raised:
        ViTVQModel.from_pretrained("some-org/some-tokenizer", local_files_only=True)
    assert "There is no local folder 'some-org/some-tokenizer' either" in str(raised.value)
    assert not isinstance(raised.value, FileNotFoundError)


def truncate(path: os.PathLike, size: int) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)


@pytest.fixture
def saved_model(tmp_path):
    folder = tmp_path / "model"
    make_model().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda path: truncate(path, 0), r"is empty or truncated: 0 bytes, too short for a safetensors header"),
        (lambda path: truncate(path, 200), r"is truncated: 200 bytes, its header alone takes \d+"),
        (lambda path: truncate(path, path.stat().st_size - 10), r"is truncated: \d+ bytes, its header describes \d+"),
        (lambda path: path.write_bytes(b"\x10" + b"\x00" * 7 + b"not json at all!"), r"is corrupt: its header"),
    ],
    ids=["empty", "in-header", "in-data", "garbage-header"],
)
@pytest.mark.parametrize("auto", [False, True])
def test_a_broken_safetensors_file_is_named(saved_model, damage, match, auto):
    from transformers import AutoModel

    weights = saved_model / "model.safetensors"
    damage(weights)
    cls = AutoModel if auto else ViTVQModel
    with pytest.raises(OSError, match=match) as raised:
        cls.from_pretrained(saved_model)
    assert str(weights) in str(raised.value)


# ---------------------------------------------------------------------------------------------- config fields


def test_from_preset_rejects_misspelt_fields_with_close_matches():
    with pytest.raises(ValueError, match=r"Unknown ViTVQConfig field 'codebok_size' \(did you mean 'codebook_size'"):
        ViTVQConfig.from_preset("tiny", codebok_size=512)
    with pytest.raises(
        ValueError, match=r"'frobnicate' \(no close match\)\. The ViTVQConfig fields are: .*'codebook_size'"
    ):
        ViTVQConfig.from_preset("tiny", frobnicate=1, codebook_size=512)


def test_check_field_names_accepts_every_field_and_names_every_unknown_one():
    ViTVQConfig.check_field_names(["codebook_size", "fsq_levels", "return_dict", "dtype"])
    with pytest.raises(ValueError, match=r"'num_latent_token' \(did you mean 'num_latent_tokens'.*'quantiser_type'"):
        ViTVQConfig.check_field_names({"num_latent_token": 16, "quantiser_type": "fsq"})


def test_the_constructor_still_accepts_what_from_pretrained_passes():
    config = ViTVQConfig(
        **tiny_config_kwargs(),
        torch_dtype="float32",
        architectures=["ViTVQModel"],
        auto_map={"AutoConfig": "configuration_vitvq.ViTVQConfig"},
        transformers_version="5.0.0",
        _name_or_path="somewhere",
        id2label={"0": "a"},
    )
    assert config.dtype == torch.float32 and config.architectures == ["ViTVQModel"]


# ---------------------------------------------------------------------------------------------- fsq / lfq shapes


@pytest.mark.parametrize(
    ("overrides", "codebook_dim", "codebook_size"),
    [
        ({"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5]}, 4, 1000),
        ({"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5], "codebook_dim": 4}, 4, 1000),
        ({"quantizer_type": "lfq", "codebook_dim": 10}, 10, 1024),
        ({"quantizer_type": "lfq", "codebook_size": 1024}, 10, 1024),
        ({"quantizer_type": "lfq"}, 12, 4096),
        ({"quantizer_type": "vq"}, 12, 4096),
        ({"quantizer_type": "vq", "codebook_size": 100}, 12, 100),
    ],
)
def test_fsq_and_lfq_derive_the_codebook_shape_they_imply(overrides, codebook_dim, codebook_size):
    config = ViTVQConfig(**overrides)
    assert (config.codebook_dim, config.codebook_size) == (codebook_dim, codebook_size)


def test_a_preset_switched_to_fsq_or_lfq_derives_its_codebook_shape():
    fsq = ViTVQConfig.from_preset("tiny", quantizer_type="fsq", fsq_levels=[8, 5, 5, 5])
    assert (fsq.codebook_dim, fsq.codebook_size, fsq.num_latent_tokens) == (4, 1000, 32)
    lfq = ViTVQConfig.from_preset("tiny", quantizer_type="lfq", codebook_dim=10)
    assert (lfq.codebook_dim, lfq.codebook_size) == (10, 1024)
    assert ViTVQConfig.from_preset("tiny", codebook_dim=8).codebook_size == 1024  # vq keeps the preset's codebook


def test_overrides_of_a_saved_config_rederive_the_scalar_quantizers_shape(tmp_path):
    ViTVQConfig(quantizer_type="lfq", codebook_dim=10).save_pretrained(tmp_path)
    saved, _ = ViTVQConfig.get_config_dict(tmp_path)
    assert (saved["codebook_dim"], saved["codebook_size"]) == (10, 1024)
    assert ViTVQConfig.from_base(saved, codebook_dim=8).codebook_size == 256
    assert ViTVQConfig.from_base(saved, codebook_size=64).codebook_dim == 6
    fsq = ViTVQConfig.from_base(saved, quantizer_type="fsq", fsq_levels=[5, 5, 5])
    assert (fsq.codebook_dim, fsq.codebook_size) == (3, 125)
    assert ViTVQConfig.from_base(saved, commitment_cost=0.5).to_dict() == {
        **ViTVQConfig(**saved).to_dict(),
        "commitment_cost": 0.5,
    }
    with pytest.raises(ValueError, match=r"'codebok_dim' \(did you mean 'codebook_dim'"):
        ViTVQConfig.from_base(saved, codebok_dim=8)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5], "codebook_size": 999}, "codebook_size=1000"),
        ({"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5], "codebook_dim": 3}, "codebook_dim=4"),
        ({"quantizer_type": "fsq"}, "`fsq_levels` must be a non-empty list"),
        ({"quantizer_type": "lfq", "codebook_dim": 4, "codebook_size": 32}, "codebook_dim=4 gives codebook_size=16"),
        ({"quantizer_type": "lfq", "codebook_size": 1000}, "1000 is not a power of two"),
        ({"fsq_levels": [8, 5, 5, 5]}, "`fsq_levels` only applies to quantizer_type 'fsq'"),
    ],
)
def test_only_contradictions_that_were_written_are_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        ViTVQConfig(**overrides)


def test_derived_configs_save_reload_equal_and_older_configs_still_load(tmp_path):
    config = ViTVQConfig.from_preset("tiny", quantizer_type="fsq", fsq_levels=[8, 5, 5, 5])
    config.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert (saved["codebook_dim"], saved["codebook_size"]) == (4, 1000)
    reloaded = ViTVQConfig.from_pretrained(tmp_path / "new")
    assert {**reloaded.to_dict(), "_name_or_path": ""} == config.to_dict()
    # what an older version wrote: both sizes spelled out
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({**saved, "transformers_version": "5.0.0"}))
    old = ViTVQConfig.from_pretrained(tmp_path / "old")
    assert (old.codebook_dim, old.codebook_size, old.fsq_levels) == (4, 1000, [8, 5, 5, 5])
    model = ViTVQModel(old).eval()
    assert int(model.encode(pixels(old)).max()) < 1000
