"""The `hf-vitvq` command line: encode / decode / reconstruct / info on a tiny saved model and real photos, token
files, and every bad input ending in a clear message and a non-zero exit code (never a traceback)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.cli import COMMANDS, main
from hf_vitvq.metrics import psnr
from hf_vitvq.token_files import load_token_file, png_names, save_token_file, token_metadata
from hf_vitvq.training.evaluation import reconstruction_sheet, token_caption

NUM_PHOTOS = 10


def save_tiny_model(folder: Path, seed: int = 0, **overrides) -> Path:
    """The `tiny` preset with seeded random weights, saved with its processor."""
    torch.manual_seed(seed)
    model = ViTVQModel(ViTVQConfig.from_preset("tiny", **overrides))
    model.save_pretrained(folder)
    ViTVQImageProcessor.for_config(model.config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", name="tiny_model_dir")
def tiny_model_dir_fixture(tmp_path_factory) -> Path:
    """Fixture `tiny_model_dir` (named so that other test modules import it without ruff's F811)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def photo_folder(tmp_path, photo_paths) -> Path:
    """NUM_PHOTOS real photos, half of them in a subfolder (folders are searched recursively)."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for index, path in enumerate(photo_paths[:NUM_PHOTOS]):
        shutil.copy(path, folder / ("more" if index % 2 else "") / path.name)
    return folder


def reference(
    model_dir: Path, files: list[Path], batch_size: int, num_tokens: int | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """What the Python API gives for `files`: ids of `model.encode(processor(images), num_tokens=num_tokens)` and the
    uint8 images of `postprocess(model.decode(ids))`, in batches of `batch_size`."""
    model, processor = ViTVQModel.from_pretrained(model_dir).eval(), ViTVQImageProcessor.from_pretrained(model_dir)
    ids, images = [], []
    for start in range(0, len(files), batch_size):
        batch = [Image.open(path).convert("RGB") for path in files[start : start + batch_size]]
        token_ids = model.encode(processor(batch, return_tensors="pt").pixel_values, num_tokens=num_tokens)
        ids.append(token_ids)
        images.append(processor.postprocess(model.decode(token_ids), output_type="np"))
    return torch.cat(ids), np.concatenate(images)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`main(argv)` in this process: (exit code, stdout, stderr)."""
    try:
        main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code: int, err: str, expected: str, command: str) -> None:
    assert code == 2, err
    assert f"hf-vitvq {command}: error:" in err and expected in err, err
    assert "Traceback" not in err


def test_help_lists_every_command_and_each_has_examples(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    names = [command.name for command in COMMANDS]
    expected = {"info", "encode", "decode", "reconstruct", "pretokenize", "eval", "card", "sample", "export-onnx"}
    assert expected <= set(names)
    assert all(name in out for name in names)
    for name in names:
        code, out, _ = run_cli([name, "--help"], capsys)
        assert code == 0 and "examples:" in out and f"hf-vitvq {name}" in out


@pytest.mark.parametrize("suffix", [".safetensors", ".parquet"])
def test_encode_then_decode_equals_model_decode_of_model_encode(tiny_model_dir, photo_folder, tmp_path, capsys, suffix):
    tokens = tmp_path / f"tokens{suffix}"
    code, out, err = run_cli(["encode", tiny_model_dir, photo_folder, "-o", tokens, "--batch_size", 4,
                              "--num_workers", 2], capsys)  # fmt: skip
    assert code == 0, err
    assert f"Encoded {NUM_PHOTOS} images into 32 tokens each" in out
    token_file = load_token_file(tokens)
    files = sorted(photo_folder.rglob("*.jpg"), key=str)
    assert token_file.names == [str(path) for path in files]  # the folder's files, sorted, recursively
    expected_ids, expected_images = reference(tiny_model_dir, files, batch_size=4)
    assert token_file.token_ids.dtype == torch.int32 and torch.equal(token_file.token_ids.long(), expected_ids)
    assert token_file.metadata["codebook_size"] == 1024 and token_file.metadata["token_shape"] == [32]

    code, out, err = run_cli(["decode", tiny_model_dir, tokens, "-o", tmp_path / "decoded", "--batch_size", 4], capsys)
    assert code == 0, err
    decoded = [tmp_path / "decoded" / path.relative_to(photo_folder).with_suffix(".png") for path in files]
    assert np.array_equal(np.stack([np.asarray(Image.open(path)) for path in decoded]), expected_images)


def test_residual_vq_ids_keep_their_levels_through_a_parquet_file(photo_paths, tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "rvq", quantizer_type="rvq", num_quantizers=2, use_l2_norm_codes=False)
    files = photo_paths[:3]
    code, _, err = run_cli(["encode", model_dir, *files, "-o", tmp_path / "t.parquet", "--num_workers", 0], capsys)
    assert code == 0, err
    token_file = load_token_file(tmp_path / "t.parquet")  # stored flat, 64 ids a row; read back as (3, 32, 2)
    expected_ids, expected_images = reference(model_dir, files, batch_size=32)
    assert expected_ids.shape == (3, 32, 2) and torch.equal(token_file.token_ids.long(), expected_ids)
    code, _, err = run_cli(["decode", model_dir, tmp_path / "t.parquet", "-o", tmp_path / "decoded"], capsys)
    assert code == 0, err
    decoded = [np.asarray(Image.open(tmp_path / "decoded" / f"{path.stem}.png")) for path in files]
    assert np.array_equal(np.stack(decoded), expected_images)


def test_encode_skips_and_lists_unreadable_files_and_fails_only_when_none_is_readable(
    tiny_model_dir, photo_folder, tmp_path, capsys
):
    (photo_folder / "broken.jpg").write_bytes(b"not a jpeg")
    (photo_folder / "more" / "empty.png").write_bytes(b"")
    code, _, err = run_cli(["encode", tiny_model_dir, photo_folder, "-o", tmp_path / "t.parquet"], capsys)
    assert code == 0, err
    assert f"Skipped 2 of {NUM_PHOTOS + 2} files" in err and "broken.jpg" in err and "empty.png" in err
    assert len(load_token_file(tmp_path / "t.parquet").names) == NUM_PHOTOS

    broken_only = tmp_path / "broken"
    broken_only.mkdir()
    (broken_only / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = run_cli(["encode", tiny_model_dir, broken_only, "-o", tmp_path / "none.parquet"], capsys)
    assert code == 1 and "none of the 1 files could be read as an image" in err and "Traceback" not in err
    assert not (tmp_path / "none.parquet").exists()


def test_inputs_mix_files_folders_and_globs_each_file_once(tiny_model_dir, photo_folder, tmp_path, capsys):
    first = sorted(photo_folder.glob("*.jpg"))[0]
    inputs = [first, photo_folder / "more", str(photo_folder / "**" / "*.jpg")]
    code, _, err = run_cli(["encode", tiny_model_dir, *inputs, "-o", tmp_path / "t.safetensors"], capsys)
    assert code == 0, err
    names = load_token_file(tmp_path / "t.safetensors").names
    assert len(names) == len(set(names)) == NUM_PHOTOS
    assert names[0] == str(first) and names[1].startswith(str(photo_folder / "more"))


def write_tokens(path: Path, config: ViTVQConfig, num_images: int = 2) -> Path:
    ids = torch.randint(0, config.codebook_size, (num_images, config.num_latent_tokens))
    save_token_file(path, [f"img{i}.jpg" for i in range(num_images)], ids, token_metadata(config, "other"))
    return path


def test_bad_inputs_give_one_clear_line_and_exit_code_2(tiny_model_dir, photo_folder, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    empty = tmp_path / "empty"
    empty.mkdir()
    tokens = tmp_path / "exists.parquet"
    tokens.write_bytes(b"")
    other_codebook = write_tokens(tmp_path / "k512.parquet", ViTVQConfig.from_preset("tiny", codebook_size=512))
    other_length = write_tokens(tmp_path / "l16.safetensors", ViTVQConfig.from_preset("tiny", num_latent_tokens=16))
    cases = [
        (["encode", missing, photo_folder, "-o", tmp_path / "a.parquet"], "does not exist"),
        (["encode", tiny_model_dir, tmp_path / "nothing-here", "-o", tmp_path / "a.parquet"], "no such file or folder"),
        (["encode", tiny_model_dir, str(tmp_path / "*.webp"), "-o", tmp_path / "a.parquet"], "matches no file"),
        (["encode", tiny_model_dir, empty, "-o", tmp_path / "a.parquet"], "holds no image files"),
        (["encode", tiny_model_dir, photo_folder, "-o", tokens], "exists; pass --overwrite"),
        (["encode", tiny_model_dir, photo_folder, "-o", tmp_path / "a.npy"], "must end in .safetensors or .parquet"),
        (["encode", "tiny", photo_folder, "-o", tmp_path / "a.parquet"], "is a preset"),
        (["decode", tiny_model_dir, other_codebook, "-o", tmp_path / "out"], "codebook_size 512 (the model: 1024)"),
        (["decode", tiny_model_dir, other_length, "-o", tmp_path / "out"], "num_latent_tokens 16 (the model: 32)"),
        (["decode", tiny_model_dir, tmp_path / "missing.parquet", "-o", tmp_path / "out"], "no such token file"),
        (["decode", tiny_model_dir, tokens, "-o", tmp_path / "out"], "is not a readable token file"),
        (["decode", missing, other_codebook, "-o", tmp_path / "out"], "does not exist"),
        (["decode", tiny_model_dir, other_codebook, "-o", photo_folder], "folder is not empty"),
        (["reconstruct", tiny_model_dir, photo_folder, "-o", photo_folder], "folder is not empty"),
        (["reconstruct", missing, photo_folder, "-o", tmp_path / "r"], "does not exist"),
        (["info", missing], "does not exist"),
        (["pretokenize", tiny_model_dir, "--train_data_dir", empty, "--output_dir", tmp_path / "p"], "no image files"),
        (["pretokenize", tiny_model_dir, "--output_dir", tmp_path / "p"], "either --dataset_name or --train_data_dir"),
        (["pretokenize", missing, "--train_data_dir", photo_folder, "--output_dir", tmp_path / "p"], "does not exist"),
        (["encode", tiny_model_dir, photo_folder, "-o", tmp_path / "a.parquet", "--batch_size", 0], "must be >= 1"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(argv, capsys)
        assert_clean_error(code, err, expected, argv[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "a.parquet").exists()


def test_decode_reports_ids_outside_the_codebook_of_a_foreign_token_file(tiny_model_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.array([[2000] * 32], pa.list_(pa.int32()))  # no metadata: only the ids tell
    pq.write_table(pa.table({"file": ["x.jpg"], "token_ids": ids}), tmp_path / "foreign.parquet")
    code, _, err = run_cli(["decode", tiny_model_dir, tmp_path / "foreign.parquet", "-o", tmp_path / "out"], capsys)
    assert_clean_error(code, err, "must lie in [0, 1024)", "decode")


def test_overwrite_replaces_an_existing_output(tiny_model_dir, photo_folder, tmp_path, capsys):
    tokens = tmp_path / "t.safetensors"
    tokens.write_bytes(b"old")
    code, _, err = run_cli(["encode", tiny_model_dir, photo_folder, "-o", tokens, "--overwrite"], capsys)
    assert code == 0, err
    assert len(load_token_file(tokens).names) == NUM_PHOTOS


def test_reconstruct_writes_pairs_and_a_psnr_ssim_table(tiny_model_dir, photo_folder, tmp_path, capsys):
    output = tmp_path / "reconstructions"
    code, out, err = run_cli(["reconstruct", tiny_model_dir, photo_folder, "-o", output, "--num_workers", 0], capsys)
    assert code == 0, err
    with open(output / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    files = sorted(photo_folder.rglob("*.jpg"), key=str)
    assert [row["file"] for row in rows] == [str(path) for path in files]
    for path, row in zip(files, rows, strict=True):
        pair = np.array(Image.open(output / "pairs" / path.relative_to(photo_folder).with_suffix(".png")))
        assert pair.shape == (64, 32, 3)  # the 32x32 crop above its reconstruction
        # (H, W, 3) uint8 -> (1, 3, H, W) in [0, 1]
        original, reconstruction = (torch.from_numpy(half).permute(2, 0, 1)[None] / 255 for half in np.split(pair, 2))
        assert float(row["psnr_db"]) == pytest.approx(psnr(reconstruction, original).item(), abs=1e-3)
        assert 0 < float(row["ssim"]) <= 1
    mean = np.mean([float(row["psnr_db"]) for row in rows])
    assert f"{NUM_PHOTOS} images: mean PSNR {mean:.2f} dB" in out
    # the first 8 pairs side by side, labelled and enlarged, captioned with what the tokens are
    halves = [np.split(np.array(Image.open(output / "pairs" / path.relative_to(photo_folder).with_suffix(".png"))), 2)
              for path in files[:8]]  # fmt: skip
    config = ViTVQConfig.from_pretrained(tiny_model_dir)
    originals, reconstructions = ([Image.fromarray(pair[side]) for pair in halves] for side in (0, 1))
    expected = reconstruction_sheet(originals, reconstructions, token_caption(config))
    overview = np.asarray(Image.open(output / "overview.png").convert("RGB"))
    assert overview.shape[0] > 128 and np.array_equal(overview, np.asarray(expected.image.convert("RGB")))


def test_reconstruct_runs_an_untrained_preset(photo_paths, tmp_path, capsys):
    code, out, err = run_cli(["reconstruct", "tiny", photo_paths[0], "-o", tmp_path / "r", "--num_workers", 0], capsys)
    assert code == 0, err
    assert "1 images: mean PSNR" in out and (tmp_path / "r" / "pairs" / f"{photo_paths[0].stem}.png").is_file()


def test_info_reports_bits_compression_and_parameters(tiny_model_dir, capsys):
    import json

    code, out, _ = run_cli(["info", tiny_model_dir, "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["bits_per_image"] == 320  # 32 tokens x log2(1024)
    assert summary["bits_per_pixel"] == 320 / 32**2
    assert summary["compression_ratio"] == pytest.approx(24 * 32**2 / 320)
    model = ViTVQModel.from_pretrained(tiny_model_dir)
    counts = summary["parameters"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["encoder"] + counts["decoder"] + counts["quantizer"] == counts["total"]
    assert counts["quantizer"] == 1024 * 12
    assert summary["quantizer"].startswith("vq: 1024 x 12 codes, l2-normalised (cosine), learned codebook")
    assert summary["min_num_tokens"] == 32  # no tail-token dropout: all tokens only

    code, out, _ = run_cli(["info", "S-128"], capsys)
    assert code == 0 and "bits per image    1536" in out and "1024x against 24-bit RGB" in out


def test_png_names_stay_inside_the_output_folder_and_never_collide():
    assert png_names(["/data/a/x.jpg", "/data/b/y.jpeg"]) == ["a/x.png", "b/y.png"]
    assert png_names(["../../etc/passwd", "/abs/x.jpg"]) == ["etc/passwd.png", "abs/x.png"]
    assert png_names(["d/x.jpg", "d/x.png", "d/y.jpg"]) == ["x-0.png", "x-1.png", "y.png"]
    assert png_names(["12", "13"]) == ["12.png", "13.png"]


def test_console_script_reports_a_missing_model_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("hf-vitvq")
    result = subprocess.run(
        [str(script), "encode", str(tmp_path / "missing"), str(tmp_path), "-o", str(tmp_path / "t.parquet")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert "hf-vitvq encode: error: The model folder" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_imports_neither_datasets_nor_the_evaluation_code():
    """`hf-vitvq --help` (and every command's `--help`) costs `import hf_vitvq` and no more: the commands import
    datasets, pyarrow, torchmetrics and hf_vitvq.training (where `eval` and `card` run) only when they run.
    (accelerate is not in the list: transformers imports it.)"""
    script = (
        "import sys\n"
        "from hf_vitvq.cli import COMMANDS, main\n"
        "for argv in [['--help'], *([command.name, '--help'] for command in COMMANDS)]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit_:\n"
        "        assert exit_.code == 0, argv\n"
        "heavy = ('datasets', 'pyarrow', 'torchmetrics', 'hf_vitvq.training')\n"
        "print('IMPORTED', sorted(name for name in sys.modules if name.startswith(heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "IMPORTED []"
    assert "hf-vitvq eval" in result.stdout and "hf-vitvq sample" in result.stdout


# ---------------------------------------------------------------------------------------------- --num_tokens


@pytest.fixture(scope="session", name="tail_model_dir")
def tail_model_dir_fixture(tmp_path_factory) -> Path:
    """The `tiny` preset trained (here: initialised) for tail-token dropout: the first 4 to 32 tokens decode."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tail", token_dropout="tail", tail_dropout_min_tokens=4)


@pytest.mark.parametrize("suffix", [".safetensors", ".parquet"])
def test_encode_and_decode_the_first_k_tokens(tail_model_dir, photo_paths, tmp_path, capsys, suffix):
    """`encode --num_tokens 8` writes `model.encode(x, num_tokens=8)` and says so in the file; `decode` of it gives
    `model.decode` of those ids; `decode --num_tokens 4` of a full file decodes its first 4 ids of each image."""
    files = photo_paths[:3]
    tokens = tmp_path / f"prefix{suffix}"
    code, out, err = run_cli(["encode", tail_model_dir, *files, "-o", tokens, "--num_tokens", 8, "--num_workers", 0],
                             capsys)  # fmt: skip
    assert code == 0, err
    assert "Encoded 3 images into 8 tokens each" in out
    token_file = load_token_file(tokens)
    expected_ids, expected_images = reference(tail_model_dir, files, batch_size=32, num_tokens=8)
    assert expected_ids.shape == (3, 8) and torch.equal(token_file.token_ids.long(), expected_ids)
    assert token_file.metadata["token_shape"] == [8] and token_file.metadata["num_latent_tokens"] == 32
    code, _, err = run_cli(["decode", tail_model_dir, tokens, "-o", tmp_path / "decoded"], capsys)
    assert code == 0, err
    decoded = np.stack([np.asarray(Image.open(tmp_path / "decoded" / f"{path.stem}.png")) for path in files])
    assert np.array_equal(decoded, expected_images)

    full = tmp_path / f"full{suffix}"
    code, _, err = run_cli(["encode", tail_model_dir, *files, "-o", full, "--num_workers", 0], capsys)
    assert code == 0, err
    code, _, err = run_cli(["decode", tail_model_dir, full, "-o", tmp_path / "first4", "--num_tokens", 4], capsys)
    assert code == 0, err
    _, expected_images = reference(tail_model_dir, files, batch_size=32, num_tokens=4)
    decoded = np.stack([np.asarray(Image.open(tmp_path / "first4" / f"{path.stem}.png")) for path in files])
    assert np.array_equal(decoded, expected_images)


def test_reconstruct_from_the_first_k_tokens(tail_model_dir, photo_paths, tmp_path, capsys):
    files = photo_paths[:3]
    output = tmp_path / "r"
    code, out, err = run_cli(["reconstruct", tail_model_dir, *files, "-o", output, "--num_tokens", 4,
                              "--num_workers", 0], capsys)  # fmt: skip
    assert code == 0, err
    assert "3 images from the first 4 tokens: mean PSNR" in out
    _, expected_images = reference(tail_model_dir, files, batch_size=32, num_tokens=4)
    bottoms = [np.split(np.asarray(Image.open(output / "pairs" / f"{path.stem}.png")), 2)[1] for path in files]
    assert np.array_equal(np.stack(bottoms), expected_images)


def test_prefixes_are_refused_where_the_model_decodes_all_tokens_only(
    tiny_model_dir, tail_model_dir, photo_paths, tmp_path, capsys
):
    """A model trained without tail-token dropout refuses `--num_tokens` below its token count and a token file of
    prefixes (the rule of `model.decode`); a tail-dropout model refuses prefixes shorter than it was trained on."""
    prefix_file = tmp_path / "prefix.parquet"
    code, _, err = run_cli(["encode", tail_model_dir, photo_paths[0], "-o", prefix_file, "--num_tokens", 8], capsys)
    assert code == 0, err
    no_tail = "the model was trained without tail-token dropout (token_dropout='none') and decodes all 32 tokens only"
    cases = [
        (["decode", tiny_model_dir, prefix_file, "-o", tmp_path / "out"], f"holds 8 tokens per image: {no_tail}"),
        (["encode", tiny_model_dir, photo_paths[0], "-o", tmp_path / "t.parquet", "--num_tokens", 8],
         f"--num_tokens 8: {no_tail}"),
        (["reconstruct", "tiny", photo_paths[0], "-o", tmp_path / "r", "--num_tokens", 16],
         f"--num_tokens 16: {no_tail}"),
        (["reconstruct", tail_model_dir, photo_paths[0], "-o", tmp_path / "r", "--num_tokens", 2],
         "--num_tokens 2: the model (token_dropout='tail') decodes the first k tokens for 4 <= k <= 32"),
        (["decode", tail_model_dir, prefix_file, "-o", tmp_path / "out", "--num_tokens", 16],
         f"--num_tokens 16: {prefix_file} holds 8 tokens per image"),
        (["encode", tail_model_dir, photo_paths[0], "-o", tmp_path / "t.parquet", "--num_tokens", 0], "must be >= 1"),
        (["eval", tiny_model_dir, "--num_tokens", 8, "--no_rfid"], f"--num_tokens 8: {no_tail}"),
        (["eval", tiny_model_dir, "--num_tokens_sweep", "4,32", "--no_rfid"], f"--num_tokens_sweep 4: {no_tail}"),
    ]  # fmt: skip
    for argv, expected in cases:
        code, _, err = run_cli(argv, capsys)
        assert_clean_error(code, err, expected, argv[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "t.parquet").exists()
    code, _, err = run_cli(["eval", tiny_model_dir, "--num_tokens_sweep", "4;8"], capsys)
    assert code == 2 and "expected auto, none, or numbers of tokens" in err  # argparse's usage error


# ---------------------------------------------------------------------------------------------- eval, card, sample


def test_eval_then_card_writes_the_results_per_number_of_tokens(tail_model_dir, photo_folder, tmp_path, capsys):
    """`hf-vitvq eval` of a tail-dropout model measures every prefix length of `prefix_lengths` by default (PSNR as
    `evaluate_reconstruction(..., num_tokens=k)` on the same crops), plots PSNR against k, and `hf-vitvq card` puts
    the per-k table into the card."""
    import json

    from hf_vitvq.training.evaluation import evaluate_reconstruction, prefix_lengths

    output = tmp_path / "eval"
    code, out, err = run_cli(["eval", tail_model_dir, "--train_data_dir", photo_folder, "--max_samples", 4,
                              "--no_rfid", "--dataloader_num_workers", 0, "--output_dir", output], capsys)  # fmt: skip
    assert code == 0, err
    results = json.loads((output / "eval_results.json").read_text())
    model = ViTVQModel.from_pretrained(tail_model_dir).eval()
    ks = prefix_lengths(model.config)
    assert ks == [4, 8, 16, 32] and list(results["by_num_tokens"]) == [str(k) for k in ks]
    processor = ViTVQImageProcessor.from_pretrained(tail_model_dir)
    files = sorted(photo_folder.rglob("*.jpg"), key=str)[:4]  # --train_data_dir: every image file, sorted by path
    pixel_values = processor([Image.open(path) for path in files], return_tensors="pt").pixel_values
    for k in ks:
        row = results["by_num_tokens"][str(k)]
        expected = evaluate_reconstruction(model, [pixel_values], num_tokens=k)
        assert row["psnr"] == pytest.approx(expected["psnr"], rel=1e-4, abs=1e-6), k
        assert row["ssim"] == pytest.approx(expected["ssim"], rel=1e-4, abs=1e-6), k
        assert row["tokens_per_image"] == k and row["bits_per_image"] == pytest.approx(k * 10)  # log2(1024) bits
    assert results["metrics"]["psnr"] == results["by_num_tokens"]["32"]["psnr"] and results["num_tokens"] is None
    plot = Image.open(output / "eval_by_num_tokens.png")
    assert plot.format == "PNG" and plot.size == (720, 440)
    row_8 = f"| 8 | 80 | {results['by_num_tokens']['8']['psnr']:.2f} | {results['by_num_tokens']['8']['ssim']:.4f} |"
    assert row_8 in (output / "eval_results.md").read_text() and row_8 in out

    card_path = tmp_path / "card" / "README.md"
    code, out, err = run_cli(["card", tail_model_dir, "--eval", output / "eval_results.json", "--output", card_path],
                             capsys)  # fmt: skip
    assert code == 0, err
    card = card_path.read_text()
    assert "| k tokens | bits per image | PSNR (dB) | SSIM |" in card and row_8 in card
    assert "| prefixes | tail-token dropout: the first k tokens decode, for any 4 <= k <= 32" in card


def test_eval_and_card_report_bad_input_in_one_line(tiny_model_dir, tmp_path, capsys):
    results = tmp_path / "not-results.json"
    results.write_text("{}")
    cases = [
        (["eval", tmp_path / "missing"], "does not exist"),
        (["eval", tiny_model_dir, "--dataset_name", "x/y", "--train_data_dir", tmp_path], "not both"),
        (["eval", tiny_model_dir, "--inception_weights", tmp_path / "none.pt"], "none.pt' does not exist"),
        (["card", tiny_model_dir, "--eval", tmp_path / "missing.json"], "missing.json: no such file"),
        (["card", tiny_model_dir, "--eval", results], "is not an hf-vitvq evaluation"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(argv, capsys)
        assert_clean_error(code, err, expected, argv[0])


def test_sample_writes_what_the_generation_pipeline_samples(tiny_model_dir, tmp_path, capsys):
    from hf_vitvq import ViTVQMaskGITConfig, ViTVQMaskGITModel
    from hf_vitvq.generation_pipeline import ViTVQGenerationPipeline

    torch.manual_seed(0)
    prior_config = ViTVQMaskGITConfig(codebook_size=1024, num_latent_tokens=32, num_classes=3, hidden_size=32,
                                      num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    ViTVQMaskGITModel(prior_config).save_pretrained(tmp_path / "prior")
    code, out, err = run_cli(["sample", tmp_path / "prior", tiny_model_dir, "-o", tmp_path / "out", "--class_labels",
                              0, 2, "--num_steps", 2, "--seed", 3], capsys)  # fmt: skip
    assert code == 0, err
    pipeline = ViTVQGenerationPipeline.from_pretrained(tmp_path / "prior", tiny_model_dir)
    expected = pipeline([0, 2], num_steps=2, generator=torch.Generator().manual_seed(3))
    for index, (label, image) in enumerate(zip([0, 2], expected, strict=True)):
        assert Image.open(tmp_path / "out" / f"sample_{index:03d}_class_{label}.png").tobytes() == image.tobytes()
    assert Image.open(tmp_path / "out" / "grid.png").size == (64, 32)

    other = ViTVQMaskGITConfig(codebook_size=512, num_latent_tokens=32, num_classes=3, hidden_size=32,
                               num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    ViTVQMaskGITModel(other).save_pretrained(tmp_path / "other")
    cases = [
        (["sample", tmp_path / "other", tiny_model_dir, "-o", tmp_path / "o"], "they were not trained together"),
        (["sample", tmp_path / "missing", tiny_model_dir, "-o", tmp_path / "o"], "missing"),
        (["sample", tmp_path / "prior", tiny_model_dir, "-o", tmp_path / "o", "--num_images", 0], "must be >= 1"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(argv, capsys)
        assert_clean_error(code, err, expected, argv[0])
