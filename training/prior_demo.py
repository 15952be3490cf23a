"""The generation demo, end to end on embedded data (no download), a few minutes on 2 CPU cores:

    .venv/bin/python training/prior_demo.py                                   # trains a demo tokenizer first
    .venv/bin/python training/prior_demo.py --tokenizer outputs/demo/final    # or reuses `make demo`'s

1. The tokenizer: `--tokenizer`, or training/train.py with training/configs/demo.yaml, shortened to
   `--tokenizer_steps`, into OUTPUT_DIR/tokenizer.
2. Tokens: random crops of the tokenizer demo's six scikit-image training photos, one class per photo, encoded with
   `model.encode` into parquet shards in `hf-vitvq pretokenize`'s layout (`key`, `token_ids`, `label`;
   OUTPUT_DIR/tokens/{train,validation}-00000-of-00001.parquet and pretokenize_info.json). The validation crops are
   other random crops of the same photos.
3. The priors of `--priors` (default: the MaskGIT one; `--priors maskgit ar` adds the stock Llama one):
   training/train_prior.py with training/configs/prior_demo_{maskgit,ar}.yaml, into OUTPUT_DIR/{maskgit,ar}.
4. OUTPUT_DIR/samples.png: one row per class (photo): a real crop and the tokenizer's reconstruction of it, then
   samples of each prior.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from hf_vitvq import ViTVQImageProcessor, ViTVQModel
from hf_vitvq.generation_pipeline import ViTVQGenerationPipeline, load_prior
from hf_vitvq.training.data import EMBEDDED_VALIDATION_PHOTOS, sample_crop_box
from hf_vitvq.training.sample_data import SKIMAGE_PHOTOS, skimage_photos

TRAINING_DIR = Path(__file__).resolve().parent
# The tokenizer demo's training photos: one class each.
CLASS_NAMES = tuple(name for name in SKIMAGE_PHOTOS if name not in EMBEDDED_VALIDATION_PHOTOS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/prior_demo")
    parser.add_argument("--tokenizer", help="A trained tokenizer folder; default: train one (see --tokenizer_steps).")
    parser.add_argument("--tokenizer_steps", type=int, default=1500, help="Steps of the demo tokenizer (default 1500).")
    parser.add_argument("--priors", nargs="+", choices=("maskgit", "ar"), default=["maskgit"])
    parser.add_argument("--prior_steps", type=int, help="Override the prior configs' max_train_steps.")
    parser.add_argument("--train_crops", type=int, default=1000, help="Training crops per photo (default 1000).")
    parser.add_argument("--validation_crops", type=int, default=100, help="Validation crops per photo (default 100).")
    parser.add_argument("--crop_scale", type=float, nargs=2, default=(0.1, 0.5), help="Crop area range (fraction).")
    parser.add_argument("--samples_per_class", type=int, default=6, help="Samples per class and prior in the picture.")
    parser.add_argument("--guidance_scale", type=float, default=2.0, help="Guidance of the picture's samples.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def run_script(script: str, arguments: list[str]) -> None:
    """Run training/`script` with `arguments` in a child process (each run has its own Accelerate state)."""
    command = [sys.executable, str(TRAINING_DIR / script), *arguments]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def photo_crops(
    count: int, size: int, scale: tuple[float, float], seed: int
) -> tuple[list[PIL.Image.Image], list[int]]:
    """`count` random resized crops (`size` x `size`, area fraction in `scale`, mirrored half of the time) of each
    class photo, resized as the tokenizer demo resizes them (short side 4 * size); returns (crops, class labels),
    class by class."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for label, (_, photo) in enumerate(skimage_photos(CLASS_NAMES)):
        factor = 4 * size / min(photo.size)
        photo = photo.resize((round(photo.width * factor), round(photo.height * factor)), PIL.Image.Resampling.BICUBIC)
        for _ in range(count):
            box = sample_crop_box(photo.size, scale, (3 / 4, 4 / 3), rng)
            crop = photo.resize((size, size), PIL.Image.Resampling.BICUBIC, box=box)
            crops.append(crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
        labels += [label] * count
    return crops, labels


@torch.inference_mode()
def encode_images(model: ViTVQModel, processor: ViTVQImageProcessor, images: list[PIL.Image.Image]) -> torch.Tensor:
    """(N, L) token ids of `images`, 256 at a time."""
    batches = [images[start : start + 256] for start in range(0, len(images), 256)]
    return torch.cat([model.encode(processor(batch, return_tensors="pt").pixel_values) for batch in batches])


def write_token_shards(tokenizer_dir: str, output_dir: Path, args: argparse.Namespace) -> Path:
    """Encode the training and validation crops and write them as parquet shards plus pretokenize_info.json."""
    import datasets

    model = ViTVQModel.from_pretrained(tokenizer_dir).eval()
    processor = ViTVQImageProcessor.from_pretrained(tokenizer_dir)
    size = model.config.image_size
    features = datasets.Features(
        {
            "key": datasets.Value("string"),
            "token_ids": datasets.List(datasets.Value("int64")),
            "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
        }
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, count, seed in (
        ("train", args.train_crops, args.seed),
        ("validation", args.validation_crops, args.seed + 1),
    ):
        crops, labels = photo_crops(count, size, tuple(args.crop_scale), seed)
        token_ids = encode_images(model, processor, crops)
        keys = [f"{CLASS_NAMES[label]}-{split}-{index}" for index, label in enumerate(labels)]
        table = {"key": keys, "token_ids": token_ids.tolist(), "label": labels}
        datasets.Dataset.from_dict(table, features=features).to_parquet(output_dir / f"{split}-00000-of-00001.parquet")
        counts[split] = len(keys)
    info = {
        "tokenizer": str(tokenizer_dir),
        "codebook_size": model.config.codebook_size,
        "num_latent_tokens": model.config.num_latent_tokens,
        "num_sequences": counts,
        "class_names": list(CLASS_NAMES),
    }
    (output_dir / "pretokenize_info.json").write_text(json.dumps(info, indent=1))
    print(f"Wrote {counts} token sequences to {output_dir}")
    return output_dir


def demo_picture(tokenizer_dir: str, prior_dirs: dict[str, Path], path: Path, args: argparse.Namespace) -> Path:
    """One row per class: a real crop and its reconstruction by the tokenizer (the best a prior's samples can look),
    then `--samples_per_class` samples of each prior; 2x enlarged, a gap between the groups."""
    tokenizer = ViTVQModel.from_pretrained(tokenizer_dir).eval()
    processor = ViTVQImageProcessor.from_pretrained(tokenizer_dir)
    real, _ = photo_crops(1, tokenizer.config.image_size, tuple(args.crop_scale), args.seed + 2)
    reconstructed = processor.postprocess(tokenizer.decode(encode_images(tokenizer, processor, real)))
    groups = [[[image, reconstruction]] for image, reconstruction in zip(real, reconstructed, strict=True)]
    count = args.samples_per_class
    labels = [label for label in range(len(CLASS_NAMES)) for _ in range(count)]
    for name, prior_dir in prior_dirs.items():
        pipeline = ViTVQGenerationPipeline(load_prior(prior_dir), tokenizer, processor)
        sampling = {"num_steps": 8} if name == "maskgit" else {}
        generator = torch.Generator().manual_seed(args.seed)
        images = pipeline(labels, guidance_scale=args.guidance_scale, generator=generator, **sampling)
        for label, row in enumerate(groups):
            row.append(images[label * count : (label + 1) * count])
    cell, gap = 2 * tokenizer.config.image_size, 8
    width = cell * sum(len(group) for group in groups[0]) + gap * len(prior_dirs)
    picture = PIL.Image.new("RGB", (width, cell * len(CLASS_NAMES)), "white")
    for row_index, row in enumerate(groups):
        left = 0
        for group in row:
            for image in group:
                picture.paste(image.resize((cell, cell), PIL.Image.Resampling.NEAREST), (left, row_index * cell))
                left += cell
            left += gap
    picture.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        steps = str(args.tokenizer_steps)
        run_script(
            "train.py",
            ["--config", str(TRAINING_DIR / "configs" / "demo.yaml"), "--output_dir", str(output_dir / "tokenizer"),
             "--max_train_steps", steps, "--validation_steps", steps, "--checkpointing_steps", steps,
             "--report_to", "none"],
        )  # fmt: skip
        tokenizer_dir = str(output_dir / "tokenizer" / "final")
    tokens_dir = write_token_shards(tokenizer_dir, output_dir / "tokens", args)
    prior_dirs = {}
    for prior in args.priors:
        arguments = ["--config", str(TRAINING_DIR / "configs" / f"prior_demo_{prior}.yaml"),
                     "--train_data_dir", str(tokens_dir), "--tokenizer", tokenizer_dir,
                     "--output_dir", str(output_dir / prior), "--report_to", "none",
                     "--seed", str(args.seed)]  # fmt: skip
        if args.prior_steps is not None:
            arguments += ["--max_train_steps", str(args.prior_steps)]
        run_script("train_prior.py", arguments)
        prior_dirs[prior] = output_dir / prior / "final"
    picture = demo_picture(tokenizer_dir, prior_dirs, output_dir / "samples.png", args)
    print(
        f"\nThe samples are in {picture}: one row per photo ({', '.join(CLASS_NAMES)}): a real crop and its "
        f"reconstruction, then {args.samples_per_class} samples of each prior ({', '.join(prior_dirs)}). More with\n"
        f"    hf-vitvq sample {prior_dirs[args.priors[0]]} {tokenizer_dir} -o {output_dir / 'samples'} "
        "--class_labels 0 1 2 3 4 5"
    )


if __name__ == "__main__":
    main()
