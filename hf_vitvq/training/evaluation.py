"""Validation: PSNR, SSIM and codebook health on held-out images, and the grid of originals and reconstructions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.image_processing_vitvq import to_uint8
from hf_vitvq.metrics import codebook_usage, psnr, ssim
from hf_vitvq.quantizer_base import code_perplexity


def to_unit_range(pixel_values: torch.Tensor, config: ViTVQConfig) -> torch.Tensor:
    """Pixel values in `config.pixel_value_range` -> (B, 3, H, W) float32 images in [0, 1], quantized to 8 bits as
    saved images are."""
    return to_uint8(pixel_values.float().cpu(), config.pixel_value_range).float() / 255


@torch.no_grad()
def evaluate_reconstruction(
    model: ViTVQModel, batches: list[torch.Tensor], num_tokens: int | None = None
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over `batches` of validation pixel values and, for discrete tokens, the fraction of
    codes used on them and the perplexity of those codes. `num_tokens`: reconstruct from the first `num_tokens`
    tokens only (a model trained with tail-token dropout; see [`prefix_lengths`]), whose codes the usage then counts."""
    was_training = model.training
    model.eval()
    psnrs, ssims, token_ids = [], [], []
    for pixel_values in batches:
        pixel_values = pixel_values.to(model.device, model.dtype)
        output = model(pixel_values, num_tokens=num_tokens)
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


def prefix_lengths(config: ViTVQConfig) -> list[int]:
    """The numbers of leading tokens to evaluate a model at: for a model trained with tail-token dropout,
    `config.min_num_tokens`, the powers of two above it and `num_latent_tokens` (e.g. [1, 2, 4, 8, 16, 32]); for
    other models all tokens only."""
    low, high = config.min_num_tokens, config.num_latent_tokens
    return sorted({low, *(2**exponent for exponent in range(high.bit_length()) if low < 2**exponent), high})


def chart_by_num_tokens(
    curves: dict[str, dict[int, float]], y_label: str = "PSNR (dB)", size: tuple[int, int] = (720, 440)
) -> Image.Image:
    """A line chart of a metric against the number of leading tokens decoded: one line per entry of `curves`
    (`{label: {num_tokens: value}}`), the x axis in log2 steps, a grid line at each whole unit of the y axis (at most
    12), and the labels in a legend below the lines."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    width, height = size
    font = ImageFont.load_default(size=14)
    left, right, top, bottom = 64, width - 20, 36, height - 56 - 20 * len(curves)
    xs = sorted({k for curve in curves.values() for k in curve})
    values = [v for curve in curves.values() for v in curve.values()]
    y_low, y_high = math.floor(min(values)), math.ceil(max(values))
    y_high = max(y_high, y_low + 1)
    y_step = max(1, math.ceil((y_high - y_low) / 12))

    def to_pixel(k: int, value: float) -> tuple[float, float]:
        span = max(math.log2(xs[-1] / xs[0]), 1e-9)
        x = left + (right - left) * (math.log2(k / xs[0]) / span if len(xs) > 1 else 0.5)
        return x, bottom - (bottom - top) * (value - y_low) / (y_high - y_low)

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for y_value in range(y_low, y_high + 1, y_step):
        y = to_pixel(xs[0], y_value)[1]
        draw.line([(left, y), (right, y)], fill="#dddddd")
        draw.text((left - 8, y), str(y_value), fill="black", font=font, anchor="rm")
    for k in xs:
        x = to_pixel(k, y_low)[0]
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), str(k), fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, bottom + 24), "tokens decoded (k)", fill="black", font=font, anchor="mt")
    draw.text((8, 8), y_label, fill="black", font=font, anchor="la")
    for index, (label, curve) in enumerate(curves.items()):
        color = colors[index % len(colors)]
        points = [to_pixel(k, curve[k]) for k in sorted(curve)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        legend_y = bottom + 48 + 20 * index
        draw.line([(left, legend_y), (left + 24, legend_y)], fill=color, width=3)
        draw.text((left + 32, legend_y), label, fill="black", font=font, anchor="lm")
    return image


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
    model: ViTVQModel, processor: ViTVQImageProcessor, pixel_values: torch.Tensor, num_tokens: int | None = None
) -> tuple[torch.Tensor, list[Image.Image]]:
    """Encode (B, C, H, W) pixel values to token ids and decode them: (token ids, reconstructed PIL images).
    `num_tokens`: keep only the first `num_tokens` ids of each image (a model trained with tail-token dropout)."""
    token_ids = model.encode(pixel_values.to(model.device, model.dtype), num_tokens=num_tokens)
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
