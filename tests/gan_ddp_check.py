"""Run under `torchrun --nproc_per_node 2` by tests/test_gan_training.py: trains with the discriminator and writes,
per rank, the tokenizer's and the discriminator's weights and the LeCAM averages, so that the test can compare the
ranks."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

from safetensors.torch import save_file
from training_utils import load_train_script  # tests/ is sys.path[0] when this file runs as a script

from hf_vitvq.training.arguments import parse_args


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    report_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    trainer = load_train_script().Trainer(*parse_args(argv))
    accelerator = trainer.accelerator
    try:
        trainer.run()
        rank = accelerator.process_index
        modules = {
            "tokenizer": accelerator.unwrap_model(trainer.model),
            "discriminator": accelerator.unwrap_model(trainer.discriminator),
            "lecam": trainer.discriminator_loss_fn,
        }
        for name, module in modules.items():
            state = {key: value.contiguous() for key, value in module.state_dict().items()}
            save_file(state, report_dir / f"{name}{rank}.safetensors")
    finally:
        accelerator.free_memory()
        gc.collect()
        accelerator.end_training()


if __name__ == "__main__":
    main()
