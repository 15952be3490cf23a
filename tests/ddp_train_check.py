"""Run under `torchrun --nproc_per_node 2` by tests/test_training_multiprocess.py: trains a few steps and writes, per
rank, the example names it read and its final weights, so that the test can compare the ranks; exports `final/`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from training_utils import load_train_script  # tests/ is sys.path[0] when this file runs as a script

from hf_vitvq.training.arguments import parse_args


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    report_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    trainer = load_train_script().Trainer(*parse_args(argv))
    seen: list[str] = []
    read_batches = trainer.stream.batches

    def recording_batches(*args, **kwargs):
        for batch in read_batches(*args, **kwargs):
            seen.extend(batch.names)
            yield batch

    trainer.stream.batches = recording_batches
    rank = trainer.accelerator.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)

    @torch.no_grad()
    def validation_l2() -> float:  # on the main process's fixed validation images
        model.eval()
        losses = [(model(pixels).reconstruction - pixels).pow(2).mean().item() for pixels in trainer.validation]
        model.train()
        return sum(losses) / max(1, len(losses))

    try:
        before = validation_l2()
        trainer.export(trainer.run())  # the model card and final model (main process)
        if rank == 0:
            (report_dir / "validation_l2.json").write_text(json.dumps({"before": before, "after": validation_l2()}))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, report_dir / f"weights{rank}.safetensors")
        (report_dir / f"names{rank}.json").write_text(json.dumps(seen))
    finally:
        trainer.accelerator.free_memory()
        trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
