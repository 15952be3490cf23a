"""Validation: PSNR, SSIM and codebook health on held-out images, and a grid of reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hf_vitvq import ViTVQImageProcessor, ViTVQModel
from hf_vitvq.metrics import codebook_usage, psnr, ssim
from hf_vitvq.quantizer_base import code_perplexity


def to_unit_range(processor: ViTVQImageProcessor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixel values -> (B, 3, H, W) float images in [0, 1], quantized to 8 bits as saved images are."""
    return processor.postprocess(pixel_values, output_type="pt").float() / 255


@torch.no_grad()
def evaluate_reconstruction(
    model: ViTVQModel, processor: ViTVQImageProcessor, batches: list[torch.Tensor]
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over `batches` of validation pixel values and, for discrete tokens, the fraction of
    codes used on them and the perplexity of those codes."""
    was_training = model.training
    model.eval()
    psnrs, ssims, token_ids = [], [], []
    for pixel_values in batches:
        pixel_values = pixel_values.to(model.device, model.dtype)
        output = model(pixel_values)
        originals = to_unit_range(processor, pixel_values.float().cpu())
        reconstructions = to_unit_range(processor, output.reconstruction.float().cpu())
        psnrs.append(psnr(reconstructions, originals))
        ssims.append(ssim(reconstructions, originals))
        if output.token_ids is not None:
            token_ids.append(output.token_ids.cpu())
    model.train(was_training)
    metrics = {"psnr": torch.cat(psnrs).mean().item(), "ssim": torch.cat(ssims).mean().item()}
    if token_ids:  # discrete tokens (continuous "kl" tokens have no ids)
        all_ids = torch.cat(token_ids)
        codebook_size = model.config.codebook_size
        metrics["codebook_usage"] = codebook_usage(all_ids, codebook_size).item()
        metrics["perplexity"] = code_perplexity(all_ids, codebook_size).item()
    return metrics


@torch.no_grad()
def save_validation_grid(
    model: ViTVQModel, processor: ViTVQImageProcessor, pixel_values: torch.Tensor, path: Path, count: int = 8
) -> np.ndarray:
    """Write originals (top row) above their reconstructions (bottom row) as a PNG; returns the (H, W, 3) uint8."""
    from reconstruct import comparison_grid

    pixel_values = pixel_values[:count].to(model.device, model.dtype)
    was_training = model.training
    model.eval()
    reconstruction = model(pixel_values).reconstruction
    model.train(was_training)
    originals = processor.postprocess(pixel_values.float().cpu(), output_type="pil")
    reconstructions = processor.postprocess(reconstruction.float().cpu(), output_type="pil")
    grid = comparison_grid(originals, reconstructions)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return np.asarray(grid)
