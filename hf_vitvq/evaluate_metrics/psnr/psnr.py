"""Peak signal-to-noise ratio of reconstructions against their originals (hf-vitvq), as an `evaluate` metric."""

import datasets
import evaluate
import torch

from hf_vitvq.evaluate_metrics import image_batches
from hf_vitvq.metrics import psnr

_DESCRIPTION = """
PSNR = 10 log10(255^2 / MSE) of each uint8 RGB reconstruction against its original, over all pixels and channels,
averaged over the images (`hf_vitvq.metrics.psnr`, the number the training loop's validation logs).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructions, uint8 RGB images: a (B, H, W, 3) array or tensor, or a list of (H, W, 3) arrays or
        PIL images, all of one size.
    references: the originals, in the same form and order.
    batch_size (`int`, defaults to 64): images per computation batch.
Returns:
    psnr (`float`): mean PSNR in dB (higher is better).
Examples:
    >>> import numpy as np
    >>> psnr = evaluate.load(hf_vitvq.evaluate_metrics.metric_path("psnr"))
    >>> originals = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    >>> psnr.compute(predictions=originals + 1, references=originals)["psnr"]  # MSE 1
    48.13...
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PSNR(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, predictions: list, references: list, batch_size: int = 64) -> dict[str, float]:
        values = [psnr(p, r, data_range=255) for p, r in image_batches(predictions, references, batch_size)]
        return {"psnr": torch.cat(values).mean().item()}
