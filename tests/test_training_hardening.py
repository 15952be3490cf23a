"""training/: checkpoint checksums and fallback, warm-up and validation defaults, the default codebook recipe and the
usage warning, bounded decode failures and distinct skip counts, and the training log after a resume."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import PIL.Image
import pytest
from test_training_parts import make_image_folder
from training_utils import QUICK_RUN, losses_by_step, run_in_process

from hf_vitvq import ViTVQImageProcessor, ViTVQModel
from hf_vitvq.training import checkpointing
from hf_vitvq.training.arguments import parse_args
from hf_vitvq.training.data import (
    TrainingImageStream,
    default_validation_images,
    image_folder_stream,
    image_folder_streams,
)
from hf_vitvq.training.evaluation import evaluate_reconstruction
from hf_vitvq.training.image_shards import cores_per_process
from hf_vitvq.training.image_shards import validation_batches as make_validation_batches
from hf_vitvq.training.trainer_utils import build_config

# QUICK_RUN without its --validation_images, for the runs that check the default
_AT = QUICK_RUN.index("--validation_images")
QUICK_RUN_DEFAULT_VALIDATION = QUICK_RUN[:_AT] + QUICK_RUN[_AT + 2 :]

# ---------------------------------------------------------------------------------------------- checkpoint checksums


def make_checkpoint_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (folder / "sub" / "state.json").write_text('{"step": 3}')
    return folder


def test_the_manifest_names_the_missing_truncated_or_altered_file(tmp_path):
    folder = make_checkpoint_folder(tmp_path / "checkpoint-3")
    checkpointing.write_manifest(folder)
    manifest = json.loads((folder / checkpointing.MANIFEST_NAME).read_text())["files"]
    assert set(manifest) == {"model.safetensors", "sub/state.json"}
    assert manifest["model.safetensors"]["size"] == 10240
    checkpointing.verify_checkpoint(folder)  # intact: no error

    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:4000])  # truncated
    with pytest.raises(checkpointing.CheckpointError, match="model.safetensors: 4000 bytes, the manifest says 10240"):
        checkpointing.verify_checkpoint(folder)
    weights.write_bytes(original[:5000] + bytes(400) + original[5400:])  # zeroed inside: same size
    with pytest.raises(checkpointing.CheckpointError, match="model.safetensors: sha256 differs from the manifest"):
        checkpointing.verify_checkpoint(folder)
    weights.write_bytes(original)
    (folder / "sub" / "state.json").unlink()
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoint-3 is damaged: sub/state.json: missing"):
        checkpointing.verify_checkpoint(folder)
    with pytest.raises(checkpointing.CheckpointError, match="checkpoint-9 does not exist"):
        checkpointing.verify_checkpoint(tmp_path / "checkpoint-9")

    older = make_checkpoint_folder(tmp_path / "checkpoint-1")  # written before manifests: nothing to check against
    assert checkpointing.manifest_mismatches(older) is None
    assert checkpointing.latest_intact_checkpoint(tmp_path) == (
        older,
        {folder: f"Checkpoint {folder} is damaged: sub/state.json: missing."},
    )


def damage(path: Path) -> None:
    """Zero 4 kB in the middle of a file, keeping its size (what a bad disk or copy does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def test_resume_checks_checksums_falls_back_from_a_damaged_latest_and_truncates_the_log(tmp_path, caplog):
    """A run to step 6 (checkpoints 2, 4, 6); checkpoint-6's weights damaged: `latest` resumes from checkpoint-4
    with a warning naming the damaged file, and the log keeps one entry per step; a named damaged checkpoint, a
    missing one, and a truncated one are errors naming what is wrong; a checkpoint without a manifest loads, with
    a warning."""
    caplog.set_level(logging.INFO)
    output_dir = tmp_path / "run"
    common = [*QUICK_RUN, "--output_dir", str(output_dir), "--checkpointing_steps", "2", "--validation_steps", "100"]
    run_in_process([*common, "--max_train_steps", "6"])
    for step in (2, 4, 6):
        checkpoint = output_dir / f"checkpoint-{step}"
        assert {"model.safetensors", "optimizer.bin", "data_state_rank0.json", "random_states_0.pkl"} <= set(
            json.loads((checkpoint / checkpointing.MANIFEST_NAME).read_text())["files"]
        )
    damage(output_dir / "checkpoint-6" / "model.safetensors")

    caplog.clear()
    run_in_process([*common, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"])
    assert f"Checkpoint {output_dir / 'checkpoint-6'} is damaged: model.safetensors: sha256 differs" in caplog.text
    assert f"Resumed from {output_dir / 'checkpoint-4'} at step 4" in caplog.text
    steps = [json.loads(line)["step"] for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 of the first run dropped, not logged twice

    damage(output_dir / "checkpoint-2" / "optimizer.bin")
    resume_from = [*common, "--max_train_steps", "6", "--resume_from_checkpoint"]
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoint-2 is damaged: optimizer.bin: sha256"):
        run_in_process([*resume_from, str(output_dir / "checkpoint-2")])
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoint-3 does not exist"):
        run_in_process([*resume_from, str(output_dir / "checkpoint-3")])
    only_damaged = tmp_path / "only_damaged"  # `latest` never starts from scratch over damaged checkpoints
    shutil.copytree(output_dir / "checkpoint-2", only_damaged / "checkpoint-2")
    with pytest.raises(checkpointing.CheckpointError, match="latest: no intact checkpoint in .*only_damaged"):
        run_in_process([*common, "--output_dir", str(only_damaged), "--max_train_steps", "6",
                        "--resume_from_checkpoint", "latest"])  # fmt: skip

    # written by older code: no manifest. Intact, it loads with a warning; truncated, the error names the folder.
    checkpoint = output_dir / "checkpoint-6"  # re-saved, intact, by the resumed run
    (checkpoint / checkpointing.MANIFEST_NAME).unlink()
    caplog.clear()
    run_in_process([*common, "--max_train_steps", "7", "--resume_from_checkpoint", str(checkpoint)])
    assert "has no checksums.json" in caplog.text and f"Resumed from {checkpoint} at step 6" in caplog.text
    checkpoint = output_dir / "checkpoint-4"
    (checkpoint / checkpointing.MANIFEST_NAME).unlink()
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(checkpointing.CheckpointError, match=f"Could not load checkpoint {checkpoint}"):
        run_in_process([*common, "--max_train_steps", "7", "--resume_from_checkpoint", str(checkpoint)])


def test_dropping_later_log_entries_also_drops_a_half_written_line(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in (1, 2, 3, 4)) + '{"st')
    assert checkpointing.drop_log_entries_after(log, 2) == 3
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    assert checkpointing.drop_log_entries_after(log, 2) == 0
    assert checkpointing.drop_log_entries_after(tmp_path / "absent.jsonl", 2) == 0


# ---------------------------------------------------------------------------------------------- argument defaults


def test_the_default_warm_up_is_a_tenth_of_the_run_and_a_longer_one_warns(caplog):
    assert [parse_args(["--max_train_steps", str(steps)])[2].lr_warmup_steps for steps in (40, 1000, 100_000)] == [
        4,
        100,
        500,
    ]
    assert "never reaches" not in caplog.text
    with caplog.at_level(logging.WARNING):
        _, _, args = parse_args(["--max_train_steps", "40", "--lr_warmup_steps", "500"])
    assert args.lr_warmup_steps == 500
    assert "--lr_warmup_steps 500 >= --max_train_steps 40: the learning rate never reaches" in caplog.text


def test_the_help_describes_the_new_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for text in ("Default: 10% of --max_train_steps, at most 500", "Default: 32, or 10% of a --train_data_dir's",
                 "--codebook_recipe CODEBOOK_RECIPE", "--max_consecutive_decode_failures",
                 "--codebook_usage_warning"):  # fmt: skip
        assert text in help_text


def test_bad_learning_rate_and_data_folder_are_caught_at_parsing(tmp_path):
    for learning_rate in ("0", "-1e-3"):
        with pytest.raises(ValueError, match=f"--learning_rate must be > 0, got {float(learning_rate)}"):
            parse_args([f"--learning_rate={learning_rate}"])
    with pytest.raises(ValueError, match=r"--train_data_dir .*absent: no such folder"):
        parse_args(["--train_data_dir", str(tmp_path / "absent")])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"--train_data_dir .*empty: the folder holds no image files"):
        parse_args(["--train_data_dir", str(tmp_path / "empty")])
    make_image_folder(tmp_path / "empty" / "sub", 1)  # found in a subfolder
    parse_args(["--train_data_dir", str(tmp_path / "empty")])


def test_small_folders_hold_out_a_tenth_of_their_files_by_default(tmp_path):
    assert [default_validation_images(n) for n in (None, 2, 10, 100, 1000)] == [32, 1, 1, 10, 32]
    folder = make_image_folder(tmp_path / "images", 10)
    _, validation, count = image_folder_streams(folder)
    assert count == 1 and [example["name"] for example in validation] == ["img000.png"]
    with pytest.raises(ValueError, match="has 1 image files; at least one must be held out"):
        image_folder_streams(make_image_folder(tmp_path / "one", 1))


def test_the_readme_folder_command_trains_on_a_folder_of_ten_images(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    folder = make_image_folder(tmp_path / "images", 10)
    run_in_process([*QUICK_RUN_DEFAULT_VALIDATION, "--train_data_dir", str(folder), "--output_dir",
                    str(tmp_path / "run"), "--max_train_steps", "2", "--checkpointing_steps", "100"])  # fmt: skip
    assert "; 1 validation images" in caplog.text
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_on_a_cpu_the_model_trains_on_the_cores_its_dataloader_workers_leave(tmp_path, caplog, monkeypatch):
    """Without OMP_NUM_THREADS, a CPU run with one worker trains on the other cores (at least one thread), says so,
    and gives torch its thread count back; OMP_NUM_THREADS (which `accelerate launch` sets) wins."""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(before := max(2, cores_per_process()))  # more than the cores a worker leaves
    caplog.set_level(logging.INFO)
    common = [*QUICK_RUN, "--max_train_steps", "1", "--validation_steps", "1", "--dataloader_num_workers", "1"]
    run_in_process([*common, "--output_dir", str(tmp_path / "run")])
    assert f"1 DataLoader worker(s) per process, the model on {max(1, cores_per_process() - 1)} CPU thread(s)" in (
        caplog.text
    )
    assert torch.get_num_threads() == before
    caplog.clear()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    run_in_process([*common, "--output_dir", str(tmp_path / "omp")])
    assert f"the model on {before} CPU thread(s)" in caplog.text


# ---------------------------------------------------------------------------------------------- codebook recipe


def test_the_codebook_recipe_sets_the_quantizer_of_vq_presets_under_the_overrides(tmp_path):
    def config(*argv: str):
        model_args, data_args, _ = parse_args(list(argv))
        return build_config(model_args, data_args.resolution)

    default, titok = config("--model_config", "tiny"), config("--model_config", "tiny", "--codebook_recipe", "preset")
    assert (default.use_l2_norm_codes, default.use_ema_codebook, default.dead_code_steps, default.use_rotation_trick) \
        == (False, True, 50, True)  # fmt: skip
    assert (titok.use_l2_norm_codes, titok.use_ema_codebook, titok.dead_code_steps, titok.use_rotation_trick) == (
        True,
        False,
        0,
        False,
    )
    overridden = config("--model_overrides", '{"use_l2_norm_codes": true, "dead_code_steps": 7}')
    assert (overridden.use_l2_norm_codes, overridden.use_ema_codebook, overridden.dead_code_steps) == (True, True, 7)
    fsq = config("--model_overrides", '{"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5], "codebook_dim": 4, '
                 '"codebook_size": 1000}')  # fmt: skip
    simvq = config("--model_overrides", '{"use_simvq": true}')
    assert not (fsq.use_ema_codebook or simvq.use_ema_codebook or simvq.dead_code_steps)
    titok.save_pretrained(tmp_path / "config")  # a config JSON is used as it is
    assert config("--model_config", str(tmp_path / "config" / "config.json")).use_l2_norm_codes is True
    with pytest.raises(ValueError, match="--codebook_recipe must be one of"):
        parse_args(["--codebook_recipe", "l2"])


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory, photo_paths) -> Path:
    """The shared photos resized to a 64-pixel short side (fast to decode; the crops are 32x32 anyway)."""
    folder = tmp_path_factory.mktemp("small_photos")
    for path in photo_paths:
        image = PIL.Image.open(path).convert("RGB")
        scale = 64 / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image.resize(size, PIL.Image.Resampling.BICUBIC).save(folder / f"{path.stem}.png")
    return folder


def test_the_default_recipe_keeps_the_codebook_alive_where_the_preset_collapses_and_warns(tmp_path, small_photos,
                                                                                          caplog):  # fmt: skip
    """150 steps of the tiny preset on photos, from scratch, with each recipe. Measured on the 18 held-out photos
    (seeds 0 and 1, AMD EPYC): `ema_restart` 14.02 dB with 29-38% of the codes in use, 100% over the training window;
    `preset` (TiTok's l2 codebook) 13.29-13.30 dB with 32 codes (3.1%), the collapse the warning reports (once, at
    step 100, when the usage window is full)."""
    caplog.set_level(logging.WARNING)
    processor = ViTVQImageProcessor.for_image_size(32)
    _, validation, count = image_folder_streams(small_photos)
    batches = make_validation_batches(validation, "image", processor, limit=count, batch_size=16)
    metrics, warnings = {}, {}
    for recipe in ("ema_restart", "preset"):
        output_dir = tmp_path / recipe
        caplog.clear()
        run_in_process([*QUICK_RUN_DEFAULT_VALIDATION, "--train_data_dir", str(small_photos), "--output_dir",
                        str(output_dir), "--codebook_recipe", recipe, "--max_train_steps", "150",
                        "--train_batch_size", "8", "--logging_steps", "10", "--validation_steps", "150",
                        "--checkpointing_steps", "1000"])  # fmt: skip
        metrics[recipe] = evaluate_reconstruction(ViTVQModel.from_pretrained(output_dir / "final"), batches)
        metrics[recipe]["window_usage"] = losses_by_step(output_dir, "codebook_usage")[150]
        warnings[recipe] = caplog.text.count("the codebook is collapsing")
    assert metrics["ema_restart"]["psnr"] > metrics["preset"]["psnr"] + 0.4, metrics  # 0.72-0.73 dB measured
    assert metrics["ema_restart"]["codebook_usage"] > 0.15 > 0.06 > metrics["preset"]["codebook_usage"], metrics
    assert metrics["ema_restart"]["window_usage"] > 0.9 > 0.1 > metrics["preset"]["window_usage"], metrics
    assert warnings == {"ema_restart": 0, "preset": 1}  # checked at steps 100, 110, ..., 150: warned once


# ---------------------------------------------------------------------------------------------- undecodable samples


def first_batch_within(stream: TrainingImageStream, seconds: float) -> object:
    """The first batch of `stream`, or the error it raised; fails the test if it takes longer than `seconds` (a
    stream of undecodable samples used to loop forever): the stream runs in a daemon thread."""
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(next(stream.batches(4)))
        except Exception as error:  # handed to the test
            outcome.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"no batch and no error after {seconds} s"
    return outcome[0]


def make_stream(folder: Path, **kwargs) -> TrainingImageStream:
    return TrainingImageStream(image_folder_stream(folder), "image", (-1.0, 1.0), 8, seed=0,
                               shuffle_buffer_size=0, **kwargs)  # fmt: skip


def test_a_stream_of_undecodable_samples_stops_with_an_error_naming_them(tmp_path):
    folder = make_image_folder(tmp_path / "images", 0, bad=True)
    error = first_batch_within(make_stream(folder, max_consecutive_failures=10), seconds=60)
    assert isinstance(error, ValueError), error
    assert "10 training samples in a row could not be decoded on process 0 (e.g. 0_empty.jpg, " in str(error)
    assert "--max_consecutive_decode_failures" in str(error)
    # decodable samples between the failures reset the count
    make_image_folder(folder, 1)
    assert first_batch_within(make_stream(folder, max_consecutive_failures=4), seconds=60).names == ["img000.png"] * 4


def test_skipped_samples_are_counted_and_named_once_however_many_epochs_meet_them(tmp_path, caplog):
    folder = make_image_folder(tmp_path / "images", 4, bad=True)
    batches = make_stream(folder).batches(4)
    with caplog.at_level(logging.WARNING, logger="hf_vitvq.training.data"):
        last = [next(batches) for _ in range(6)][-1]  # 24 images: 6 epochs of 4 images and 3 bad files
    assert last.position["epoch"] == 5 and last.position["skipped_examples"] == 3  # epochs 0 to 5
    assert caplog.text.count("Skipped an undecodable sample") == 3


def test_the_skip_report_counts_the_distinct_files_a_worker_met(tmp_path, caplog):
    """Two training steps on 7 files whose 3 bad ones come after the first batch (unshuffled, one DataLoader worker):
    the second batch meets them, and the training process's report counts and names them."""
    caplog.set_level(logging.WARNING)
    folder = make_image_folder(tmp_path / "images", 8, bad=True, bad_prefix="z_")  # img000 is held out
    run_in_process([*QUICK_RUN, "--train_data_dir", str(folder), "--output_dir", str(tmp_path / "run"),
                    "--validation_images", "1", "--max_train_steps", "2", "--shuffle_buffer_size", "0",
                    "--dataloader_num_workers", "1", "--checkpointing_steps", "100"])  # fmt: skip
    assert "Skipped 3 distinct undecodable training samples in all (e.g. on this process: z_empty.jpg" in caplog.text


def test_training_on_undecodable_files_stops(tmp_path):
    folder = make_image_folder(tmp_path / "images", 1, bad=True, bad_prefix="z_")  # img000 is held out
    with pytest.raises(ValueError, match=r"5 training samples in a row could not be decoded.*z_empty.jpg"):
        run_in_process([*QUICK_RUN, "--train_data_dir", str(folder), "--output_dir", str(tmp_path / "run"),
                        "--validation_images", "1", "--max_train_steps", "2",
                        "--max_consecutive_decode_failures", "5"])  # fmt: skip


def test_a_misspelt_model_override_is_an_error_naming_the_close_match(tmp_path):
    # at parsing, before any data is read
    with pytest.raises(ValueError, match=r"--model_overrides: .*'codebok_size' \(did you mean 'codebook_size'"):
        parse_args(["--model_overrides", '{"codebok_size": 512}'])
    # a config JSON with overrides: the typo must not be written into the trained model's config
    saved = tmp_path / "config"
    ViTVQModel.config_class.from_preset("tiny").save_pretrained(saved)
    model_args, _, _ = parse_args(["--model_config", str(saved / "config.json"), "--model_overrides", "{}"])
    model_args.model_overrides = '{"codebok_size": 512}'  # past the parser's check: build_config checks again
    with pytest.raises(ValueError, match="did you mean 'codebook_size'"):
        build_config(model_args, resolution=None)
    model_args.model_overrides = '{"codebook_size": 512}'
    assert build_config(model_args, resolution=None).codebook_size == 512
