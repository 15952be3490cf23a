"""Structural similarity of reconstructions against their originals (hf-vitvq), as an `evaluate` metric."""

import datasets
import evaluate
import torch

from hf_vitvq.evaluate_metrics import image_batches
from hf_vitvq.metrics import ssim

_DESCRIPTION = """
SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 255, over the
valid window positions of each channel, averaged over channels and images (`hf_vitvq.metrics.ssim`, the number the
training loop's validation logs; equal to scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=2)`).
"""

_CITATION = """
@article{wang2004ssim,
  title={Image quality assessment: from error visibility to structural similarity},
  author={Wang, Zhou and Bovik, Alan C. and Sheikh, Hamid R. and Simoncelli, Eero P.},
  journal={IEEE Transactions on Image Processing}, volume={13}, number={4}, pages={600--612}, year={2004}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructions, uint8 RGB images: a (B, H, W, 3) array or tensor, or a list of (H, W, 3) arrays or
        PIL images, all of one size (at least 11x11).
    references: the originals, in the same form and order.
    batch_size (`int`, defaults to 64): images per computation batch.
Returns:
    ssim (`float`): mean SSIM, at most 1 (higher is better).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SSIM(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, predictions: list, references: list, batch_size: int = 64) -> dict[str, float]:
        values = [ssim(p, r, data_range=255) for p, r in image_batches(predictions, references, batch_size)]
        return {"ssim": torch.cat(values).mean().item()}
