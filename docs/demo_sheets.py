"""The README's two pictures of the demo: the reconstruction sheet of the demo's model as its seed initialises it,
before any training step (docs/demo_untrained.png), and after the demo (docs/demo_reconstructions.png), on the same
held-out tiles. It runs the demo itself (the same training as `make demo`, in this process), so it takes as long.

    make demo-sheets   # = accelerate launch --num_processes 1 ... docs/demo_sheets.py, as `make demo` launches
    accelerate launch --num_processes 1 docs/demo_sheets.py --max_train_steps 500   # train.py flags over demo.yaml's

Launched with plain `python`, torch takes every core instead of the one thread `accelerate launch` gives a single
CPU process: float sums then round differently and the trained model (and its PSNR) differ a little from the demo's.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DEMO_ARGV = ["--config", str(REPO / "training" / "configs" / "demo.yaml")]


def load_train_script() -> ModuleType:
    """`training/train.py` as module `train` (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("train", REPO / "training" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module  # where its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> None:
    from accelerate.state import AcceleratorState, GradientState

    from hf_vitvq.training.evaluation import evaluate_reconstruction, model_reconstruction_sheet

    train = load_train_script()
    argv = [*DEMO_ARGV, *argv]
    # The model `train.main(argv)` starts from: the Trainer seeds the global generators before it builds the model.
    trainer = train.Trainer(*train.parse_args(argv))
    untrained = trainer.evaluation_model().eval()
    model_reconstruction_sheet(untrained, trainer.processor, trainer.sheet_images).image.save(
        DOCS / "demo_untrained.png"
    )
    metrics = evaluate_reconstruction(untrained, trainer.validation)
    count = sum(len(batch) for batch in trainer.validation)
    print(f"Untrained: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} on {count} validation images.")
    output_dir = trainer.output_dir
    trainer.accelerator.free_memory()
    del trainer, untrained
    AcceleratorState._reset_state(reset_partial_state=True)  # the demo's Trainer starts a clean Accelerate state
    GradientState._reset_state()

    train.main(argv)
    shutil.copyfile(output_dir / "final" / "reconstructions.png", DOCS / "demo_reconstructions.png")
    print(f"Wrote {DOCS / 'demo_untrained.png'} and {DOCS / 'demo_reconstructions.png'}.")


if __name__ == "__main__":
    main(sys.argv[1:])
