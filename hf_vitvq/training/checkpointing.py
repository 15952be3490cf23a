"""Checkpoint folders: `checkpoint-STEP`, written under a temporary name and renamed only once complete, with a
manifest of the size and sha256 of each file (`checksums.json`) that resuming checks. Hashing reads every file once,
at about 1 GB/s on one CPU core: a few seconds per checkpoint of a small model, 10-20 s for L-32 with its optimizer
and EMA states, once when it is written and once when it is resumed."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
INCOMPLETE_SUFFIX = ".incomplete"
MANIFEST_NAME = "checksums.json"


class CheckpointError(ValueError):
    """A checkpoint folder that does not exist, or whose files do not match its manifest."""


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (folders still being written are not listed)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def checkpoint_step(path: str | Path) -> int:
    """The step of a `checkpoint-STEP` folder."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder: expected a name like checkpoint-500.")
    return int(match.group(1))


def incomplete_dir(output_dir: str | Path, step: int) -> Path:
    """Where checkpoint `step` is written before it is complete."""
    return Path(output_dir) / f"checkpoint-{step}{INCOMPLETE_SUFFIX}"


def publish(output_dir: str | Path, step: int) -> Path:
    """Rename the complete temporary folder of `step` to `checkpoint-STEP` (atomic on one file system)."""
    final = Path(output_dir) / f"checkpoint-{step}"
    if final.exists():  # e.g. the NaN stop re-saving the step a periodic checkpoint already holds
        shutil.rmtree(final)
    incomplete_dir(output_dir, step).rename(final)
    return final


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """The sha256 hex digest of a file, read `chunk_bytes` at a time (checkpoint files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def folder_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"size": bytes, "sha256": hex digest}}` of every file under `folder` but the manifest."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST_NAME)
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in files
    }


def write_manifest(folder: str | Path) -> Path:
    """Write `checksums.json` (see `folder_manifest`) into the complete checkpoint `folder`; returns its path."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps({"files": folder_manifest(folder)}, indent=1))
    return path


def manifest_mismatches(folder: str | Path) -> list[str] | None:
    """What differs between `folder` and its manifest, one line per file (`NAME: missing`, `NAME: N bytes, the
    manifest says M`, `NAME: sha256 differs from the manifest`); empty when every file matches, None when the folder
    has no manifest (written before manifests were). Sizes are all checked before any file is hashed, so that a
    truncated file is found without reading the others."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        expected = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"{MANIFEST_NAME}: unreadable ({error})"]
    problems = []
    for name, entry in expected.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (size := path.stat().st_size) != entry["size"]:
            problems.append(f"{name}: {size} bytes, the manifest says {entry['size']}")
    if problems:
        return problems
    return [f"{name}: sha256 differs from the manifest" for name, entry in expected.items()
            if file_sha256(folder / name) != entry["sha256"]]  # fmt: skip


def verify_checkpoint(folder: str | Path) -> None:
    """Check the checkpoint `folder` against its manifest (a folder without one passes: there is nothing to check it
    against). Raises `CheckpointError` naming the folder and the files that differ, or saying that the folder does
    not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint {folder} does not exist (or is not a folder).")
    if mismatches := manifest_mismatches(folder):
        raise CheckpointError(f"Checkpoint {folder} is damaged: " + "; ".join(mismatches) + ".")


def latest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, dict[Path, str]]:
    """(the newest checkpoint in `output_dir` that passes `verify_checkpoint`, or None; the newer ones that failed,
    each with what is wrong). A checkpoint without a manifest counts as intact."""
    damaged = {}
    for folder in reversed(checkpoint_dirs(output_dir)):
        try:
            verify_checkpoint(folder)
        except CheckpointError as error:
            damaged[folder] = str(error)
            continue
        return folder, damaged
    return None, damaged


def drop_log_entries_after(path: str | Path, step: int) -> int:
    """Remove from the JSON-lines log `path` (`train_log.jsonl`) the entries of steps after `step`, written by a run
    that went further than the checkpoint now resumed, and lines a crash left half-written; returns how many lines
    were removed. The log is rewritten under a temporary name, then renamed."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if (entry_step := _logged_step(line)) is not None and entry_step <= step]
    if len(kept) < len(lines):
        partial = path.with_name(path.name + INCOMPLETE_SUFFIX)
        partial.write_text("".join(line if line.endswith("\n") else line + "\n" for line in kept))
        partial.replace(path)
    return len(lines) - len(kept)


def _logged_step(line: str) -> int | None:
    """The `step` of one log line, or None when the line is not a complete JSON entry."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete folders left half-written by a crash; returns them."""
    output_dir = Path(output_dir)
    stale = sorted(output_dir.glob(f"checkpoint-*{INCOMPLETE_SUFFIX}")) if output_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path)
    return stale


def surplus_checkpoints(output_dir: str | Path, keep: int | None) -> list[Path]:
    """The complete checkpoints beyond the `keep` newest, oldest first (none when `keep` is None)."""
    if keep is None:
        return []
    found = checkpoint_dirs(output_dir)
    return found[: max(0, len(found) - keep)]


def remove_checkpoints(paths: list[Path]) -> None:
    """Delete checkpoint folders (those `surplus_checkpoints` returned)."""
    for path in paths:
        shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------- in a training run


class CheckpointUploads(Protocol):
    """What saving and pruning need of `hf_vitvq.training.hub.CheckpointPusher` (uploads in the background)."""

    def wait(self, paths: list[Path] | None = None) -> None: ...

    def push(self, folder: Path) -> Any: ...

    def removable(self, paths: list[Path]) -> list[Path]: ...


def prune_checkpoints(output_dir: str | Path, keep: int | None, uploads: CheckpointUploads | None = None) -> list[Path]:
    """Delete the oldest checkpoints beyond the `keep` newest (main process), except those an upload is still reading:
    a later call deletes them, so that no process ever waits on the network here. Returns the deleted folders."""
    surplus = surplus_checkpoints(output_dir, keep)
    if uploads is not None:
        surplus = uploads.removable(surplus)
    remove_checkpoints(surplus)
    for removed in surplus:
        logger.info(f"Removed old checkpoint {removed}")
    return surplus


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    keep: int | None = None,
    uploads: CheckpointUploads | None = None,
    write_process_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write `checkpoint-STEP` as every process of a run must, together: `accelerator.save_state` and each process's
    own files (`write_process_files(folder)`) into a temporary folder; once all are done, the manifest of checksums
    (main process), the atomic rename, the upload (`uploads`: queued before pruning, so that a queued upload this
    one supersedes can be dropped at once) and the pruning to the `keep` newest. Returns the checkpoint folder."""
    tmp = incomplete_dir(output_dir, step)
    accelerator.save_state(str(tmp))
    if write_process_files is not None:
        write_process_files(tmp)
    accelerator.wait_for_everyone()
    final = tmp.with_name(f"checkpoint-{step}")
    if accelerator.is_main_process:
        write_manifest(tmp)  # every process's files are complete: hash them before the rename
        if uploads is not None:  # re-saving a step (a non-finite loss right after a checkpoint): upload over first
            uploads.wait([final])
        final = publish(output_dir, step)
        logger.info(f"Saved {final}")
        if uploads is not None:
            uploads.push(final)
        prune_checkpoints(output_dir, keep, uploads)
    accelerator.wait_for_everyone()
    return final


def choose_resume_checkpoint(output_dir: str | Path, requested: str) -> Path | None:
    """The checkpoint `--resume_from_checkpoint requested` means, checked against its manifest (main process only: it
    deletes half-written folders and hashes the files): a named checkpoint must match it (else `CheckpointError`
    naming the file); `latest` is the newest checkpoint that does, with a warning for each newer one that does not,
    or None when `output_dir` holds none (start from scratch)."""
    for stale in remove_incomplete(output_dir):
        logger.warning(f"Removed incomplete checkpoint {stale} (the previous run stopped while writing it)")
    if requested == "latest":
        path, damaged = latest_intact_checkpoint(output_dir)
        for problem in damaged.values():
            logger.warning(f"{problem} Resuming from an older checkpoint instead.")
        if path is None and damaged:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no intact checkpoint in {output_dir} (see the warnings above). "
                "Delete the damaged ones, or leave out --resume_from_checkpoint, to start from scratch."
            )
    else:
        path = Path(requested)
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            raise CheckpointError(f"--resume_from_checkpoint {requested}: {error}") from error
    if path is not None and not (path / MANIFEST_NAME).is_file():
        logger.warning(
            f"{path} has no {MANIFEST_NAME} (it was written by an older version): its files could not be verified."
        )
    return path


def resolve_resume_checkpoint(accelerator: Accelerator, output_dir: str | Path, requested: str) -> Path | None:
    """[`choose_resume_checkpoint`] on the main process, its answer (or its error) sent to every process: all resume
    from the same checkpoint, or all stop."""
    choice: list[str | None] = [None, None]
    if accelerator.is_main_process:
        try:
            path = choose_resume_checkpoint(output_dir, requested)
            choice = [None if path is None else str(path), None]
        except CheckpointError as error:
            choice = [None, str(error)]
    path, error = broadcast_object_list(choice)
    if error is not None:
        raise CheckpointError(error)
    return None if path is None else Path(path)
