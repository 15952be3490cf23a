"""Pushing trained folders to the Hugging Face Hub (token from `--hub_token`, `HF_TOKEN` or `hf auth login`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from .checkpointing import checkpoint_dirs, prune_checkpoints

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
    """Uploads the checkpoint folders of `output_dir` to `checkpoints/NAME` in a Hub repo in the background, so that
    training never waits on the network: one commit per checkpoint, one at a time, in order (huggingface_hub's
    `run_as_future` queue).

    With `keep_last` (`--checkpoints_total_limit`), the repo's `checkpoints/` follows `output_dir`: each commit also
    deletes the repo's checkpoints no longer on disk (those of other runs included) but the last one it committed,
    so the repo converges to the checkpoints kept on disk even after a failed commit or a restart; and a queued
    upload with `keep_last` newer ones queued behind it is skipped, since their commits would delete it: with uploads
    slower than checkpointing, the queue and the disk stay bounded. Without `keep_last`, nothing is ever deleted. A
    failed upload is logged and listed in `failed`, and not retried: the next checkpoint's push supersedes it. An
    upload reads its folder while it runs: delete only the folders `removable` returns.
    """

    def __init__(self, repo_id: str, token: str | None, output_dir: str | Path, keep_last: int | None = None) -> None:
        self.repo_id = repo_id
        self.api = HfApi(token=token)
        self.api.create_repo(repo_id, exist_ok=True)  # here, not in the background: a bad token or id fails at once
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.uploads: dict[Path, Future] = {}
        self.failed: list[Path] = []
        self._queued: list[Path] = []  # pushed, upload not started, in push order
        self._last_uploaded: str | None = None  # the last checkpoint this pusher committed
        self._lock = threading.Lock()  # guards `_queued` between the training and the upload thread

    @classmethod
    def for_run(cls, args: Any, is_main_process: bool) -> CheckpointPusher | None:
        """The pusher of a training run whose flags (`args`) ask for checkpoint uploads (`--push_to_hub` with
        `--hub_push_checkpoints`), on the main process; else None."""
        if not (args.push_to_hub and args.hub_push_checkpoints and is_main_process):
            return None
        return cls(args.hub_model_id, args.hub_token, args.output_dir, keep_last=args.checkpoints_total_limit)

    def push(self, folder: Path) -> Future:
        """Queue the upload of the checkpoint `folder`; returns at once with the upload's future (its result: the
        commit URL, or None when the upload was skipped)."""
        with self._lock:
            self._queued.append(folder)
        future = self.api.run_as_future(self._upload, folder)
        self.uploads[folder] = future
        return future

    def prune(self) -> Future:
        """Queue the deletion of the repo's checkpoints no longer on disk (with `keep_last`), except the last one this
        pusher uploaded: no commit when there are none, or when no upload went through (the repo's checkpoints may
        then be the only copies left)."""
        return self.api.run_as_future(self._commit_logged, None)

    def pending(self) -> list[Path]:
        """The folders whose upload is queued or running."""
        return [folder for folder, future in self.uploads.items() if not future.done()]

    def removable(self, folders: Iterable[Path]) -> list[Path]:
        """Those of `folders` that no upload is reading or will read (a queued upload that will be skipped does not)."""
        with self._lock:
            busy = {folder for folder in self.pending() if folder not in self._queued or not self._superseded(folder)}
        return [folder for folder in folders if folder not in busy]

    def finish(self) -> None:
        """At the end of a run: wait for the uploads still under way, delete the checkpoints on disk beyond
        `keep_last` that were kept for them, bring the repo's `checkpoints/` in line (a failure is logged), and name
        the checkpoints that could not be pushed."""
        if pending := self.pending():
            logger.info(f"Waiting for {len(pending)} checkpoint upload(s) to the Hub to finish")
        self.wait()
        prune_checkpoints(self.output_dir, self.keep_last)
        self.prune().exception()  # waits for it; a failure is logged
        if self.failed:
            where = {path: "on disk" if path.is_dir() else "deleted since" for path in self.failed}
            names = ", ".join(f"{path.name} ({state})" for path, state in where.items())
            logger.warning(f"These checkpoints were not pushed to the Hub: {names}")

    def wait(self, folders: Iterable[Path] | None = None) -> None:
        """Block until the uploads of `folders` (default: all) are over, successful, skipped or not."""
        wanted = self.uploads.keys() if folders is None else [f for f in folders if f in self.uploads]
        wait_for_futures([self.uploads[folder] for folder in wanted])

    def _superseded(self, folder: Path) -> bool:
        """Whether `keep_last` newer uploads are queued behind the queued `folder` (call with the lock held)."""
        return self.keep_last is not None and len(self._queued) - 1 - self._queued.index(folder) >= self.keep_last

    def _upload(self, folder: Path) -> str | None:
        """Upload `folder`, unless it is superseded. Runs in the upload thread."""
        with self._lock:
            superseded = self._superseded(folder)
            self._queued.remove(folder)
        if superseded:
            logger.info(f"Skipped pushing {folder} to the Hub: {self.keep_last} newer checkpoint(s) are queued")
            return None
        return self._commit_logged(folder)

    def _commit_logged(self, folder: Path | None) -> str | None:
        """Commit, and log the outcome before the future is done. Runs in the upload thread."""
        what = folder or "the deletion of pruned checkpoints"
        try:
            url = self._commit(folder)
        except Exception as error:
            if folder is not None:
                self.failed.append(folder)
            logger.error(f"Pushing {what} to the Hub failed, not retried (later checkpoints will be): {error!r}")
            raise
        if folder is not None:
            self._last_uploaded = folder.name
            if folder in self.failed:  # pushed again (a step saved again) and through this time
                self.failed.remove(folder)
        if url is not None:
            logger.info(f"Pushed {what} to {url}")
        return url

    def _commit(self, folder: Path | None) -> str | None:
        """One commit: add every file of `folder` (if any) under `checkpoints/NAME`; with `keep_last`, delete the
        repo's checkpoint folders not on disk but the one committed last; returns the commit URL, or None when there
        was nothing to commit."""
        prefix = f"{CHECKPOINTS_IN_REPO}/"
        deletions = []
        last = folder.name if folder is not None else self._last_uploaded
        if self.keep_last is not None and last is not None:
            keep = {path.name for path in checkpoint_dirs(self.output_dir)} | {last}
            in_repo = {path[len(prefix) :].split("/")[0] for path in self.api.list_repo_files(self.repo_id)
                       if path.startswith(prefix) and "/" in path[len(prefix) :]}  # fmt: skip
            deletions = [
                CommitOperationDelete(path_in_repo=f"{prefix}{name}/", is_folder=True)
                for name in sorted(in_repo - keep)
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
