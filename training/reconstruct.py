"""Tokenize images with a ViT-VQ model and write originals above reconstructions as one PNG.

    python training/reconstruct.py --model outputs/demo/final --output_dir outputs/reconstruct
    python training/reconstruct.py --model tiny   # an untrained preset: shows the plumbing, not quality

Without `--images`, it uses the sample photos that ship with scikit-image (no download).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from hf_vitvq.training.evaluation import comparison_grid, load_model, reconstruct
from hf_vitvq.training.sample_data import skimage_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model folder, Hub id, or preset name")
    parser.add_argument("--images", nargs="*", type=Path, help="image files (default: scikit-image photos)")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/reconstruct"))
    args = parser.parse_args()

    model, processor = load_model(args.model)
    model.eval()
    if args.images:
        named = [(path.stem, Image.open(path).convert("RGB")) for path in args.images]
    else:
        named = skimage_photos()
    pixel_values = processor([image for _, image in named], return_tensors="pt").pixel_values
    token_ids, reconstructions = reconstruct(model, processor, pixel_values)
    originals = processor.postprocess(pixel_values, output_type="pil")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    grid_path = args.output_dir / "reconstructions.png"
    comparison_grid(originals, reconstructions).save(grid_path)
    bits = model.config.bits_per_image
    print(f"{len(named)} images -> {token_ids.shape[1]} tokens each ({bits:.0f} bits per image)")
    for (name, _), ids in zip(named, token_ids.tolist(), strict=True):
        print(f"  {name:22s} {ids[:8]}{' ...' if len(ids) > 8 else ''}")
    print(f"originals (top) and reconstructions (bottom): {grid_path}")


if __name__ == "__main__":
    main()
