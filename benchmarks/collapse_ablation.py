"""Codebook-collapse ablation: the same tiny model, data and CPU training budget for each quantizer recipe.

Trains the `tiny` preset (32x32 crops, 32 tokens, ~1024 codes) on `../shared/data/photos`: every file but the last
20 (sorted by name) for training, random crops of 2-25 % of the image area resized to 32x32; the last 20 photos,
resized to 128 px and cut into 16 tiles of 32x32 each, for validation. AdamW, linear warm-up then cosine decay,
loss = MSE + the quantizer's loss. Reports per variant: validation PSNR, codebook usage and perplexity of the
validation tokens, the training-window usage and dead codes from `ViTVQModel.codebook_health()`, and wall time.

A minimal loop rather than `training/train.py`, so that every variant sees exactly the same crops in the same order.

    python benchmarks/collapse_ablation.py                       # all variants, 1500 steps each
    python benchmarks/collapse_ablation.py --variants "FSQ [8, 5, 5, 5]" "LFQ 2^10" --max_train_steps 300
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hf_vitvq import ViTVQConfig, ViTVQModel
from hf_vitvq.metrics import codebook_usage, psnr
from hf_vitvq.quantizer_base import code_perplexity

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"

# Config overrides of the `tiny` preset (1024 codes of dimension 12, l2-normalised) per recipe.
VARIANTS: dict[str, dict] = {
    "plain VQ (Euclidean; seed recipe)": {"use_l2_norm_codes": False},
    "l2-factorized VQ (TiTok)": {},
    "l2 + EMA + restart": {"use_ema_codebook": True, "dead_code_steps": 50},
    "Euclidean + EMA + restart": {"use_l2_norm_codes": False, "use_ema_codebook": True, "dead_code_steps": 50},
    "VQ + rotation trick (Euclidean)": {"use_l2_norm_codes": False, "use_rotation_trick": True},
    "Euclidean + EMA + restart + rotation trick": {
        "use_l2_norm_codes": False,
        "use_ema_codebook": True,
        "dead_code_steps": 50,
        "use_rotation_trick": True,
    },
    "SimVQ (Euclidean)": {"use_l2_norm_codes": False, "use_simvq": True},
    "SimVQ (l2)": {"use_simvq": True},
    "FSQ [8, 5, 5, 5]": {"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5], "codebook_dim": 4, "codebook_size": 1000},
    "LFQ 2^10": {"quantizer_type": "lfq", "codebook_dim": 10, "codebook_size": 1024, "entropy_loss_weight": 0.1},
}


def load_photos(paths: list[Path], short_side: int) -> list[Image.Image]:
    """RGB images resized so that their short side is `short_side`."""
    images = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        scale = short_side / min(image.size)
        images.append(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))
    return images


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1


def random_crops(images: list[Image.Image], batch: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """`batch` square crops covering 2-25 % of a random image's area, resized to `size`, randomly flipped."""
    crops = []
    for index in rng.integers(len(images), size=batch):
        image = images[index]
        side = round(math.sqrt(rng.uniform(0.02, 0.25) * image.width * image.height))
        side = min(side, image.width, image.height)
        left, top = rng.integers(image.width - side + 1), rng.integers(image.height - side + 1)
        crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        crops.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return to_pixels(crops)


def validation_tiles(images: list[Image.Image], tiles_per_side: int, size: int) -> torch.Tensor:
    """Centre square of each image at `tiles_per_side * size` px, cut into non-overlapping `size` tiles."""
    side = tiles_per_side * size
    tiles = []
    for image in images:
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        for row in range(tiles_per_side):
            for col in range(tiles_per_side):
                tiles.append(square.crop((col * size, row * size, (col + 1) * size, (row + 1) * size)))
    return to_pixels(tiles)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def evaluate(model: ViTVQModel, tiles: torch.Tensor) -> dict[str, float]:
    model.eval()
    output = model(tiles)
    model.train()
    reconstruction = ((output.reconstruction.clamp(-1, 1) + 1) / 2 * 255).round() / 255  # as saved 8-bit images
    size = model.config.codebook_size
    return {
        "psnr": psnr(reconstruction, (tiles + 1) / 2).mean().item(),
        "usage": codebook_usage(output.token_ids, size).item(),
        "perplexity": code_perplexity(output.token_ids, size).item(),
    }


def train_variant(overrides: dict, train_images, tiles, args) -> dict[str, float]:
    torch.manual_seed(args.seed)
    model = ViTVQModel(ViTVQConfig.from_preset("tiny", **overrides)).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)  # the same crops, in the same order, for every variant
    start = time.perf_counter()
    for step in range(args.max_train_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.max_train_steps, args.learning_rate, args.warmup_steps)
        pixels = random_crops(train_images, args.batch_size, model.config.image_size, rng)
        output = model(pixels)
        loss = F.mse_loss(output.reconstruction, pixels) + output.quantizer_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    health = model.codebook_health()
    return {
        **evaluate(model, tiles),
        "window_usage": health["codebook_usage"].item(),
        "window_perplexity": health["window_perplexity"].item(),
        "dead_codes": int(health["dead_codes"]),
        "codebook_size": model.config.codebook_size,
        "minutes": (time.perf_counter() - start) / 60,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--max_train_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--validation_files", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    files = sorted(args.photos.glob("*.jpg"))
    if len(files) <= args.validation_files:
        raise ValueError(f"{args.photos} has {len(files)} photos; need more than --validation_files.")
    train_images = load_photos(files[: -args.validation_files], short_side=256)
    tiles = validation_tiles(load_photos(files[-args.validation_files :], short_side=128), 4, 32)
    variants = {name: VARIANTS[name] for name in args.variants}
    print(
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
        f"{len(files) - args.validation_files} training photos, {tiles.shape[0]} validation tiles "
        f"({args.validation_files} photos); {args.max_train_steps} steps at batch {args.batch_size}, "
        f"AdamW lr {args.learning_rate}, seed {args.seed}.\n"
    )
    print(
        "| variant | codes | val PSNR (dB) | val usage | val perplexity | train-window usage | window perplexity "
        "| dead codes | minutes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, overrides in variants.items():
        r = train_variant(overrides, train_images, tiles, args)
        print(
            f"| {name} | {r['codebook_size']} | {r['psnr']:.2f} | {r['usage']:.1%} | {r['perplexity']:.0f} "
            f"| {r['window_usage']:.1%} | {r['window_perplexity']:.0f} | {r['dead_codes']} | {r['minutes']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
