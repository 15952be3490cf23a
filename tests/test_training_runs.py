"""training/train.py end to end: learning, exact resume after kill -9, NaN stop, Hub push, bad samples."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
from fake_hub import fake_hub_fixture  # noqa: F401
from safetensors.torch import load_file
from test_training_parts import make_image_folder
from training_utils import QUICK_RUN, checkpoint_names_in_repo, interrupt_and_resume, losses_by_step, run_in_process

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.training import checkpointing
from hf_vitvq.training.data import embedded_streams
from hf_vitvq.training.evaluation import evaluate_reconstruction
from hf_vitvq.training.image_shards import validation_batches
from hf_vitvq.training.trainer_utils import NonFiniteLossError

# The demo's codebook recipe (training/configs/demo.yaml) with restarts after 2 idle steps: state in the quantizer.
DEMO_CODEBOOK = {"use_l2_norm_codes": False, "use_ema_codebook": True, "dead_code_steps": 2, "use_rotation_trick": True}


def test_short_training_improves_reconstruction(tmp_path):
    """300 steps on the embedded photos: the loss falls and held-out PSNR rises clearly above an untrained model."""
    output_dir = tmp_path / "run"
    run_in_process([*QUICK_RUN, "--output_dir", str(output_dir), "--max_train_steps", "300",
                    "--train_batch_size", "8", "--validation_steps", "300", "--checkpointing_steps", "1000",
                    "--random_crop_scale_min", "0.02", "--random_crop_scale_max", "0.25"])  # fmt: skip
    reconstruction_losses = list(losses_by_step(output_dir, "l2_loss").values())
    assert sum(reconstruction_losses[-50:]) / 50 < 0.9 * sum(reconstruction_losses[:10]) / 10

    processor = ViTVQImageProcessor.for_image_size(32)
    _, validation = embedded_streams(32)
    batches = validation_batches(validation, "image", processor, limit=48, batch_size=16)
    trained = ViTVQModel.from_pretrained(output_dir / "final")
    torch.manual_seed(0)
    untrained = ViTVQModel(ViTVQConfig.from_preset("tiny"))
    gain = evaluate_reconstruction(trained, batches)["psnr"] - evaluate_reconstruction(untrained, batches)["psnr"]
    assert gain > 1.0, f"validation PSNR rose by only {gain:.2f} dB"
    assert (output_dir / "final" / "reconstructions.png").is_file()
    assert (output_dir / "validation" / "step-0000300.png").is_file()


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_crash_and_resume_gives_the_uninterrupted_run(tmp_path, num_workers):
    """kill -9 after a checkpoint, leave a half-written checkpoint behind, resume `latest`: every later loss and the
    final (EMA) weights equal those of an uninterrupted run with the same seed, bit for bit (same machine, same
    thread count, deterministic CPU kernels). With the demo's codebook recipe: an EMA codebook whose dead codes are
    re-seeded, state that must resume too. Batches read in the training process, or by 2 DataLoader workers (each
    resuming its own part of the stream)."""
    common = [*QUICK_RUN, "--max_train_steps", "40", "--checkpointing_steps", "10", "--checkpoints_total_limit", "2",
              "--validation_steps", "1000", "--use_ema", "--ema_decay", "0.9", "--dataloader_num_workers", num_workers,
              "--model_overrides", json.dumps(DEMO_CODEBOOK)]  # fmt: skip
    half_written = checkpointing.incomplete_dir(tmp_path / "crashed", 39)

    def half_write(crashed_dir: Path) -> None:
        """A checkpoint caught mid-write (no rename yet) must never be picked up as `latest`."""
        half_written.mkdir()
        (half_written / "model.safetensors").write_bytes(b"partial")

    run = interrupt_and_resume(common, tmp_path, kill_after_checkpoint=10, before_resume=half_write)
    reference_dir, crashed_dir, resumed_from = run.reference_dir, run.resumed_dir, run.resumed_from
    assert resumed_from.name != half_written.name
    assert not half_written.exists()

    expected, actual = losses_by_step(reference_dir), losses_by_step(crashed_dir)
    start = checkpointing.checkpoint_step(resumed_from)
    assert [actual[step] for step in range(start + 1, 41)] == [expected[step] for step in range(start + 1, 41)]
    for folder in ("final", "final_raw"):
        reference_weights = load_file(reference_dir / folder / "model.safetensors")
        resumed_weights = load_file(crashed_dir / folder / "model.safetensors")
        assert all(torch.equal(reference_weights[name], resumed_weights[name]) for name in reference_weights), folder
    assert {p.name for p in checkpointing.checkpoint_dirs(crashed_dir)} == {"checkpoint-30", "checkpoint-40"}


def test_non_finite_loss_stops_the_run_after_saving_the_last_good_state(tmp_path):
    """With an EMA codebook, whose statistics the failing forward has already updated with non-finite latents."""
    output_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+); the last good state \(step (\d+)\)") as error:
        run_in_process([*QUICK_RUN, "--output_dir", str(output_dir), "--max_train_steps", "20", "--learning_rate",
                        "1e30", "--lr_warmup_steps", "0", "--checkpointing_steps", "100",
                        "--model_overrides", json.dumps(DEMO_CODEBOOK)])  # fmt: skip
    last_good = int(str(error.value).split("(step ")[1].split(")")[0])
    assert (output_dir / f"checkpoint-{last_good}" / "model.safetensors").is_file()
    weights = load_file(output_dir / f"checkpoint-{last_good}" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


@pytest.fixture
def checkpoint_pushers(monkeypatch) -> list:
    """The list that will hold the `CheckpointPusher` of a run in this process."""
    from hf_vitvq.training import hub

    init, pushers = hub.CheckpointPusher.__init__, []

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        pushers.append(self)

    monkeypatch.setattr(hub.CheckpointPusher, "__init__", recording_init)
    return pushers


def hold_checkpoint_commits(monkeypatch, until, at_most: float) -> None:
    """Hold each checkpoint commit until `until(step)` is true (at most `at_most` seconds), then check that the files
    it uploads are all still there (a folder deleted under its upload would fail the commit)."""
    from huggingface_hub import HfApi

    create_commit = HfApi.create_commit

    def held_commit(self, repo_id, operations, commit_message, **kwargs):
        if step := re.search(r"checkpoint-(\d+) ", commit_message):
            deadline = time.monotonic() + at_most
            while not until(int(step[1])) and time.monotonic() < deadline:
                time.sleep(0.01)
        missing = [op.path_in_repo for op in operations if hasattr(op, "path_or_fileobj")
                   and not Path(op.path_or_fileobj).is_file()]  # fmt: skip
        assert not missing, f"deleted while uploading: {missing}"
        return create_commit(self, repo_id, operations=operations, commit_message=commit_message, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", held_commit)


@pytest.fixture
def slow_checkpoint_uploads(monkeypatch, tmp_path, checkpoint_pushers):
    """For a run in `tmp_path / "run"`: each checkpoint commit is held until the next checkpoint exists (at most
    2 s), so that uploads run behind training. Returns the list that will hold the run's `CheckpointPusher`."""
    next_exists = lambda step: (tmp_path / "run" / f"checkpoint-{step + 1}").exists()  # noqa: E731
    hold_checkpoint_commits(monkeypatch, until=next_exists, at_most=2)
    return checkpoint_pushers


def test_a_checkpoint_is_deleted_only_once_its_upload_is_over(tmp_path, fake_hub, monkeypatch,
                                                              slow_checkpoint_uploads):  # fmt: skip
    remove_checkpoints, removed = checkpointing.remove_checkpoints, []

    def recorded_remove(paths):
        removed.extend(path.name for path in paths)
        remove_checkpoints(paths)

    monkeypatch.setattr(checkpointing, "remove_checkpoints", recorded_remove)
    output_dir = tmp_path / "run"
    run_in_process([*QUICK_RUN, "--output_dir", str(output_dir), "--max_train_steps", "4", "--checkpointing_steps",
                    "1", "--checkpoints_total_limit", "1", "--validation_steps", "100", "--push_to_hub",
                    "--hub_model_id", "org/slow-run", "--hub_push_checkpoints"])  # fmt: skip
    assert slow_checkpoint_uploads[0].failed == []  # no upload lost its folder (the held commits check each file)
    assert sorted(removed) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-4"]
    # the repo ends as the disk, though pruning lagged behind the saves
    assert checkpoint_names_in_repo(fake_hub, "org/slow-run") == {"checkpoint-4"}


def test_the_step_saved_again_at_a_non_finite_loss_waits_for_its_upload(tmp_path, fake_hub, monkeypatch,
                                                                        slow_checkpoint_uploads):  # fmt: skip
    publish = checkpointing.publish

    def checked_publish(output_dir, step):
        final = output_dir / f"checkpoint-{step}"
        assert final not in slow_checkpoint_uploads[0].pending(), "re-saving a checkpoint while uploading it"
        return publish(output_dir, step)

    monkeypatch.setattr(checkpointing, "publish", checked_publish)
    output_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"the last good state \(step [1-9]"):  # not step 0: re-saved
        run_in_process([*QUICK_RUN, "--output_dir", str(output_dir), "--max_train_steps", "20", "--learning_rate",
                        "1e30", "--lr_warmup_steps", "0", "--checkpointing_steps", "1", "--push_to_hub",
                        "--hub_model_id", "org/nan-run", "--hub_push_checkpoints"])  # fmt: skip
    last_good = max(checkpointing.checkpoint_dirs(output_dir), key=checkpointing.checkpoint_step)
    pushed = fake_hub.repos["org/nan-run"][f"checkpoints/{last_good.name}/model.safetensors"]
    assert pushed == (last_good / "model.safetensors").read_bytes()  # the last good state, as saved the second time
    uploads = [commit.message for commit in fake_hub.commits if commit.message.startswith("Upload checkpoints/")]
    assert uploads.count(f"Upload checkpoints/{last_good.name} from hf-vitvq training") == 2  # pushed again


def test_uploads_slower_than_checkpointing_skip_the_superseded_checkpoints(tmp_path, fake_hub, monkeypatch,
                                                                          checkpoint_pushers):  # fmt: skip
    output_dir, on_disk = tmp_path / "run", []

    def when_the_last_is_queued(step):  # a network far slower than training: the first upload ends last
        on_disk.append(len(checkpointing.checkpoint_dirs(output_dir)))
        return output_dir / "checkpoint-12" in checkpoint_pushers[0].uploads

    hold_checkpoint_commits(monkeypatch, until=when_the_last_is_queued, at_most=30)
    run_in_process([*QUICK_RUN, "--output_dir", str(output_dir), "--max_train_steps", "12", "--checkpointing_steps",
                    "1", "--checkpoints_total_limit", "1", "--validation_steps", "100", "--push_to_hub",
                    "--hub_model_id", "org/slow-network", "--hub_push_checkpoints"])  # fmt: skip
    uploads = [commit.message for commit in fake_hub.commits if commit.message.startswith("Upload checkpoints/")]
    # checkpoints 2-11 were queued behind the upload of checkpoint-1, each with a newer one behind it: skipped
    assert uploads == [f"Upload checkpoints/checkpoint-{step} from hf-vitvq training" for step in (1, 12)]
    # the one uploading, and the newest (with, for a moment, the one it supersedes): not the backlog
    assert max(on_disk) <= 3 and checkpoint_pushers[0].failed == []
    assert checkpoint_names_in_repo(fake_hub, "org/slow-network") == {"checkpoint-12"}


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    output_dir = tmp_path / "run"
    common = [*QUICK_RUN, "--output_dir", str(output_dir), "--checkpointing_steps", "2", "--validation_steps", "100"]
    run_in_process([*common, "--max_train_steps", "2"])
    data_state = output_dir / "checkpoint-2" / "data_state_rank0.json"
    assert json.loads(data_state.read_text())["world_size"] == 1
    data_state.write_text(json.dumps({**json.loads(data_state.read_text()), "world_size": 2}))
    checkpointing.write_manifest(data_state.parent)  # as if written by 2 processes, not damaged
    with pytest.raises(ValueError, match=r"written by 2 process\(es\), this run has 1"):
        run_in_process([*common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])


def test_push_to_hub_sends_final_model_and_checkpoints_and_skips_bad_samples(tmp_path, fake_hub, caplog):
    data_dir = make_image_folder(tmp_path / "images", 12, bad=True, bad_prefix="z_")  # after the validation files
    output_dir = tmp_path / "run"
    run_in_process([*QUICK_RUN, "--output_dir", str(output_dir), "--train_data_dir", str(data_dir),
                    "--validation_images", "2", "--max_train_steps", "4", "--checkpointing_steps", "2",
                    "--validation_steps", "4", "--push_to_hub", "--hub_model_id", "org/tiny-tokenizer",
                    "--hub_push_checkpoints", "--checkpoints_total_limit", "1"])  # fmt: skip
    files = fake_hub.repos["org/tiny-tokenizer"]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_vitvq.py",
                 "reconstructions.png", "checkpoints/checkpoint-4/model.safetensors",
                 "checkpoints/checkpoint-4/optimizer.bin", "checkpoints/checkpoint-4/checksums.json"):  # fmt: skip
        assert name in files, name
    # the Hub keeps the checkpoints the output folder keeps: checkpoint-2 was deleted there too (in checkpoint-4's
    # commit, or in a deletion commit at the end if its upload was still running when checkpoint-4 was saved)
    assert not any(name.startswith("checkpoints/checkpoint-2/") for name in files)
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-4"]
    commits = [commit for commit in fake_hub.commits if commit.repo_id == "org/tiny-tokenizer"]
    assert [commit.message for commit in commits if commit.message.startswith("Upload")] == [
        "Upload checkpoints/checkpoint-2 from hf-vitvq training",
        "Upload checkpoints/checkpoint-4 from hf-vitvq training",
        "Upload final from hf-vitvq training",
    ]
    assert "checkpoints/checkpoint-2/model.safetensors" in commits[0].added
    assert [path for commit in commits[:-1] for path in commit.deleted] == ["checkpoints/checkpoint-2/"]
    assert files["model.safetensors"] == (output_dir / "final" / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert "library_name: transformers" in card and "| steps | 4 |" in card and str(data_dir) in card
    assert json.loads(files["config.json"])["model_type"] == "vitvq"
    log = (output_dir / "train_log.jsonl").read_text()
    assert '"step": 4' in log
    # every pass over the 13 training files meets the 3 bad ones: skipped, counted once each, reported, never fatal
    assert "Skipped 3 distinct undecodable training samples in all" in caplog.text


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """2 micro-batches of 4 per step give the weights of batches of 8: the same images in the same order, the loss
    averaged by Accelerate (with TiTok's codebook, which has no per-forward state such as EMA statistics). One
    DataLoader worker: with several, each batch comes from one of them in turn, so a step's images depend on the
    batch size."""
    common = [*QUICK_RUN, "--max_train_steps", "3", "--checkpointing_steps", "100", "--validation_steps", "100",
              "--codebook_recipe", "preset", "--dataloader_num_workers", "1"]  # fmt: skip
    run_in_process([*common, "--output_dir", str(tmp_path / "big"), "--train_batch_size", "8"])
    run_in_process([*common, "--output_dir", str(tmp_path / "accumulated"), "--train_batch_size", "4",
                    "--gradient_accumulation_steps", "2"])  # fmt: skip
    big = load_file(tmp_path / "big" / "final" / "model.safetensors")
    accumulated = load_file(tmp_path / "accumulated" / "final" / "model.safetensors")
    for name, tensor in big.items():
        torch.testing.assert_close(accumulated[name], tensor, atol=2e-6, rtol=1e-5, msg=name)
    log = [json.loads(line) for line in (tmp_path / "accumulated" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]  # optimizer steps, not micro-batches
