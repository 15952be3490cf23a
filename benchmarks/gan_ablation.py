"""GAN ablation: what the adversarial term does to a small tokenizer at an equal CPU budget, and what each loss term
costs per training step.

1. Cost: training steps of `training/train.py`'s `Trainer` (forward, every loss term, backward, both optimizers)
   for each configuration, interleaved step by step in one process on the same batches, so that other load on the
   machine slows them alike: images/s and the cost relative to the pixel-only step. LPIPS and ConvNeXt-S run with
   random weights (none can be downloaded here): their cost does not depend on the weights.
2. Quality: each variant trains with `training/train.py` (in this process, one after the other) from the same seed
   on `../shared/data/photos` (36 of its 180 files, spread over it, held out for validation). The pixel-only run
   trains `--max_train_steps`; each GAN run trains as many steps as part 1's costs buy in the same CPU time, with the
   discriminator from step 0 or only for the last third of that time (TiTok and VQGAN start it late); a pixel-only
   control trains as many steps as the GAN-from-step-0 run, to tell the GAN's effect from that of fewer steps. Then,
   on the held-out images: PSNR, SSIM, codebook usage, and sharpness, the ratio of the reconstructions' mean absolute
   Laplacian to the originals' (1 = as much high-frequency detail as the originals; blur gives less).

    python benchmarks/gan_ablation.py                       # both parts, the tiny preset at 32x32
    python benchmarks/gan_ablation.py --skip_quality --timing_steps 5 --output costs.json
    python benchmarks/gan_ablation.py --costs_from costs.json   # part 2 with the costs measured before
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "photos"

# train.py flags common to every run: the tiny preset with the demo's learning rate and codebook recipe.
COMMON = [
    "--model_config", "tiny",
    "--learning_rate", "1e-3",
    "--lr_scheduler", "cosine",
    "--dataloader_num_workers", "0",
    "--report_to", "none",
    "--logging_steps", "50",
]  # fmt: skip
# The discriminator at the width that suits 32-64 px images (its cost grows with the width's square).
DISCRIMINATOR = ["--discriminator_hidden_channels", "32"]
PIXEL = "pixel (L2 + quantizer)"
FIXED, ADAPTIVE = "+ discriminator, width 32", "+ discriminator, width 32, adaptive weight"


@dataclass
class QualityVariant:
    """A training run of part 2: its train.py flags, the cost variant whose step cost its discriminator steps have
    (None: pixel-only), the fraction of the CPU budget spent with the discriminator on (it starts once the rest is
    spent), or, for a control run, the variant whose number of steps it trains for instead of the budget."""

    flags: list[str]
    cost: str | None = None
    gan_budget: float = 1.0
    steps_of: str | None = None


QUALITY_VARIANTS: dict[str, QualityVariant] = {
    PIXEL: QualityVariant([]),
    "+ GAN x 0.1 (TiTok's fixed weight) from step 0": QualityVariant(
        [*DISCRIMINATOR, "--discriminator_weight", "0.1"], cost=FIXED
    ),
    "pixel, as many steps as the row above": QualityVariant(
        [], steps_of="+ GAN x 0.1 (TiTok's fixed weight) from step 0"
    ),
    "+ GAN x 0.1 (fixed) in the last third of the budget": QualityVariant(
        [*DISCRIMINATOR, "--discriminator_weight", "0.1"], cost=FIXED, gan_budget=1 / 3
    ),
    "+ GAN x 0.01 (TiTok's stage 2) in the last third": QualityVariant(
        [*DISCRIMINATOR, "--discriminator_weight", "0.01"], cost=FIXED, gan_budget=1 / 3
    ),
    "+ GAN, adaptive x 0.8 (VQGAN's), in the last third": QualityVariant(
        [*DISCRIMINATOR, "--discriminator_weight", "0.8", "--gan_weight_mode", "adaptive"],
        cost=ADAPTIVE,
        gan_budget=1 / 3,
    ),
}


def schedule(variant: QualityVariant, pixel_steps: int, costs: dict[str, float]) -> tuple[int, int]:
    """(steps, discriminator start step) that spend the pixel-only run's CPU time: the pixel-only steps first, then
    the discriminator's, each costing `costs[PIXEL] / costs[variant.cost]` pixel-only steps."""
    if variant.cost is None:
        return pixel_steps, 0
    start = round(pixel_steps * (1 - variant.gan_budget))
    return start + round(pixel_steps * variant.gan_budget * costs[variant.cost] / costs[PIXEL]), start


def cost_variants(lpips_trunk: Path, convnext_folder: Path) -> dict[str, list[str]]:
    return {
        PIXEL: [],
        FIXED: [*DISCRIMINATOR, "--discriminator_weight", "0.1"],
        "+ discriminator, width 128 (TiTok's)": ["--discriminator_weight", "0.1"],
        ADAPTIVE: [*DISCRIMINATOR, "--discriminator_weight", "0.1", "--gan_weight_mode", "adaptive"],
        "+ LPIPS (VGG16)": ["--lpips_weight", "1", "--lpips_trunk", str(lpips_trunk)],
        "+ ConvNeXt-S (at 224 px)": ["--convnext_weight", "0.1", "--convnext_model", str(convnext_folder)],
    }


def load_train_script():
    spec = importlib.util.spec_from_file_location("train", REPO / "training" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    return module


def release(trainers: list) -> None:
    """End the trainers' Accelerate state, so that the next ones start clean."""
    from accelerate.state import AcceleratorState, GradientState

    for trainer in trainers:
        trainer.accelerator.free_memory()
    trainers.clear()
    gc.collect()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def random_weight_files(folder: Path) -> tuple[Path, Path]:
    """A VGG16 file under torchvision's names and a ConvNeXt-S folder, both randomly initialised (timing only)."""
    from transformers import ConvNextForImageClassification

    from hf_vitvq.training.perceptual import VGG16Features, convnext_small_config

    lpips_trunk = folder / "vgg16-random.pth"
    torch.save(VGG16Features().state_dict(), lpips_trunk)
    convnext_folder = folder / "convnext-small-random"
    ConvNextForImageClassification(convnext_small_config()).save_pretrained(convnext_folder)
    return lpips_trunk, convnext_folder


def measure_costs(train, args, work_dir: Path) -> dict[str, float]:
    """Images/s of each cost variant's training step, interleaved on the same batches: the median of `--timing_steps`
    steps after one warm-up step, or of fewer (at least 2) for a variant once its timed steps took
    `--max_timing_seconds`."""
    from hf_vitvq.training.arguments import parse_args

    lpips_trunk, convnext_folder = random_weight_files(work_dir)
    common = [*COMMON, "--train_data_dir", str(args.photos), "--resolution", str(args.resolution),
              "--train_batch_size", str(args.batch_size), "--max_train_steps", "1000", "--lr_warmup_steps", "0",
              "--validation_images", "8", "--seed", str(args.seed)]  # fmt: skip
    trainers, names = [], []
    for name, flags in cost_variants(lpips_trunk, convnext_folder).items():
        trainer = train.Trainer(*parse_args([*common, *flags, "--output_dir", str(work_dir / "cost")]))
        trainer.set_train_mode()
        trainers.append(trainer)
        names.append(name)
    batches = trainers[0].stream.batches(args.batch_size)
    batches = [next(batches) for _ in range(args.timing_steps + 1)]
    times: dict[str, list[float]] = {name: [] for name in names}
    for index, batch in enumerate(batches):
        for name, trainer in zip(names, trainers, strict=True):
            if len(times[name]) >= 2 and sum(times[name]) > args.max_timing_seconds:
                continue
            start = time.perf_counter()
            trainer.train_step(batch.pixel_values, batch.stream_state)
            if index > 0:  # the first step warms up
                times[name].append(time.perf_counter() - start)
    release(trainers)
    return {name: args.batch_size / sorted(values)[len(values) // 2] for name, values in times.items()}


def read_costs(path: Path) -> dict[str, float]:
    """The costs that an earlier run wrote with `--output`."""
    return json.loads(path.read_text())["costs"]


def laplacian_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute 4-neighbour Laplacian of (B, C, H, W) images (inner pixels, every channel)."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    channels = images.shape[1]
    return F.conv2d(images, kernel.expand(channels, 1, 3, 3), groups=channels).abs().mean()


@torch.no_grad()
def sharpness_ratio(model, batches: list[torch.Tensor]) -> float:
    """Mean |Laplacian| of the reconstructions over that of the originals, both as 8-bit images in [0, 1]."""
    from hf_vitvq.training.evaluation import to_unit_range

    model.eval()
    originals, reconstructions = [], []
    for pixel_values in batches:
        originals.append(to_unit_range(pixel_values, model.config))
        reconstructions.append(to_unit_range(model(pixel_values).reconstruction, model.config))
    return (laplacian_energy(torch.cat(reconstructions)) / laplacian_energy(torch.cat(originals))).item()


def train_and_evaluate(train, argv: list[str]) -> dict[str, float]:
    """Train with `argv`, then evaluate the final (raw) model on the run's held-out validation images."""
    from hf_vitvq.training.arguments import parse_args
    from hf_vitvq.training.evaluation import evaluate_reconstruction

    trainer = train.Trainer(*parse_args(argv))
    try:
        start = time.perf_counter()
        trainer.run()
        minutes = (time.perf_counter() - start) / 60
        model = trainer.evaluation_model()
        metrics = evaluate_reconstruction(model, trainer.validation)
        metrics["sharpness"] = sharpness_ratio(model, trainer.validation)
        metrics["minutes"] = minutes
        metrics["images"] = sum(len(batch) for batch in trainer.validation)
    finally:
        release([trainer])
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_train_steps", type=int, default=1500, help="Steps of the pixel-only run.")
    parser.add_argument("--timing_steps", type=int, default=8)
    parser.add_argument("--max_timing_seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(QUALITY_VARIANTS), choices=list(QUALITY_VARIANTS),
                        metavar="NAME", help="The training runs of part 2 (default: all).")  # fmt: skip
    parser.add_argument("--skip_quality", action="store_true", help="Measure the costs only.")
    parser.add_argument("--costs_from", type=Path, default=None, help="The JSON of an earlier run: its costs.")
    parser.add_argument("--output", type=Path, default=None, help="Also write the results as JSON here.")
    parser.add_argument(
        "--output_dir", type=Path, default=None, help="Keep the training runs (models, validation grids) here."
    )
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        raise ValueError(f"--photos {args.photos}: no such folder.")

    train = load_train_script()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}. tiny preset at {args.resolution}x{args.resolution}, batch {args.batch_size}, seed "
        f"{args.seed}, data {args.photos}.\n"
    )
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        output_dir = work_dir if args.output_dir is None else args.output_dir
        costs = measure_costs(train, args, work_dir) if args.costs_from is None else read_costs(args.costs_from)
        baseline = costs[PIXEL]
        source = (
            f"from {args.costs_from}" if args.costs_from else f"median of up to {args.timing_steps} interleaved steps"
        )
        print(f"Training-step cost ({source}):\n")
        print("| loss terms | images / s | time per step vs pixel-only |\n|---|---|---|")
        for name, images_per_second in costs.items():
            print(f"| {name} | {images_per_second:.1f} | {baseline / images_per_second:.2f}x |")
        results: dict = {"costs": costs, "quality": {}}

        if not args.skip_quality:
            print(
                f"\nQuality at an equal CPU budget (the pixel-only run's {args.max_train_steps} steps; each GAN run "
                "gets the steps its measured costs buy in that time):\n"
            )
            print("| variant | steps | discriminator from step | val PSNR (dB) | SSIM | codebook usage | sharpness "
                  "| minutes |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|")
            for index, (name, variant) in enumerate(QUALITY_VARIANTS.items()):
                if name not in args.variants:
                    continue
                steps, start = schedule(variant, args.max_train_steps, costs)
                if variant.steps_of is not None:
                    steps, _ = schedule(QUALITY_VARIANTS[variant.steps_of], args.max_train_steps, costs)
                run_argv = [*COMMON, "--train_data_dir", str(args.photos), "--resolution", str(args.resolution),
                            "--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps),
                            "--seed", str(args.seed), "--checkpointing_steps", str(steps), "--validation_images", "36",
                            "--validation_steps", str(steps), "--output_dir", str(output_dir / f"run{index}"),
                            "--discriminator_start_step", str(start), *variant.flags]  # fmt: skip
                metrics = train_and_evaluate(train, run_argv)
                results["quality"][name] = {"steps": steps, "discriminator_start_step": start, **metrics}
                print(
                    f"| {name} | {steps} | {start if variant.cost else '-'} | {metrics['psnr']:.2f} | "
                    f"{metrics['ssim']:.3f} | {metrics['codebook_usage']:.1%} | {metrics['sharpness']:.3f} | "
                    f"{metrics['minutes']:.1f} |",
                    flush=True,
                )
            print(f"\n{metrics['images']} held-out validation images.")
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
