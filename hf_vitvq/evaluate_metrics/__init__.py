"""Image-tokenizer metrics as `evaluate` metric modules, one folder each, shipped inside the package so that they load
offline from an installed copy:

    import evaluate
    from hf_vitvq.evaluate_metrics import metric_path

    psnr = evaluate.load(metric_path("psnr"))
    psnr.compute(predictions=reconstructions, references=originals)  # uint8 (B, H, W, 3) arrays or lists of images

| name       | inputs                                  | result keys                                                 |
| ---------- | --------------------------------------- | ----------------------------------------------------------- |
| `psnr`     | reconstructions, originals (uint8 RGB)  | `psnr` (dB, mean over images)                               |
| `ssim`     | reconstructions, originals (uint8 RGB)  | `ssim` (mean over images)                                   |
| `lpips`    | reconstructions, originals (uint8 RGB)  | `lpips` (mean over images)                                  |
| `rfid`     | reconstructions, originals (uint8 RGB)  | `rfid`; `inception_score` when the weights have a classifier |
| `codebook` | token ids per image (`codebook_size=K`) | `codebook_usage`, `perplexity`                              |

The modules compute with the same functions as the training loop (`hf_vitvq.metrics`, `hf_vitvq.quantizer_base`,
`hf_vitvq.training.fid`, `hf_vitvq.training.perceptual`). This file does not import `evaluate` (about 5 s); only the
metric files do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

METRIC_NAMES = ("psnr", "ssim", "lpips", "rfid", "codebook")


def metric_path(name: str) -> str:
    """The folder of the metric module `name` (one of `METRIC_NAMES`), to pass to `evaluate.load`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown hf-vitvq metric {name!r}: expected one of {', '.join(METRIC_NAMES)}.")
    return str(Path(__file__).resolve().parent / name)


def _to_uint8_chw(image: object, argument: str, index: int) -> torch.Tensor:
    """One RGB image (a PIL image as `datasets.Image` decodes it, or an (H, W, 3) uint8 array) -> uint8 (3, H, W)."""
    mode = getattr(image, "mode", "RGB")
    array = np.asarray(image)
    if mode != "RGB" or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"{argument}[{index}] should be an RGB uint8 image of shape (H, W, 3), got mode {mode}, "
            f"dtype {array.dtype}, shape {array.shape}."
        )
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def image_batches(
    predictions: Sequence[object], references: Sequence[object], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs of uint8 (b, 3, H, W) batches of at most `batch_size` reconstructions and their originals.

    All images must be RGB uint8 of one size (H, W); raises `ValueError` naming the first one that is not."""
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions (reconstructions) and {len(references)} references (originals): "
            "expected one reconstruction per original."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    shape = None
    for start in range(0, len(predictions), batch_size):
        pair = []
        for argument, images in (("predictions", predictions), ("references", references)):
            batch = []
            for index in range(start, min(start + batch_size, len(images))):
                image = _to_uint8_chw(images[index], argument, index)
                shape = shape or image.shape
                if image.shape != shape:
                    raise ValueError(
                        f"{argument}[{index}] has size {tuple(image.shape[1:])} (H, W), expected {tuple(shape[1:])} as "
                        "the first image: all images must have one size."
                    )
                batch.append(image)
            pair.append(torch.stack(batch))
        yield pair[0], pair[1]
