"""Tail-token dropout: reconstruction quality from the first k tokens, for the demo model trained with and without it.

Trains the demo's model (`tiny` preset: 32x32 images, 16 patches, 32 tokens; the `ema_restart` codebook recipe of
training/configs/demo.yaml) once per variant, with the data, crops and budget of benchmarks/collapse_ablation.py
(AdamW, warm-up then cosine, loss = MSE + the quantizer's loss, grad-norm clip 1), all variants in lockstep on the same
batches, so that machine load slows them alike. Then, on the validation tiles, PSNR and SSIM (8-bit-rounded
reconstructions, as saved images) when the decoder reads only the first k tokens:

- a model trained with `token_dropout="tail"`: `model(pixels, num_tokens=k)`, the missing tokens read as its learned
  `dropped_token_embedding`;
- the plain model (`token_dropout="none"`), which has no such embedding and whose `decode` rejects prefixes: the
  missing tokens are filled in latent space, then `decode_latents` on all 32. Two fills: the mean of its codebook,
  and, per position, the mean of the codes it gives 1024 training crops (the best constant guess of each missing
  code); the better of the two is the baseline.

    python benchmarks/token_dropout.py                           # every variant, 4000 steps (the demo's budget)
    python benchmarks/token_dropout.py --variants plain "tail U[1,32]" --max_train_steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from collapse_ablation import PHOTOS, learning_rate, load_photos, random_crops, validation_tiles

from hf_vitvq import ViTVQConfig, ViTVQModel
from hf_vitvq.metrics import psnr, ssim
from hf_vitvq.training.arguments import CODEBOOK_RECIPES
from hf_vitvq.training.evaluation import chart_by_num_tokens, evaluate_reconstruction, to_unit_range
from hf_vitvq.training.trainer_utils import parameter_groups

# Config overrides of the demo model (`tiny` preset with the `ema_restart` codebook recipe) per variant.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "tail U[1,32]": {"token_dropout": "tail", "tail_dropout_prob": 1.0},
    "tail U[1,32], p=0.5": {"token_dropout": "tail"},  # the default tail_dropout_prob
    "tail k in {1,2,4,...,32}": {
        "token_dropout": "tail",
        "tail_dropout_lengths": [1, 2, 4, 8, 16, 32],
        "tail_dropout_prob": 1.0,
    },
}
NUM_TOKENS = (1, 2, 4, 8, 16, 32)


def demo_model(overrides: dict, seed: int) -> ViTVQModel:
    torch.manual_seed(seed)
    config = ViTVQConfig.from_preset("tiny", **CODEBOOK_RECIPES["ema_restart"], **overrides)
    return ViTVQModel(config).train()


def fill_tail(latents: torch.Tensor, num_tokens: int, fill: torch.Tensor) -> torch.Tensor:
    """(B, L, D) latents with positions `num_tokens`.. replaced by `fill`, (D,) or (L, D)."""
    filled = fill.expand_as(latents).clone()
    filled[:, :num_tokens] = latents[:, :num_tokens]
    return filled


@torch.no_grad()
def plain_prefix_metrics(model: ViTVQModel, tiles: torch.Tensor, fill: torch.Tensor) -> dict[int, dict[str, float]]:
    """PSNR and SSIM of the plain model at each k of `NUM_TOKENS`, the missing latents set to `fill`."""
    model.eval()
    latents = model(tiles).quantized_latents  # (N, L, D)
    originals = to_unit_range(tiles, model.config)
    metrics = {}
    for k in NUM_TOKENS:
        reconstruction = to_unit_range(model.decode_latents(fill_tail(latents, k, fill)), model.config)
        metrics[k] = {"psnr": psnr(reconstruction, originals).mean().item(), "ssim": ssim(reconstruction, originals)
                      .mean().item()}  # fmt: skip
    model.train()
    return metrics


@torch.no_grad()
def position_mean_codes(model: ViTVQModel, crops: torch.Tensor) -> torch.Tensor:
    """(L, D): per position, the mean of the codes the model gives `crops`."""
    model.eval()
    means = model(crops).quantized_latents.mean(dim=0)
    model.train()
    return means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--max_train_steps", type=int, default=4000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--validation_files", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine, 2 threads ran 17x slower)"
    )
    parser.add_argument("--output_json", type=Path, default=Path("outputs/benchmarks/token_dropout.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/token_dropout.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    files = sorted(args.photos.glob("*.jpg"))
    if len(files) <= args.validation_files:
        raise ValueError(f"{args.photos} has {len(files)} photos; need more than --validation_files.")
    train_images = load_photos(files[: -args.validation_files], short_side=256)
    tiles = validation_tiles(load_photos(files[-args.validation_files :], short_side=128), 4, 32)
    load_before = os.getloadavg()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, load average {load_before[0]:.2f} / {load_before[1]:.2f} (1 / 5 min). "
        f"{len(files) - args.validation_files} training photos, {tiles.shape[0]} validation tiles; "
        f"{args.max_train_steps} steps at batch {args.batch_size}, AdamW lr {args.learning_rate}, seed {args.seed}.\n"
    )
    models = {name: demo_model(VARIANTS[name], args.seed) for name in args.variants}
    optimizers = {
        name: torch.optim.AdamW(parameter_groups(model, 1e-4), lr=args.learning_rate, betas=(0.9, 0.99))
        for name, model in models.items()
    }
    seconds = dict.fromkeys(models, 0.0)
    rng = np.random.default_rng(args.seed)  # one crop stream, every variant trains on the same batches
    for step in range(args.max_train_steps):
        pixels = random_crops(train_images, args.batch_size, 32, rng)
        for name, model in models.items():
            start = time.perf_counter()
            for group in optimizers[name].param_groups:
                group["lr"] = learning_rate(step, args.max_train_steps, args.learning_rate, args.warmup_steps)
            output = model(pixels)
            (F.mse_loss(output.reconstruction, pixels) + output.quantizer_loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            seconds[name] += time.perf_counter() - start

    results: dict[str, dict[int, dict[str, float]]] = {}
    batches = list(tiles.split(64))
    mean_crops = random_crops(train_images, 1024, 32, np.random.default_rng(args.seed + 1))
    for name, model in models.items():
        if model.config.token_dropout == "tail":
            results[name] = {k: evaluate_reconstruction(model, batches, num_tokens=k) for k in NUM_TOKENS}
        else:
            codebook = model.quantize.indices_to_codes(torch.arange(model.config.codebook_size)[None])[0]
            results[f"{name}, codebook-mean fill"] = plain_prefix_metrics(model, tiles, codebook.mean(dim=0))
            results[f"{name}, position-mean fill"] = plain_prefix_metrics(
                model, tiles, position_mean_codes(model, mean_crops)
            )
    load_after = os.getloadavg()

    header = " | ".join(f"k={k}" for k in NUM_TOKENS)
    for metric, digits in (("psnr", 2), ("ssim", 3)):
        print(f"\nValidation {metric.upper()} from the first k tokens\n\n| variant | {header} |")
        print("|---|" + "---|" * len(NUM_TOKENS))
        for name, by_k in results.items():
            print(f"| {name} | " + " | ".join(f"{by_k[k][metric]:.{digits}f}" for k in NUM_TOKENS) + " |")
    print("\nTraining time (s, all steps): " + ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()))
    print(f"Load average after: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} (1 / 5 / 15 min).")

    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(
        json.dumps(
            {
                "args": {
                    **vars(args),
                    "photos": str(args.photos),
                    "output_json": str(args.output_json),
                    "plot": str(args.plot),
                },
                "results": results,
                "train_seconds": seconds,
                "load_average": {"before": load_before, "after": load_after},
            },
            indent=1,
        )  # fmt: skip
    )
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    chart_by_num_tokens({name: {k: m["psnr"] for k, m in by_k.items()} for name, by_k in results.items()}).save(
        args.plot
    )
    print(f"\n{args.output_json}, {args.plot}")


if __name__ == "__main__":
    main()
