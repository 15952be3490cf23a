"""Validation: PSNR, SSIM and codebook health on held-out images, and the sheet of originals beside their
reconstructions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.metrics import codebook_usage, psnr, ssim
from hf_vitvq.model_card import compression_numbers
from hf_vitvq.pixel_conversion import to_uint8
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


@torch.inference_mode()
def reconstruct(
    model: ViTVQModel, processor: ViTVQImageProcessor, pixel_values: torch.Tensor, num_tokens: int | None = None
) -> tuple[torch.Tensor, list[Image.Image]]:
    """Encode (B, C, H, W) pixel values to token ids and decode them: (token ids, reconstructed PIL images).
    `num_tokens`: keep only the first `num_tokens` ids of each image (a model trained with tail-token dropout)."""
    token_ids = model.encode(pixel_values.to(model.device, model.dtype), num_tokens=num_tokens)
    return token_ids, processor.postprocess(model.decode(token_ids).float().cpu(), output_type="pil")


SHEET_MIN_TILE_SIZE = 128  # pixels: smaller images are enlarged (nearest neighbour) to at least this on a sheet
SHEET_PAIRS_PER_ROW = 4
SHEET_IMAGES = 8  # image pairs on a validation sheet


@dataclass
class ReconstructionSheet:
    """A reconstruction sheet (see [`reconstruction_sheet`]) and the numbers written on it."""

    image: Image.Image
    psnrs: list[float]  # dB, of each pair, in the order drawn (written under the pair, to one decimal)
    caption: str  # what the tokens are: `token_caption(config)`
    scale: int  # each image pixel is drawn as a `scale` x `scale` block
    original_boxes: list[tuple[int, int, int, int]]  # (left, top, right, bottom) of each original on `image`
    reconstruction_boxes: list[tuple[int, int, int, int]]


def sheet_scale(image_size: int, min_tile_size: int = SHEET_MIN_TILE_SIZE) -> int:
    """The whole-number enlargement that draws an `image_size`-pixel image at least `min_tile_size` pixels wide (1
    for images that are already)."""
    return max(1, math.ceil(min_tile_size / image_size))


def _short_number(value: float) -> str:
    """`value` without decimals when it is whole (10, 320), else to 2 decimals (9.97)."""
    return f"{value:.0f}" if value == round(value) else f"{value:.2f}"


def token_caption(config: ViTVQConfig, num_tokens: int | None = None) -> str:
    """What one image becomes (or its first `num_tokens` tokens), from `compression_numbers`: e.g. "32 tokens per
    32x32 image, each one of 1024 codes (10 bits): 320 bits per image (0.312 bits per pixel)"; residual VQ counts one
    token per level and says so."""
    numbers = compression_numbers(config, num_tokens)
    tokens, bits = numbers["tokens_per_image"], numbers["bits_per_image"]
    image = f"{config.image_size}x{config.image_size} image"
    if bits is None:
        return f"{tokens} continuous tokens of {config.codebook_dim} channels per {image} (no bit count)"
    levels = ""
    if config.quantizer_type == "rvq":  # one token per latent and level
        levels = f" ({tokens // config.num_quantizers} x {config.num_quantizers} residual levels)"
    bits_per_token = _short_number(bits / tokens)
    return (
        f"{tokens} tokens{levels} per {image}, each one of {config.codebook_size} codes ({bits_per_token} bits): "
        f"{_short_number(bits)} bits per image ({numbers['bits_per_pixel']:.3g} bits per pixel)"
    )


def images_to_unit_range(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> (B, 3, H, W) float32 in [0, 1]."""
    arrays = np.stack([np.asarray(image.convert("RGB")) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255  # (B, H, W, 3) -> (B, 3, H, W)


def reconstruction_sheet(
    originals: list[Image.Image],
    reconstructions: list[Image.Image],
    caption: str,
    pairs_per_row: int = SHEET_PAIRS_PER_ROW,
    min_tile_size: int = SHEET_MIN_TILE_SIZE,
) -> ReconstructionSheet:
    """One image for people to judge reconstructions by: the `caption` (what the tokens are) on top, then each
    original beside its reconstruction, labelled, `pairs_per_row` pairs a row, with the PSNR of the pair (of these
    8-bit images, `hf_vitvq.metrics.psnr`) under it. Images (all of one size) smaller than `min_tile_size` are
    enlarged by a whole factor, nearest neighbour, so that every drawn pixel is one of the image's."""
    if not originals or len(originals) != len(reconstructions):
        raise ValueError(
            f"Need one reconstruction per original and at least one pair, got {len(originals)} originals and "
            f"{len(reconstructions)} reconstructions."
        )
    width, height = originals[0].size
    if sizes := {image.size for image in [*originals, *reconstructions]} - {(width, height)}:
        raise ValueError(f"All images must be {width}x{height} (the first original's size), got also {sorted(sizes)}.")
    scale = sheet_scale(max(width, height), min_tile_size)
    tile_width, tile_height = width * scale, height * scale
    psnrs = psnr(images_to_unit_range(reconstructions), images_to_unit_range(originals)).tolist()
    font = ImageFont.load_default(size=14)
    margin, pair_gap, tile_gap, text_height = 12, 24, 4, 20
    columns = min(pairs_per_row, len(originals))
    rows = math.ceil(len(originals) / columns)
    pair_width = 2 * tile_width + tile_gap
    row_height = text_height + tile_height + text_height + 8
    caption_lines = [
        caption,
        f"Left: original; right: its reconstruction from the tokens. {width}x{height} pixels, shown {scale}x "
        f"(nearest neighbour); mean PSNR {sum(psnrs) / len(psnrs):.1f} dB.",
    ]
    text_width = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(line, font=font) for line in caption_lines)
    sheet_width = max(2 * margin + columns * pair_width + (columns - 1) * pair_gap, 2 * margin + math.ceil(text_width))
    top = margin + len(caption_lines) * text_height + 8
    image = Image.new("RGB", (sheet_width, top + rows * row_height + margin - 8), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(caption_lines):
        draw.text((margin, margin + index * text_height), line, fill="black", font=font)
    original_boxes, reconstruction_boxes = [], []
    for index, (original, reconstruction) in enumerate(zip(originals, reconstructions, strict=True)):
        row, column = divmod(index, columns)
        left = margin + column * (pair_width + pair_gap)
        tile_top = top + row * row_height + text_height
        original_boxes.append((left, tile_top, left + tile_width, tile_top + tile_height))
        reconstruction_boxes.append((left + tile_width + tile_gap, tile_top, left + pair_width, tile_top + tile_height))
        for tile, label, box in (
            (original, "original", original_boxes[-1]),
            (reconstruction, "reconstruction", reconstruction_boxes[-1]),
        ):
            image.paste(tile.convert("RGB").resize((tile_width, tile_height), Image.Resampling.NEAREST), box[:2])
            draw.text((box[0] + tile_width / 2, tile_top - 5), label, fill="black", font=font, anchor="ms")
        psnr_text = f"PSNR {psnrs[index]:.1f} dB"
        draw.text((left + pair_width / 2, tile_top + tile_height + 3), psnr_text, fill="black", font=font, anchor="ma")
    return ReconstructionSheet(image, psnrs, caption, scale, original_boxes, reconstruction_boxes)


def spread_images(batches: list[torch.Tensor], count: int = SHEET_IMAGES) -> torch.Tensor:
    """`count` of the images of `batches` (all of them when there are fewer), evenly spaced from the first: what a
    sheet shows of a validation set, so that it samples all of it rather than its first images (often all of one
    photo, or of one class)."""
    images = torch.cat(batches)
    shown = min(count, len(images))
    return images[torch.arange(shown) * len(images) // shown]


def model_reconstruction_sheet(
    model: ViTVQModel, processor: ViTVQImageProcessor, pixel_values: torch.Tensor, count: int = SHEET_IMAGES
) -> ReconstructionSheet:
    """The [`reconstruction_sheet`] of the first `count` of `pixel_values`, encoded and decoded by `model`, with
    `token_caption(model.config)` on top."""
    pixel_values = pixel_values[:count]
    _, reconstructions = reconstruct(model, processor, pixel_values)
    originals = processor.postprocess(pixel_values.float().cpu(), output_type="pil")
    return reconstruction_sheet(originals, reconstructions, token_caption(model.config))


def save_reconstruction_grid(
    model: ViTVQModel, processor: ViTVQImageProcessor, pixel_values: torch.Tensor, path: Path, count: int = SHEET_IMAGES
) -> np.ndarray:
    """Write the [`model_reconstruction_sheet`] of the first `count` of `pixel_values` as a PNG at `path`; returns
    the sheet as an (H, W, 3) uint8 array."""
    sheet = model_reconstruction_sheet(model, processor, pixel_values, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.image.save(path)
    return np.asarray(sheet.image)
