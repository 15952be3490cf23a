"""Validation: PSNR, SSIM and codebook health on held-out images, and the grid of originals and reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.image_processing_vitvq import to_uint8
from hf_vitvq.metrics import codebook_usage, psnr, ssim
from hf_vitvq.quantizer_base import code_perplexity


def to_unit_range(pixel_values: torch.Tensor, config: ViTVQConfig) -> torch.Tensor:
    """Pixel values in `config.pixel_value_range` -> (B, 3, H, W) float32 images in [0, 1], quantized to 8 bits as
    saved images are."""
    return to_uint8(pixel_values.float().cpu(), config.pixel_value_range).float() / 255


@torch.no_grad()
def evaluate_reconstruction(model: ViTVQModel, batches: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over `batches` of validation pixel values and, for discrete tokens, the fraction of
    codes used on them and the perplexity of those codes."""
    was_training = model.training
    model.eval()
    psnrs, ssims, token_ids = [], [], []
    for pixel_values in batches:
        pixel_values = pixel_values.to(model.device, model.dtype)
        output = model(pixel_values)
        originals = to_unit_range(pixel_values, model.config)
        reconstructions = to_unit_range(output.reconstruction, model.config)
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


def comparison_grid(originals: list[Image.Image], reconstructions: list[Image.Image]) -> Image.Image:
    """One image: `originals` in the top row, `reconstructions` below them, all the size of the first."""
    width, height = originals[0].size
    grid = Image.new("RGB", (width * len(originals), 2 * height))
    for column, (original, reconstruction) in enumerate(zip(originals, reconstructions, strict=True)):
        grid.paste(original.resize((width, height)), (column * width, 0))
        grid.paste(reconstruction.resize((width, height)), (column * width, height))
    return grid


@torch.inference_mode()
def reconstruct(
    model: ViTVQModel, processor: ViTVQImageProcessor, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, list[Image.Image]]:
    """Encode (B, C, H, W) pixel values to token ids and decode them: (token ids, reconstructed PIL images)."""
    token_ids = model.encode(pixel_values.to(model.device, model.dtype))
    return token_ids, processor.postprocess(model.decode(token_ids).float().cpu(), output_type="pil")


def save_reconstruction_grid(
    model: ViTVQModel, processor: ViTVQImageProcessor, pixel_values: torch.Tensor, path: Path, count: int = 8
) -> np.ndarray:
    """Encode and decode the first `count` of `pixel_values` and write the originals (top row) above their
    reconstructions (bottom row) as a PNG at `path`; returns the grid as an (H, W, 3) uint8 array."""
    pixel_values = pixel_values[:count]
    _, reconstructions = reconstruct(model, processor, pixel_values)
    grid = comparison_grid(processor.postprocess(pixel_values.float().cpu(), output_type="pil"), reconstructions)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return np.asarray(grid)


def load_model(name_or_path: str) -> tuple[ViTVQModel, ViTVQImageProcessor]:
    """A trained model folder (or Hub id), or an untrained preset such as `tiny`."""
    if name_or_path in ViTVQConfig.presets():
        model = ViTVQModel(ViTVQConfig.from_preset(name_or_path))
        return model, ViTVQImageProcessor.for_config(model.config)
    return ViTVQModel.from_pretrained(name_or_path), ViTVQImageProcessor.from_pretrained(name_or_path)
