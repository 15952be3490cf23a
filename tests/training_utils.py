"""Helpers shared by the training tests: import the scripts in training/, run them, read their logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from conftest import REPO_ROOT, load_script

from hf_vitvq.training import checkpointing

TRAINING_DIR = REPO_ROOT / "training"

# A few seconds of training on the embedded data: the tiny preset, no tracker, small validation.
QUICK_RUN = [
    "--model_config", "tiny",
    "--train_batch_size", "4",
    "--learning_rate", "1e-3",
    "--lr_warmup_steps", "2",
    "--shuffle_buffer_size", "8",
    "--validation_images", "8",
    "--logging_steps", "1",
    "--report_to", "none",
]  # fmt: skip


def load_train_script() -> ModuleType:
    """`training/train.py` as a module (a script, not part of the package), imported once."""
    return load_script(TRAINING_DIR / "train.py", "train")


def run_in_process(argv: list[str]) -> None:
    """`train.main(argv)` in this process, with Accelerate's singletons reset afterwards."""
    from accelerate.state import AcceleratorState, GradientState

    train = load_train_script()

    try:
        train.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def start_subprocess(argv: list[str], log_path: Path, script: str = "train.py") -> subprocess.Popen:
    """`python training/SCRIPT ARGV` in a new process, output to `log_path`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(TRAINING_DIR / script), *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )


@dataclass
class InterruptedRun:
    """The two runs of [`interrupt_and_resume`], with the same flags: one uninterrupted, one killed and resumed."""

    reference_dir: Path
    resumed_dir: Path
    resumed_from: Path  # the checkpoint the resumed run started from


def interrupt_and_resume(
    argv: list[str],
    tmp_path: Path,
    kill_after_checkpoint: int,
    script: str = "train.py",
    before_resume: Callable[[Path], None] | None = None,
) -> InterruptedRun:
    """Run `training/SCRIPT ARGV` to the end into `tmp_path/reference`, and beside it into `tmp_path/crashed`, killed
    with SIGKILL once `checkpoint-KILL_AFTER_CHECKPOINT` exists there; call `before_resume(crashed folder)`, then
    rerun the killed one with `--resume_from_checkpoint latest`. Checks that both runs end well and that the resumed
    one says which checkpoint it resumed from (the latest complete one). Logs in `tmp_path`: reference.log,
    crashed.log, resumed.log."""
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    reference = start_subprocess([*argv, "--output_dir", str(reference_dir)], tmp_path / "reference.log", script)
    crashed = start_subprocess([*argv, "--output_dir", str(crashed_dir)], tmp_path / "crashed.log", script)
    deadline = time.monotonic() + 180
    while not (crashed_dir / f"checkpoint-{kill_after_checkpoint}").is_dir():
        assert crashed.poll() is None and time.monotonic() < deadline, (tmp_path / "crashed.log").read_text()[-2000:]
        time.sleep(0.02)
    crashed.send_signal(signal.SIGKILL)
    crashed.wait()
    if before_resume is not None:
        before_resume(crashed_dir)
    resumed_from = checkpointing.latest_checkpoint(crashed_dir)
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    resume = start_subprocess([*argv, "--output_dir", str(crashed_dir), "--resume_from_checkpoint", "latest"],
                              tmp_path / "resumed.log", script)  # fmt: skip
    assert resume.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert f"Resumed from {resumed_from}" in (tmp_path / "resumed.log").read_text()
    return InterruptedRun(reference_dir, crashed_dir, resumed_from)


def losses_by_step(output_dir: Path, term: str = "loss") -> dict[int, float]:
    """The loss `term` of each step in `train_log.jsonl` (a resumed run's later entries win)."""
    losses = {}
    for line in (output_dir / "train_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        losses[entry["step"]] = entry[term]
    return losses


def checkpoint_names_in_repo(fake_hub, repo_id: str) -> set[str]:
    """The checkpoint folders under `checkpoints/` in a repo of the fake Hub."""
    return {name.split("/")[1] for name in fake_hub.repos[repo_id] if name.startswith("checkpoints/")}
