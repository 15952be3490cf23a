"""training/hub.py's background checkpoint pushes, against the local fake Hub."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from fake_hub import fake_hub_fixture  # noqa: F401
from hub import CheckpointPusher
from huggingface_hub import HfApi


def make_checkpoint(output_dir: Path, step: int) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    (folder / "nested").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(f"weights {step}".encode())
    (folder / "nested" / "state.json").write_text(f'{{"step": {step}}}')
    return folder


def checkpoints_in_repo(fake_hub, repo_id: str) -> list[str]:
    return sorted(name for name in fake_hub.repos[repo_id] if name.startswith("checkpoints/"))


@pytest.fixture
def gated_commits(monkeypatch):
    """Hold every `create_commit` until the returned event is set (a slow network)."""
    gate = threading.Event()
    create_commit = HfApi.create_commit

    def held(self, *args, **kwargs):
        assert gate.wait(timeout=60), "the test never opened the gate"
        return create_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", held)
    return gate


def test_push_returns_at_once_and_its_folder_is_not_removable_until_uploaded(tmp_path, fake_hub, gated_commits):
    pusher = CheckpointPusher("org/run", token=None)
    first, second = make_checkpoint(tmp_path, 2), make_checkpoint(tmp_path, 4)
    future = pusher.push(first, keep=[first.name])
    assert not future.done()  # training goes on while the network is slow
    assert pusher.pending() == [first]
    assert pusher.removable([first, second]) == [second]  # the upload still has to read `first`
    pusher.wait([second])  # not queued: nothing to wait for
    assert not future.done()
    gated_commits.set()
    pusher.wait([first])
    assert pusher.pending() == [] and pusher.removable([first]) == [first]
    files = fake_hub.repos["org/run"]
    assert files["checkpoints/checkpoint-2/model.safetensors"] == b"weights 2"
    assert files["checkpoints/checkpoint-2/nested/state.json"] == b'{"step": 2}'
    assert pusher.failed == []


def test_pushes_commit_in_order_and_the_repo_converges_to_the_checkpoints_on_disk(tmp_path, fake_hub, monkeypatch):
    api = HfApi()
    api.create_repo("org/run")
    stale = make_checkpoint(tmp_path / "previous-run", 1)  # left in the repo by an earlier run
    api.upload_folder(repo_id="org/run", folder_path=stale, path_in_repo="checkpoints/checkpoint-1")
    pusher = CheckpointPusher("org/run", token=None)
    pusher.push(make_checkpoint(tmp_path, 2), keep=["checkpoint-2"]).result()
    assert checkpoints_in_repo(fake_hub, "org/run") == [
        "checkpoints/checkpoint-2/model.safetensors",
        "checkpoints/checkpoint-2/nested/state.json",
    ]
    create_commit = HfApi.create_commit
    failures = iter([ConnectionError("network down")])

    def fails_once(self, *args, **kwargs):
        if (error := next(failures, None)) is not None:
            raise error
        return create_commit(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", fails_once)
    pusher.push(make_checkpoint(tmp_path, 4), keep=["checkpoint-4"])  # checkpoint-2 pruned on disk; commit fails
    pusher.push(make_checkpoint(tmp_path, 6), keep=["checkpoint-6"])  # checkpoint-4 pruned on disk too
    pusher.wait()
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
    assert pusher.prune(keep=["checkpoint-6"]).result() is None  # nothing left to delete: no empty commit
    pusher.prune(keep=[]).result()
    assert checkpoints_in_repo(fake_hub, "org/run") == []


def test_a_failed_push_is_logged_and_listed_not_raised(tmp_path, fake_hub, monkeypatch, caplog):
    pusher = CheckpointPusher("org/run", token=None)

    def refuse(self, *args, **kwargs):
        raise ConnectionError("network down")

    monkeypatch.setattr(HfApi, "create_commit", refuse)
    folder = make_checkpoint(tmp_path, 2)
    with caplog.at_level(logging.INFO, logger="hub"):
        pusher.push(folder, keep=[folder.name])
        pusher.wait()
    assert pusher.failed == [folder]
    assert "Pushing" in caplog.text and "network down" in caplog.text and "not retried" in caplog.text
