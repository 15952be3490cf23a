"""Two CPU processes (Accelerate MULTI_CPU, gloo): disjoint data shards, identical weights, a falling loss."""

from __future__ import annotations

import json
import shutil

import torch
from conftest import REPO_ROOT, run_on_two_cpu_processes
from safetensors.torch import load_file
from training_utils import QUICK_RUN, losses_by_step

from hf_vitvq.training import checkpointing


def test_two_processes_read_disjoint_shards_and_stay_in_sync(tmp_path, photo_paths):
    data_dir = tmp_path / "images"
    data_dir.mkdir()
    for path in photo_paths[:40]:
        shutil.copy(path, data_dir / path.name)
    output_dir = tmp_path / "run"
    argv = [*QUICK_RUN, "--train_data_dir", str(data_dir), "--validation_images", "8", "--output_dir", str(output_dir),
            "--max_train_steps", "60", "--learning_rate", "3e-3", "--checkpointing_steps", "60",
            "--validation_steps", "100", "--shuffle_buffer_size", "4"]  # fmt: skip
    result = run_on_two_cpu_processes([str(REPO_ROOT / "tests" / "ddp_train_check.py"), str(tmp_path), *argv])
    assert "2 process(es) = 8 images per step" in result.stderr
    assert "| images per step | 8 |" in (output_dir / "final" / "README.md").read_text()  # the model card too

    # the batches each rank trained on (a few more were prefetched and never used)
    names = [json.loads((tmp_path / f"names{rank}.json").read_text())[: 60 * 4] for rank in (0, 1)]
    assert len(names[0]) == len(names[1]) == 60 * 4
    # every epoch (a new order of the files), the ranks share out the 32 training files (40 minus 8 held out)
    per_epoch = 32 // 2
    for start in range(0, 60 * 4, per_epoch):
        epoch = [set(rank_names[start : start + per_epoch]) for rank_names in names]
        assert epoch[0].isdisjoint(epoch[1]), f"the two processes read the same files in epoch {start // per_epoch}"
        assert len(epoch[0] | epoch[1]) == 32

    weights = [load_file(tmp_path / f"weights{rank}.safetensors") for rank in (0, 1)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])

    assert len(losses_by_step(output_dir, "l2_loss")) == 60
    # the main process hashed every process's files into the checkpoint's manifest, after all were written
    checkpoint = output_dir / "checkpoint-60"
    manifest = json.loads((checkpoint / checkpointing.MANIFEST_NAME).read_text())["files"]
    per_process = {"data_state_rank0.json", "data_state_rank1.json", "random_states_0.pkl", "random_states_1.pkl"}
    assert per_process <= set(manifest)
    checkpointing.verify_checkpoint(checkpoint)
    validation = json.loads((tmp_path / "validation_l2.json").read_text())
    assert validation["after"] < 0.98 * validation["before"], validation  # 0.96 here: deterministic on CPU
