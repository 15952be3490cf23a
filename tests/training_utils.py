"""Helpers shared by the training tests: import the scripts in training/, run them, read their logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from conftest import REPO_ROOT, load_script

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


def start_subprocess(argv: list[str], log_path: Path) -> subprocess.Popen:
    """`python training/train.py ARGV` in a new process, output to `log_path`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(TRAINING_DIR / "train.py"), *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )


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
