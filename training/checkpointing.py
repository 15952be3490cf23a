"""Checkpoint folders: `checkpoint-STEP`, written under a temporary name and renamed only once complete."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
INCOMPLETE_SUFFIX = ".incomplete"


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
