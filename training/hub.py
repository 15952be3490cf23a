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
    """Uploads checkpoint folders to `checkpoints/NAME` in a Hub repo in the background, so that training does not
    wait on the network: one commit at a time, in order (huggingface_hub's `run_as_future` queue).

    Each push also deletes from the repo the checkpoints pruned locally since the previous one, in the same commit, so
    the repo keeps the checkpoints the output folder keeps. A failed upload is logged when it fails (the checkpoint is
    still on disk) and listed in `failed`; training goes on. Before deleting a checkpoint folder, call `wait` on it:
    its upload reads the files.
    """

    def __init__(self, repo_id: str, token: str | None) -> None:
        self.repo_id = repo_id
        self.api = HfApi(token=token)
        self.api.create_repo(repo_id, exist_ok=True)  # here, not in the background: a bad token or id fails at once
        self.uploads: dict[Path, Future] = {}

    def push(self, folder: Path, pruned: Iterable[str] = ()) -> Future:
        """Queue the upload of `folder` and the deletion of the pruned checkpoints named in `pruned`; returns at
        once with the upload's future."""
        future = self.api.run_as_future(self._push, folder, list(pruned))
        self.uploads[folder] = future
        return future

    @property
    def failed(self) -> list[Path]:
        """The folders whose upload failed."""
        return [folder for folder, future in self.uploads.items() if future.done() and future.exception()]

    def wait(self, folders: Iterable[Path] | None = None) -> None:
        """Block until the uploads of `folders` (default: all) are over, successful or not."""
        wanted = self.uploads.keys() if folders is None else [Path(f) for f in folders if Path(f) in self.uploads]
        wait_for_futures([self.uploads[folder] for folder in wanted])

    def _push(self, folder: Path, pruned: list[str]) -> str:
        """Commit, and log the outcome (before the future is done). Runs in the upload thread."""
        try:
            url = self._commit(folder, pruned)
        except Exception as error:
            logger.error(f"Pushing {folder} to the Hub failed (it is still on disk): {error!r}")
            raise
        logger.info(f"Pushed {folder} to {url}")
        return url

    def _commit(self, folder: Path, pruned: list[str]) -> str:
        """One commit: add every file of `folder` under `checkpoints/NAME`, delete the pruned checkpoints the repo
        holds; returns the commit URL."""
        remote = self.api.list_repo_files(self.repo_id)
        deletions = [
            CommitOperationDelete(path_in_repo=f"{CHECKPOINTS_IN_REPO}/{name}/", is_folder=True)
            for name in pruned
            if any(path.startswith(f"{CHECKPOINTS_IN_REPO}/{name}/") for path in remote)
        ]
        additions = [
            CommitOperationAdd(
                path_in_repo=f"{CHECKPOINTS_IN_REPO}/{folder.name}/{path.relative_to(folder).as_posix()}",
                path_or_fileobj=path,
            )
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        ]
        commit = self.api.create_commit(
            self.repo_id,
            operations=[*deletions, *additions],
            commit_message=f"Upload {CHECKPOINTS_IN_REPO}/{folder.name} from hf-vitvq training",
        )
        return commit.commit_url
