"""Model cards (hf_vitvq.model_card): metadata that round-trips through huggingface_hub offline, model-index from
an eval_results.json, the same kind of card from conversion and training, `hf-vitvq card`, and a writer that works
from the installed package alone."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, tiny_config_kwargs
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import metadata_load

from hf_vitvq import ViTVQConfig, ViTVQModel
from hf_vitvq.cli import add_card_arguments
from hf_vitvq.convert_titok import convert_titok
from hf_vitvq.model_card import (
    EVAL_SECTION_BEGIN,
    check_eval_results,
    eval_results_to_model_index,
    hub_dataset_id,
    model_card,
    read_eval_results,
)
from hf_vitvq.training.arguments import DataArguments, TokenizerTrainingArguments
from hf_vitvq.training.evaluate_tokenizer import card_command
from hf_vitvq.training.model_card import write_model_card

TITOK_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "titok" / "titok_tiny_vq"
TITOK_TEST_SIZES = {"tiny": (32, 2, 4), "mini": (64, 3, 4)}
RESULTS = {
    "model": "outputs/demo/final",
    "dataset": {"name": "ILSVRC/imagenet-1k", "type": "ILSVRC/imagenet-1k", "config": None, "split": "validation"},
    "num_images": 50000,
    "skipped_images": 0,
    "resolution": 256,
    "metrics": {
        "rfid": 2.21,
        "inception_score": 195.5,
        "psnr": 15.61,
        "ssim": 0.412,
        "lpips": None,
        "codebook_usage": 0.875,
        "perplexity": 3012.4,
        "tokens_per_image": 32,
        "bits_per_image": 384.0,
        "bits_per_pixel": 0.005859375,
        "images_per_second": 812.0,
    },  # fmt: skip
    "skipped_metrics": {"lpips": "no VGG16 weights"},
    "settings": {"inception_weights": "/cache/inception-2015-12-05.pt", "num_processes": 8, "device": "cuda"},
}
SECTIONS = ["Model", "How to use", "Intended use", "Limitations", "Training", "Evaluation", "Configuration",
            "Citation"]  # fmt: skip


def headings(card_text: str) -> list[str]:
    return [line[3:] for line in card_text.splitlines() if line.startswith("## ")]


def test_model_index_from_eval_results_json(tmp_path):
    path = tmp_path / "eval_results.json"
    path.write_text(json.dumps(RESULTS))
    entries = eval_results_to_model_index(read_eval_results(path))
    # results only (no throughput, no compression numbers), no metric that was not measured (lpips: None)
    assert [(entry.metric_type, entry.metric_name, entry.metric_value) for entry in entries] == [
        ("fid", "rFID", 2.21),
        ("inception_score", "Inception Score of the reconstructions", 195.5),
        ("psnr", "PSNR", 15.61),
        ("ssim", "SSIM", 0.412),
        ("codebook_usage", "codebook usage", 0.875),
        ("perplexity", "code perplexity", 3012.4),
    ]
    assert {(entry.task_type, entry.dataset_type, entry.dataset_name, entry.dataset_split) for entry in entries} == {
        ("image-to-image", "ILSVRC/imagenet-1k", "ILSVRC/imagenet-1k", "validation")
    }
    broken = {key: value for key, value in RESULTS.items() if key != "resolution"}
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="missing resolution"):
        read_eval_results(path)
    with pytest.raises(ValueError, match=r"dataset\.name and dataset\.type"):
        check_eval_results({**RESULTS, "dataset": {"name": "x"}})


def test_card_metadata_round_trips_offline(tmp_path, tiny_config):
    card = model_card(tiny_config, "org/tiny", "A test tokenizer.", datasets=["org/photos"], eval_results=RESULTS)
    path = tmp_path / "README.md"
    card.save(path)
    metadata = metadata_load(path)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-feature-extraction"
    assert metadata["license"] == "apache-2.0" and metadata["datasets"] == ["org/photos"]
    assert {"image-tokenizer", "hf-vitvq"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["name"] == "tiny"
    data = ModelCardData(**metadata)  # the Hub's parser of model-index: raises on a malformed one
    assert data.eval_results == eval_results_to_model_index(RESULTS)
    loaded = ModelCard.load(path)
    assert loaded.data.to_dict() == card.data.to_dict() and loaded.text == card.text
    assert headings(loaded.text) == SECTIONS
    assert "| rFID (lower is better) | 2.21 |" in loaded.text and "Not measured: lpips" in loaded.text
    assert 'AutoModel.from_pretrained("org/tiny", trust_remote_code=True)' in loaded.text
    assert "| compression | 674x smaller than 24-bit RGB pixels |" in loaded.text  # 32*32*24 / (7 log2 37)


def test_converter_and_training_write_the_same_kind_of_card(tmp_path, tiny_config):
    converted = tmp_path / "converted"
    convert_titok(TITOK_FIXTURE, converted, extra_model_sizes=TITOK_TEST_SIZES)
    trained = tmp_path / "run" / "final"
    ViTVQModel(tiny_config).save_pretrained(trained)
    training_args = TokenizerTrainingArguments(output_dir=str(tmp_path / "run"), use_ema=True)
    data_args = DataArguments(dataset_name="org/photos")
    write_model_card(trained, tiny_config, training_args, data_args, 4, {"psnr": 20.5}, num_processes=2)

    cards = {name: ModelCard.load(folder / "README.md") for name, folder in (("converted", converted),
                                                                             ("trained", trained))}  # fmt: skip
    for card in cards.values():
        assert headings(card.text) == SECTIONS
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
        assert EVAL_SECTION_BEGIN in card.text and card.data.eval_results is None  # not evaluated yet
    converted_card, trained_card = cards["converted"], cards["trained"]
    assert converted_card.data.datasets == ["ILSVRC/imagenet-1k"] and converted_card.data.license == "apache-2.0"
    assert "bytedance/1d-tokenizer" in converted_card.text and "titok_tiny_vq/config.json" in converted_card.text
    assert f'AutoModel.from_pretrained("{converted}")' in converted_card.text
    assert trained_card.data.datasets == ["org/photos"]
    assert "| steps | 4 |" in trained_card.text and "| images per step | 16 |" in trained_card.text  # 8 x 2
    assert "| weights | exponential moving average |" in trained_card.text and "psnr 20.5" in trained_card.text


def test_card_command_adds_results_to_the_card_and_replaces_them(tmp_path, tiny_config):
    folder = tmp_path / "run" / "final"
    ViTVQModel(tiny_config).save_pretrained(folder)
    write_model_card(folder, tiny_config, TokenizerTrainingArguments(output_dir=str(tmp_path / "run")),
                     DataArguments(), 4, {}, num_processes=1)  # fmt: skip
    results_path = tmp_path / "eval_results.json"
    results_path.write_text(json.dumps(RESULTS))
    parser = add_card_arguments(argparse.ArgumentParser())
    written = card_command(parser.parse_args([str(tmp_path / "run"), "--eval", str(results_path)]))
    assert written == folder / "README.md"  # the run folder's final/ model
    card = ModelCard.load(written)
    assert card.data.eval_results == eval_results_to_model_index(RESULTS)
    assert card.data.model_name == "run"  # the card's title (the run), not the folder's name (final)
    assert "| steps | 4 |" in card.text and "| PSNR (dB) | 15.61 |" in card.text  # the training part is kept
    assert headings(card.text) == SECTIONS

    results_path.write_text(json.dumps({**RESULTS, "metrics": {"psnr": 17.25}}))
    card = ModelCard.load(card_command(parser.parse_args([str(folder), "--eval", str(results_path)])))
    assert headings(card.text) == SECTIONS and "| PSNR (dB) | 17.25 |" in card.text and "15.61" not in card.text
    assert [entry.metric_value for entry in card.data.eval_results] == [17.25]

    bare = tmp_path / "bare"  # no card yet: one is written from the configuration
    ViTVQModel(tiny_config).save_pretrained(bare)
    output = tmp_path / "cards" / "bare.md"
    card_command(parser.parse_args([str(bare), "--eval", str(results_path), "--output", str(output)]))
    card = ModelCard.load(output)
    assert headings(card.text) == SECTIONS and card.data.eval_results == [
        EvalResult("image-to-image", "ILSVRC/imagenet-1k", "ILSVRC/imagenet-1k", "psnr", 17.25,
                   task_name="Image reconstruction", dataset_split="validation", metric_name="PSNR")
    ]  # fmt: skip
    assert not (bare / "README.md").exists()


def test_hub_dataset_ids_only_in_the_metadata(tmp_path, monkeypatch):
    assert hub_dataset_id("ILSVRC/imagenet-1k") == "ILSVRC/imagenet-1k"
    for name in (None, "imagefolder", "parquet", "./data/photos", "/data/photos", "a/b/c"):
        assert hub_dataset_id(name) is None, name
    (tmp_path / "local" / "photos").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_dataset_id("local/photos") is None  # an existing folder, not a Hub id


def test_the_writer_needs_nothing_outside_the_package(tmp_path):
    """As from a wheel: a copy of the package alone, away from the repository, writes a training card (the old writer
    read its template from the repository's model_cards/)."""
    shutil.copytree(REPO_ROOT / "hf_vitvq", tmp_path / "hf_vitvq", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "from pathlib import Path\n"
        "import hf_vitvq\n"
        "from hf_vitvq.training.arguments import DataArguments, TokenizerTrainingArguments\n"
        "from hf_vitvq.training.model_card import write_model_card\n"
        "config = hf_vitvq.ViTVQConfig(**" + repr(tiny_config_kwargs()) + ")\n"
        "path = write_model_card(Path('.'), config, TokenizerTrainingArguments(), DataArguments(), 4, {}, 1)\n"
        "print(hf_vitvq.__file__)\n"
        "print(path.read_text().count('\\n## '))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    package_file, summary = result.stdout.splitlines()
    assert package_file == str(tmp_path / "hf_vitvq" / "__init__.py")  # the copy, not the repository's
    assert summary == str(len(SECTIONS))


def test_results_per_number_of_tokens_go_into_the_card_as_a_table(tmp_path):
    """A tail-dropout model's card shows which prefixes decode, and its results per number of tokens as a table
    (rows by k ascending, a dash where a metric was not measured at that k); model-index keeps the main metrics."""
    config = ViTVQConfig(**tiny_config_kwargs(token_dropout="tail", tail_dropout_min_tokens=2))
    by_num_tokens = {
        "7": {"bits_per_image": 36.47, "psnr": 15.61, "ssim": 0.412, "rfid": 2.21},
        "2": {"bits_per_image": 10.42, "psnr": 12.5, "ssim": 0.2, "rfid": None},
    }
    results = {**RESULTS, "by_num_tokens": by_num_tokens}
    card = model_card(config, "org/tiny", "A test tokenizer.", eval_results=results)
    lines = card.text.splitlines()
    header = lines.index("| k tokens | bits per image | PSNR (dB) | SSIM | rFID (lower is better) |")
    assert lines[header + 1 : header + 4] == ["|---|---|---|---|---|", "| 2 | 10 | 12.50 | 0.2000 | – |",
                                              "| 7 | 36 | 15.61 | 0.4120 | 2.21 |"]  # fmt: skip
    prefixes = "| prefixes | tail-token dropout: the first k tokens decode, for any 2 <= k <= 7 (coarse for small k) |"
    assert prefixes in lines
    assert card.data.eval_results == eval_results_to_model_index(RESULTS)
    assert "| k tokens |" not in model_card(config, "org/tiny", "A test tokenizer.", eval_results=RESULTS).text
    with pytest.raises(ValueError, match=r"by_num_tokens \(number of tokens -> metrics\)"):
        check_eval_results({**RESULTS, "by_num_tokens": {"all": {"psnr": 1.0}}})


def test_the_card_and_hf_vitvq_info_state_the_same_facts(tiny_config):
    """One function per fact: the card's parameters, quantizer and compression rows are `hf-vitvq info`'s numbers."""
    from hf_vitvq.cli import model_summary

    summary = model_summary(tiny_config, "tiny")
    text = model_card(tiny_config, "org/tiny", "A test tokenizer.").text
    assert f"| parameters | {summary['parameters']['total'] / 1e6:.2f} M |" in text
    assert f"| quantizer | {summary['quantizer']} |" in text
    assert summary["quantizer"] == (
        "vq: 37 x 5 codes, l2-normalised (cosine), learned codebook, straight-through gradients, commitment 0.25"
    )
    bits, bits_per_pixel = summary["bits_per_image"], summary["bits_per_pixel"]
    assert f"| bits per image | {bits:g} ({bits_per_pixel:.4f} bits per pixel) |" in text
    assert f"| compression | {summary['compression_ratio']:,.0f}x smaller than 24-bit RGB pixels |" in text
