"""Pushing trained folders to the Hugging Face Hub (token from `--hub_token`, `HF_TOKEN` or `hf auth login`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

logger = logging.getLogger(__name__)

CHECKPOINTS_IN_REPO = "checkpoints"


def push_folder(folder: Path, repo_id: str, path_in_repo: str | None, token: str | None) -> str:
    """Create `repo_id` if needed and upload `folder` into it (at `path_in_repo`, or the root); returns the
    commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        path_in_repo=path_in_repo,
        commit_message=f"Upload {path_in_repo or folder.name} from hf-vitvq training",
    )
    return commit.commit_url


class CheckpointPusher:
    """Uploads checkpoint folders to `checkpoints/NAME` in a Hub repo in the background, so that training never waits
    on the network: one commit per checkpoint, one at a time, in order (huggingface_hub's `run_as_future` queue).

    Each commit also deletes the repo's checkpoints that are no longer on disk, so the repo converges to the
    checkpoints `--checkpoints_total_limit` keeps, even after a failed commit or a restart. A failed upload is logged
    and listed in `failed`, and not retried: the next checkpoint's push supersedes it. An upload reads its folder
    while it runs: delete only the folders `removable` returns.
    """

    def __init__(self, repo_id: str, token: str | None) -> None:
        self.repo_id = repo_id
        self.api = HfApi(token=token)
        self.api.create_repo(repo_id, exist_ok=True)  # here, not in the background: a bad token or id fails at once
        self.uploads: dict[Path, Future] = {}
        self.failed: list[Path] = []

    def push(self, folder: Path, keep: Iterable[str]) -> Future:
        """Queue the upload of the checkpoint `folder`, and the deletion of the repo's checkpoints not named in `keep`
        (the checkpoints on disk); returns at once with the upload's future."""
        future = self.api.run_as_future(self._push, folder, {*keep, folder.name})
        self.uploads[folder] = future
        return future

    def prune(self, keep: Iterable[str]) -> Future:
        """Queue the deletion of the repo's checkpoints not named in `keep` (no commit when there are none)."""
        return self.api.run_as_future(self._push, None, set(keep))

    def pending(self) -> list[Path]:
        """The folders whose upload is queued or running."""
        return [folder for folder, future in self.uploads.items() if not future.done()]

    def removable(self, folders: Iterable[Path]) -> list[Path]:
        """Those of `folders` that no upload is reading (or about to read)."""
        busy = set(self.pending())
        return [folder for folder in folders if folder not in busy]

    def wait(self, folders: Iterable[Path] | None = None) -> None:
        """Block until the uploads of `folders` (default: all) are over, successful or not."""
        wanted = self.uploads.keys() if folders is None else [f for f in folders if f in self.uploads]
        wait_for_futures([self.uploads[folder] for folder in wanted])

    def _push(self, folder: Path | None, keep: set[str]) -> str | None:
        """Commit, and log the outcome before the future is done. Runs in the upload thread."""
        what = folder or "the deletion of pruned checkpoints"
        try:
            url = self._commit(folder, keep)
        except Exception as error:
            if folder is not None:
                self.failed.append(folder)
            logger.error(f"Pushing {what} to the Hub failed, not retried (later checkpoints will be): {error!r}")
            raise
        if url is not None:
            logger.info(f"Pushed {what} to {url}")
        return url

    def _commit(self, folder: Path | None, keep: set[str]) -> str | None:
        """One commit: add every file of `folder` (if any) under `checkpoints/NAME`, delete the repo's checkpoint
        folders not in `keep`; returns the commit URL, or None when there was nothing to commit."""
        prefix = f"{CHECKPOINTS_IN_REPO}/"
        in_repo = {path[len(prefix) :].split("/")[0] for path in self.api.list_repo_files(self.repo_id)
                   if path.startswith(prefix) and "/" in path[len(prefix) :]}  # fmt: skip
        deletions = [
            CommitOperationDelete(path_in_repo=f"{prefix}{name}/", is_folder=True) for name in sorted(in_repo - keep)
        ]
        additions = [
            CommitOperationAdd(
                path_in_repo=f"{prefix}{folder.name}/{path.relative_to(folder).as_posix()}", path_or_fileobj=path
            )
            for path in (sorted(folder.rglob("*")) if folder is not None else [])
            if path.is_file()
        ]
        if not deletions and not additions:
            return None
        message = f"Upload {prefix}{folder.name}" if folder is not None else f"Delete pruned {prefix}"
        commit = self.api.create_commit(
            self.repo_id, operations=[*deletions, *additions], commit_message=f"{message} from hf-vitvq training"
        )
        return commit.commit_url
