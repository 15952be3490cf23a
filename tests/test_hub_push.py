"""hf_vitvq/training/hub.py's background checkpoint pushes, against the local fake Hub."""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_hub import fake_hub_fixture  # noqa: F401
from huggingface_hub import HfApi
from training_utils import checkpoint_names_in_repo

from hf_vitvq.training.hub import CheckpointPusher


def make_checkpoint(output_dir: Path, step: int) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    (folder / "nested").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(f"weights {step}".encode())
    (folder / "nested" / "state.json").write_text(f'{{"step": {step}}}')
    return folder


def checkpoints_in_repo(fake_hub, repo_id: str) -> list[str]:
    return sorted(name for name in fake_hub.repos[repo_id] if name.startswith("checkpoints/"))


@dataclass
class Gate:
    """Holds every commit until opened: `entered` is set once a commit is held (its upload has started)."""

    open: threading.Event
    entered: threading.Event


@pytest.fixture
def gated_commits(monkeypatch) -> Gate:
    """Hold every `create_commit` until the gate opens (a slow network)."""
    gate = Gate(threading.Event(), threading.Event())
    create_commit = HfApi.create_commit

    def held(self, *args, **kwargs):
        gate.entered.set()
        assert gate.open.wait(timeout=60), "the test never opened the gate"
        return create_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", held)
    return gate


def failing_once(monkeypatch) -> None:
    """The next `create_commit` raises a ConnectionError; the later ones go through."""
    create_commit = HfApi.create_commit
    failures = iter([ConnectionError("network down")])

    def fails_once(self, *args, **kwargs):
        if (error := next(failures, None)) is not None:
            raise error
        return create_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", fails_once)


def upload_previous_run_checkpoint(tmp_path: Path, repo_id: str) -> None:
    """`checkpoints/checkpoint-1` in the repo, left by an earlier run in another folder."""
    api = HfApi()
    api.create_repo(repo_id)
    stale = make_checkpoint(tmp_path / "previous-run", 1)
    api.upload_folder(repo_id=repo_id, folder_path=stale, path_in_repo="checkpoints/checkpoint-1")


def test_push_returns_at_once_and_its_folder_is_not_removable_until_uploaded(tmp_path, fake_hub, gated_commits):
    pusher = CheckpointPusher("org/run", token=None, output_dir=tmp_path)
    first, second = make_checkpoint(tmp_path, 2), make_checkpoint(tmp_path, 4)
    future = pusher.push(first)
    assert not future.done()  # training goes on while the network is slow
    assert pusher.pending() == [first]
    assert pusher.removable([first, second]) == [second]  # the upload still has to read `first`
    pusher.wait([second])  # not queued: nothing to wait for
    assert not future.done()
    gated_commits.open.set()
    pusher.wait([first])
    assert pusher.pending() == [] and pusher.removable([first]) == [first]
    files = fake_hub.repos["org/run"]
    assert files["checkpoints/checkpoint-2/model.safetensors"] == b"weights 2"
    assert files["checkpoints/checkpoint-2/nested/state.json"] == b'{"step": 2}'
    assert pusher.failed == []


def test_with_a_limit_the_repo_converges_to_the_checkpoints_on_disk(tmp_path, fake_hub, monkeypatch):
    upload_previous_run_checkpoint(tmp_path, "org/run")
    pusher = CheckpointPusher("org/run", token=None, output_dir=tmp_path, keep_last=1)
    pusher.push(make_checkpoint(tmp_path, 2)).result()
    assert checkpoints_in_repo(fake_hub, "org/run") == [
        "checkpoints/checkpoint-2/model.safetensors",
        "checkpoints/checkpoint-2/nested/state.json",
    ]
    failing_once(monkeypatch)
    shutil.rmtree(tmp_path / "checkpoint-2")  # pruned on disk, as training does
    assert pusher.push(make_checkpoint(tmp_path, 4)).exception() is not None  # the commit fails
    shutil.rmtree(tmp_path / "checkpoint-4")
    pusher.push(make_checkpoint(tmp_path, 6)).result()
    assert pusher.failed == [tmp_path / "checkpoint-4"]
    # the lost commit's deletion is made by the next one: the repo holds what the disk holds
    assert checkpoints_in_repo(fake_hub, "org/run") == [
        "checkpoints/checkpoint-6/model.safetensors",
        "checkpoints/checkpoint-6/nested/state.json",
    ]
    commits = [commit for commit in fake_hub.commits if commit.repo_id == "org/run"]
    assert [commit.message for commit in commits[1:]] == [
        f"Upload checkpoints/checkpoint-{step} from hf-vitvq training" for step in (2, 6)
    ]
    assert [commit.deleted for commit in commits[1:]] == [["checkpoints/checkpoint-1/"], ["checkpoints/checkpoint-2/"]]
    assert pusher.prune().result() is None  # nothing left to delete: no empty commit
    # the last upload fails and training ends: the deletion at the end keeps the last checkpoint that went through
    failing_once(monkeypatch)
    assert pusher.push(make_checkpoint(tmp_path, 8)).exception() is not None
    shutil.rmtree(tmp_path / "checkpoint-6")
    assert pusher.prune().result() is None
    assert checkpoint_names_in_repo(fake_hub, "org/run") == {"checkpoint-6"}


def test_with_no_upload_through_the_deletion_at_the_end_deletes_nothing(tmp_path, fake_hub, monkeypatch):
    upload_previous_run_checkpoint(tmp_path, "org/run")  # e.g. the one this run resumed from, in another folder
    pusher = CheckpointPusher("org/run", token=None, output_dir=tmp_path, keep_last=1)
    failing_once(monkeypatch)
    assert pusher.push(make_checkpoint(tmp_path, 2)).exception() is not None
    assert pusher.prune().result() is None
    assert checkpoint_names_in_repo(fake_hub, "org/run") == {"checkpoint-1"}


def test_without_a_limit_nothing_is_deleted_from_the_repo(tmp_path, fake_hub):
    upload_previous_run_checkpoint(tmp_path, "org/run")  # e.g. the checkpoint this run resumed from
    pusher = CheckpointPusher("org/run", token=None, output_dir=tmp_path)
    pusher.push(make_checkpoint(tmp_path, 2)).result()
    assert pusher.prune().result() is None
    assert checkpoint_names_in_repo(fake_hub, "org/run") == {"checkpoint-1", "checkpoint-2"}


def test_an_upload_superseded_while_queued_is_skipped_and_its_folder_removable(tmp_path, fake_hub, gated_commits,
                                                                              caplog):  # fmt: skip
    pusher = CheckpointPusher("org/run", token=None, output_dir=tmp_path, keep_last=1)
    uploading = make_checkpoint(tmp_path, 2)
    pusher.push(uploading)
    assert gated_commits.entered.wait(timeout=60)  # its upload is running, held by the slow network
    superseded, newest = make_checkpoint(tmp_path, 4), make_checkpoint(tmp_path, 6)
    skipped, uploaded = pusher.push(superseded), pusher.push(newest)
    # checkpoint-4 will not be read: one newer checkpoint (the limit) is queued behind it, whose commit deletes it
    assert pusher.removable([uploading, superseded, newest]) == [superseded]
    shutil.rmtree(superseded)  # as training's pruning does
    with caplog.at_level(logging.INFO, logger="hf_vitvq.training.hub"):
        gated_commits.open.set()
        pusher.wait()
    assert skipped.result() is None and uploaded.result() is not None and pusher.failed == []
    assert "Skipped pushing" in caplog.text
    commits = [commit.message for commit in fake_hub.commits if commit.message.startswith("Upload")]
    assert commits == [f"Upload checkpoints/checkpoint-{step} from hf-vitvq training" for step in (2, 6)]


def test_a_failed_push_is_logged_and_listed_not_raised(tmp_path, fake_hub, monkeypatch, caplog):
    pusher = CheckpointPusher("org/run", token=None, output_dir=tmp_path)
    failing_once(monkeypatch)
    folder = make_checkpoint(tmp_path, 2)
    with caplog.at_level(logging.INFO, logger="hf_vitvq.training.hub"):
        pusher.push(folder)
        pusher.wait()
    assert pusher.failed == [folder]
    assert "Pushing" in caplog.text and "network down" in caplog.text and "not retried" in caplog.text
    pusher.push(folder).result()  # the same step pushed again (saved again after a non-finite loss): through
    assert pusher.failed == []
