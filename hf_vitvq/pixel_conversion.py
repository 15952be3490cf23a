"""Pixel conversions shared by the image processor, training and evaluation: the one PIL-to-RGB conversion
(`to_rgb_array`), the checks and scaling of array inputs, and the maps of tensors onto a config's
`pixel_value_range` and back (`normalize_pixels`, `to_uint8`). Copied into saved folders with the image processor for
`trust_remote_code`: imports only numpy, PIL, torch and transformers.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from transformers.image_transforms import convert_to_rgb


def normalize_pixels(
    images: torch.Tensor, pixel_value_range: tuple[float, float], out: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 (0..255) or float (in [0, 1], unchecked) pixels, any shape and device -> `low + (high - low) * v / 255`
    on `pixel_value_range`, as `ViTVQImageProcessor.for_config` maps them. float32 for uint8, else the input's dtype.
    `out`: a tensor of that dtype and the input's shape to write the result into (returned), instead of a new one."""
    low, high = pixel_value_range
    if images.dtype == torch.uint8:
        pixels = images.float() if out is None else out.copy_(images)
        pixels.div_(255)
    elif images.is_floating_point():
        pixels = images.clone() if out is None else out.copy_(images)
    else:
        raise TypeError(f"`images` must be uint8 (0..255) or float (in [0, 1]), got dtype {images.dtype}.")
    return pixels.mul_(high - low).add_(low)


def to_uint8(pixel_values: torch.Tensor, pixel_value_range: tuple[float | torch.Tensor, ...]) -> torch.Tensor:
    """Inverse of `normalize_pixels` (`pixel_value_range` may hold per-channel tensors that broadcast): uint8 0..255,
    clamped and rounded half to even, computed in float32 or wider."""
    low, high = pixel_value_range
    values = pixel_values.to(torch.promote_types(pixel_values.dtype, torch.float32))
    return ((values - low) * (255 / (high - low))).clamp(0, 255).round().to(torch.uint8)


def to_uint8_or_unit(array: np.ndarray) -> np.ndarray:
    """uint8 for 8-bit data (uint8, bool, other integers in 0..255), float64 in [0, 1] for uint16 (/ 65535), floats."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return array / 65535.0
    if array.dtype.kind not in "iuf":
        raise TypeError(f"Unsupported image dtype {array.dtype}; expected uint8, uint16, bool, int or float.")
    is_float, low, high = array.dtype.kind == "f", array.min().item(), array.max().item()
    if not 0 <= low <= high <= (1 if is_float else 255):  # False for NaN
        raise ValueError(
            f"{'Float' if is_float else 'Integer'} image has values in [{low:g}, {high:g}]; expected "
            f"{'floats in [0, 1], no NaN or infinite' if is_float else '8-bit values in [0, 255]'} (dtype "
            f"{array.dtype}). Pass 16-bit data as uint16 (or PIL mode I up to 65535), and floats not normalised."
        )
    return array.astype(np.float64 if is_float else np.uint8)


def to_0_255_scale(array: np.ndarray) -> np.ndarray:
    """uint8 stays; floats in [0, 1] become float32 on the 0..255 scale."""
    return array if array.dtype == np.uint8 else (array * 255.0).astype(np.float32)


def to_rgb_array(image: PIL.Image.Image) -> np.ndarray:
    """A PIL image of any mode as `(H, W, 3)` RGB on the 0..255 scale: float32 for 16-bit data (`I;16*`, and `I` with
    values in 256..65535; `I` in 0..255 is 8-bit) and `F` (floats in [0, 1]), else uint8 from transformers'
    `convert_to_rgb`: transparency (`RGBA`, `LA`, `PA`, transparent colours) on white, other modes converted by PIL."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return convert_to_rgb(image, return_numpy=True)
    values = np.asarray(image)
    if image.mode.startswith("I;16") or image.mode == "I" and 255 < values.max() <= 65535 and values.min() >= 0:
        values = values.astype(np.uint16)
    return np.repeat(to_0_255_scale(to_uint8_or_unit(values))[..., None], 3, axis=-1)


__all__ = ["normalize_pixels", "to_0_255_scale", "to_rgb_array", "to_uint8", "to_uint8_or_unit"]
