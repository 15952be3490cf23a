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


def test_push_returns_before_the_upload_and_wait_blocks_until_it_is_done(tmp_path, fake_hub, gated_commits):
    pusher = CheckpointPusher("org/run", token=None)
    first, second = make_checkpoint(tmp_path, 2), make_checkpoint(tmp_path, 4)
    future = pusher.push(first)
    assert not future.done()  # training goes on while the network is slow
    pusher.wait([second])  # not queued: nothing to wait for
    assert not future.done()
    gated_commits.set()
    pusher.wait([first])
    files = fake_hub.repos["org/run"]
    assert files["checkpoints/checkpoint-2/model.safetensors"] == b"weights 2"
    assert files["checkpoints/checkpoint-2/nested/state.json"] == b'{"step": 2}'
    assert pusher.failed == []


def test_pushes_commit_in_order_and_delete_the_pruned_checkpoints_the_repo_holds(tmp_path, fake_hub):
    pusher = CheckpointPusher("org/run", token=None)
    for step, pruned in ((2, []), (4, ["checkpoint-2"]), (6, ["checkpoint-4", "checkpoint-0"])):
        pusher.push(make_checkpoint(tmp_path, step), pruned=pruned)
    pusher.wait()
    commits = [commit for commit in fake_hub.commits if commit.repo_id == "org/run"]
    assert [commit.message for commit in commits] == [
        f"Upload checkpoints/checkpoint-{step} from hf-vitvq training" for step in (2, 4, 6)
    ]
    # checkpoint-0 was never on the Hub: nothing to delete, and no error
    assert [commit.deleted for commit in commits] == [[], ["checkpoints/checkpoint-2/"], ["checkpoints/checkpoint-4/"]]
    assert sorted(name for name in fake_hub.repos["org/run"] if name.startswith("checkpoints/")) == [
        "checkpoints/checkpoint-6/model.safetensors",
        "checkpoints/checkpoint-6/nested/state.json",
    ]


def test_a_failed_push_is_logged_and_listed_not_raised(tmp_path, fake_hub, monkeypatch, caplog):
    pusher = CheckpointPusher("org/run", token=None)

    def refuse(self, *args, **kwargs):
        raise ConnectionError("network down")

    monkeypatch.setattr(HfApi, "create_commit", refuse)
    folder = make_checkpoint(tmp_path, 2)
    with caplog.at_level(logging.INFO, logger="hub"):
        pusher.push(folder)
        pusher.wait()
    assert pusher.failed == [folder]
    assert "Pushing" in caplog.text and "network down" in caplog.text and "still on disk" in caplog.text
