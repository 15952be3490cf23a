"""LPIPS (v0.1, VGG16) of reconstructions against their originals (hf-vitvq), as an `evaluate` metric."""

from typing import Any

import datasets
import evaluate
import torch

from hf_vitvq.evaluate_metrics import image_batches

_DESCRIPTION = """
LPIPS v0.1 with the VGG16 trunk (Zhang et al. 2018), the perceptual distance TiTok and most tokenizer papers report,
computed with `hf_vitvq.training.perceptual.LPIPS` (no torchvision) on the uint8 images mapped to [-1, 1], averaged
over the images. The trunk is torchvision's ImageNet VGG16 file (`vgg16-397923af.pth`): pass its path as
`lpips_trunk`, or have it in the torch hub cache; the v0.1 heads come from the installed torchmetrics wheel.
"""

_CITATION = """
@inproceedings{zhang2018perceptual,
  title={The Unreasonable Effectiveness of Deep Features as a Perceptual Metric},
  author={Zhang, Richard and Isola, Phillip and Efros, Alexei A. and Shechtman, Eli and Wang, Oliver},
  booktitle={CVPR}, year={2018}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructions, uint8 RGB images: a (B, H, W, 3) array or tensor, or a list of (H, W, 3) arrays or
        PIL images, all of one size (at least 16x16).
    references: the originals, in the same form and order.
    lpips_trunk (`str`, *optional*): torchvision's VGG16 state dict file; without it the torch hub cache is used, and
        a download is tried when the file is not there.
    lpips_heads (`str`, *optional*): the LPIPS v0.1 heads file (`vgg.pth`); found in torchmetrics' wheel by default.
    batch_size (`int`, defaults to 16): image pairs per network pass.
    device (`str`, *optional*): where to run the network, e.g. "cuda"; CPU by default.
Returns:
    lpips (`float`): mean LPIPS distance (lower is better).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LPIPS(evaluate.Metric):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._networks = {}  # (lpips_trunk, lpips_heads) -> the loaded LPIPS network, so that compute() loads once

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _network(self, lpips_trunk: str | None, lpips_heads: str | None) -> torch.nn.Module:
        from hf_vitvq.training.perceptual import LPIPS as LPIPSNetwork

        key = (lpips_trunk, lpips_heads)
        if key not in self._networks:
            self._networks[key] = LPIPSNetwork(lpips_trunk=lpips_trunk, lpips_heads=lpips_heads)
        return self._networks[key]

    def _compute(
        self,
        predictions: list,
        references: list,
        lpips_trunk: str | None = None,
        lpips_heads: str | None = None,
        batch_size: int = 16,
        device: str | None = None,
    ) -> dict[str, float]:
        device = torch.device(device or "cpu")
        network = self._network(lpips_trunk, lpips_heads).to(device)
        distances = []
        with torch.no_grad():
            for reconstructions, originals in image_batches(predictions, references, batch_size):
                # uint8 0..255 -> [-1, 1]
                reconstructions = reconstructions.to(device).float() / 127.5 - 1
                originals = originals.to(device).float() / 127.5 - 1
                distances.append(network(reconstructions, originals).cpu())
        return {"lpips": torch.cat(distances).mean().item()}
