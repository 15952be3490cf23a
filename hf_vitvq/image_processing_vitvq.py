"""Image processor for ViT-VQ (TiTok-style 1D) tokenizers: transformers' PIL backend set up as TiTok
(arXiv:2406.07550) preprocesses with torchvision (PIL bicubic resize of the short side, torchvision's centre crop,
[0, 1]), normalised to [-1, 1] by default. Its pixel conversions (`pixel_conversion`) are shared with training and
evaluation. Copied into saved folders for `trust_remote_code` with that sibling: imports only numpy, PIL, torch and
transformers."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict, is_valid_image
from transformers.processing_utils import ImagesKwargs, Unpack

from .pixel_conversion import to_0_255_scale, to_rgb_array, to_uint8, to_uint8_or_unit

_CHANNEL_COUNTS = (1, 3, 4)  # grayscale, RGB, RGBA (alpha is composited on white)


class ViTVQImageProcessor(PilBackend):
    r"""
    Images -> `pixel_values` `(B, 3, crop_height, crop_width)` float32 for a ViT-VQ tokenizer; `postprocess` inverts.

    Steps (each can be switched off, per call too): RGB (`to_rgb_array`; arrays: gray repeated, RGBA on white),
    resize the short side to `size["shortest_edge"]` (long side `int(s * long / short)`) or to `{"height", "width"}`,
    centre-crop to `crop_size` as torchvision, times `rescale_factor`, normalise by `image_mean` / `image_std`.
    Inputs, one or a list: PIL images; numpy arrays or torch tensors `(H, W)`, `(H, W, C)`, `(C, H, W)` (C in
    {1, 3, 4}) or 4-d batches of dtype uint8, uint16 (/ 65535), bool, int in 0..255 or float in [0, 1] (bfloat16,
    float8: as float32). Where both end axes could be channels, numpy arrays are channels-last and tensors
    channels-first, unless `input_data_format` says. Paths and URLs are not loaded.
    """

    default_to_square = False  # an int `size` means {"shortest_edge": size}, like torchvision's Resize(int)
    do_convert_rgb = True
    do_resize = True
    size = {"shortest_edge": 256}
    resample = PILImageResampling.BICUBIC
    do_center_crop = True
    crop_size = {"height": 256, "width": 256}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]

    def __init__(self, **kwargs: Unpack[ImagesKwargs]) -> None:
        super().__init__(**kwargs)
        self._validate_preprocess_kwargs(**{name: getattr(self, name) for name in self._valid_kwargs_names})

    @classmethod
    def for_config(cls, config: Any, **kwargs: Any) -> ViTVQImageProcessor:
        """The processor for a `ViTVQConfig`: its `image_size`, 0..255 mapped onto its `pixel_value_range`."""
        low, high = config.pixel_value_range
        if (low, high) == (0.0, 1.0):
            kwargs.setdefault("do_normalize", False)
        else:  # (x - mean) / std maps [0, 1] onto [low, high]
            kwargs.setdefault("image_mean", [-low / (high - low)] * 3)
            kwargs.setdefault("image_std", [1 / (high - low)] * 3)
        return cls.for_image_size(config.image_size, **kwargs)

    @classmethod
    def for_image_size(cls, image_size: int, **kwargs: Any) -> ViTVQImageProcessor:
        """Resize the short side to `image_size` and centre-crop an `image_size` square (other settings: `kwargs`)."""
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **kwargs)

    def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
        """Check the settings of a call or of `__init__`, whether or not their step is on."""
        super()._validate_preprocess_kwargs(**kwargs)
        size, crop, mean, std = (kwargs[name] for name in ("size", "crop_size", "image_mean", "image_std"))
        edges = [size.shortest_edge] if size.shortest_edge and not size.longest_edge else [size.height, size.width]
        if not all(edge and edge > 0 for edge in [*edges, crop.height, crop.width]):
            raise ValueError(
                f"`size` must be shortest_edge or height and width, `crop_size` height and width, all "
                f"positive; got {dict(size)} and {dict(crop)}."
            )
        if not kwargs["rescale_factor"] > 0:
            raise ValueError(f"`rescale_factor` must be positive, got {kwargs['rescale_factor']}.")
        if np.size(mean) not in (1, 3) or np.size(std) not in (1, 3):
            raise ValueError(f"`image_mean` and `image_std` must be one float or 3 floats, got {mean!r}, {std!r}.")
        if not np.all(std):
            raise ValueError(f"`image_std` must be non-zero, got {std!r}.")
        if kwargs.get("data_format") not in (None, "channels_first"):
            raise ValueError(f"Only channels-first output is supported, got data_format={kwargs['data_format']!r}.")
        if kwargs.get("return_tensors") not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be None, 'pt' or 'np', got {kwargs['return_tensors']!r}.")

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list[Any]:
        """A flat list of single images (4-d arrays and tensors are batches); paths and URLs are not fetched."""
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("Got an empty list of images; expected at least one image.")
        flat = []
        for index, item in enumerate(items):
            where = f"images[{index}]" if items is images else "images"
            if not is_valid_image(item):
                raise TypeError(
                    f"{where} is a {type(item).__name__}; expected a PIL.Image.Image, numpy.ndarray or "
                    "torch.Tensor, or a flat list of them (nested lists are not supported)."
                )
            ndim = getattr(item, "ndim", 3)  # PIL images have none
            if ndim not in (2, 3, 4) or ndim == 4 and len(item) == 0:
                raise ValueError(f"{where} has shape {tuple(item.shape)}; expected an image or a non-empty batch.")
            flat.extend(item if ndim == 4 else [item])
        return flat

    def process_image(
        self, image: ImageInput, do_convert_rgb: bool = True, input_data_format: str | None = None, **kwargs: Any
    ) -> np.ndarray:
        """One image -> `(3, H, W)` on the 0..255 scale, uint8 for 8-bit sources, float32 otherwise."""
        if isinstance(image, PIL.Image.Image):
            if 0 in image.size:
                raise ValueError(f"Got a zero-size PIL image (width, height: {image.size}).")
            if not do_convert_rgb and image.mode != "RGB":
                raise ValueError(f"Got an image of mode {image.mode!r} with do_convert_rgb=False; pass RGB images.")
            return np.ascontiguousarray(np.moveaxis(to_rgb_array(image), -1, 0))  # contiguous: 10x faster normalize
        prefer_first = isinstance(image, torch.Tensor)  # (3, 4, 3): channels first for torch, last for numpy
        if prefer_first:  # numpy has no bfloat16 or float8: read those (and float16) as float32
            image = image.detach().cpu()
            image = (image.float() if image.is_floating_point() and image.element_size() < 4 else image).numpy()
        if image.size == 0:
            raise ValueError(f"Got a zero-size image of shape {image.shape}.")
        array = to_uint8_or_unit(image)  # (H, W), (H, W, C) or (C, H, W)
        first = array.shape[0] in _CHANNEL_COUNTS and (prefer_first or array.shape[-1] not in _CHANNEL_COUNTS)
        first = first if input_data_format is None else ChannelDimension(input_data_format) == ChannelDimension.FIRST
        if array.ndim == 2:
            array = array[None]
        elif not first:
            array = np.moveaxis(array, -1, 0)
        if len(array) not in _CHANNEL_COUNTS:
            raise ValueError(
                f"Cannot find the channel axis of an image of shape {image.shape}: expected 1 (grayscale), 3 (RGB) or "
                "4 (RGBA) channels on the first or last axis; 2- and 5+-channel images are not supported."
            )
        if not do_convert_rgb and len(array) != 3:
            raise ValueError(f"Got an image of {len(array)} channels with do_convert_rgb=False; pass RGB images.")
        return np.ascontiguousarray(to_0_255_scale(self.convert_to_rgb(array, ChannelDimension.FIRST)))

    def resize(self, image: np.ndarray, size: SizeDict, resample: int | None = None, **kwargs: Any) -> np.ndarray:
        """transformers' PIL resize for uint8 `(3, H, W)` images; float ones, which it would round to 8 bits, are
        resized per channel in float32 (PIL mode `F`) and clipped to [0, 255]."""
        if image.dtype == np.uint8:
            return np.ascontiguousarray(super().resize(image, size, resample=resample, **kwargs))
        target = size.shortest_edge or (size.height, size.width)
        height, width = get_resize_output_image_size(image, target, False, input_data_format="channels_first")
        planes = [PIL.Image.fromarray(np.ascontiguousarray(plane)).resize((width, height), resample) for plane in image]
        return np.clip(np.stack([np.asarray(plane) for plane in planes]), 0.0, 255.0)

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs: Any) -> np.ndarray:
        """torchvision's `CenterCrop` (TiTok's; transformers' offsets differ by a pixel on odd margins, e.g. 999x257):
        zero-pad a side shorter than the crop (`(h - H) // 2` before), then crop at `int(round((H - h) / 2))`."""
        pads = [max(target - side, 0) for target, side in zip((size.height, size.width), image.shape[1:], strict=True)]
        image = np.pad(image, [(0, 0)] + [(pad // 2, pad - pad // 2) for pad in pads])
        top, left = int(round((image.shape[1] - size.height) / 2)), int(round((image.shape[2] - size.width) / 2))
        return image[:, top : top + size.height, left : left + size.width]

    def _preprocess(self, images: list[np.ndarray], return_tensors: str | None, **kwargs: Any) -> BatchFeature:
        """transformers' resize, centre crop, rescale and normalise; float32 `(3, H, W)` images, stacked if asked."""
        processed = super()._preprocess(images, return_tensors=None, **kwargs).pixel_values
        processed = [image.astype(np.float32, copy=False) for image in processed]
        if return_tensors and len({image.shape for image in processed}) > 1:
            raise ValueError(
                f"Images have different sizes after preprocessing ({[i.shape for i in processed]}): "
                "centre-crop them, resize to a height and width, or pass return_tensors=None."
            )
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)

    def postprocess(
        self, pixel_values: torch.Tensor | np.ndarray, output_type: Literal["pil", "np", "pt"] = "pil"
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Model pixel values `(B, 3, H, W)` or `(3, H, W)` -> uint8 RGB images, inverting this processor's rescaling
        and normalisation with `to_uint8`: B PIL images (`"pil"`), `(B, H, W, 3)` (`"np"`), `(B, 3, H, W)` (`"pt"`)."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be one of ('pil', 'np', 'pt'), got {output_type!r}.")
        if not isinstance(pixel_values, (torch.Tensor, np.ndarray)):
            raise TypeError(
                f"`pixel_values` must be a torch.Tensor or numpy.ndarray, got {type(pixel_values).__name__}"
            )
        values = torch.as_tensor(pixel_values).detach().to("cpu", torch.float64)
        values = values[None] if values.ndim == 3 else values
        if values.ndim != 4 or values.shape[1] != 3:
            raise ValueError(f"`pixel_values` must have shape (B, 3, H, W) or (3, H, W), got {pixel_values.shape}.")
        if not values.isfinite().all():
            raise ValueError("`pixel_values` contains NaN or infinite values; cannot convert them to images.")
        mean, std = (self.image_mean, self.image_std) if self.do_normalize else (0.0, 1.0)
        mean, std = (torch.tensor(value, dtype=torch.float64).reshape(-1, 1, 1) for value in (mean, std))
        scale = self.rescale_factor if self.do_rescale else 1.0
        images = to_uint8(values, (-mean / std, (255 * scale - mean) / std))  # where pixels 0 and 255 were mapped
        if output_type == "pt":
            return images
        images = images.permute(0, 2, 3, 1).contiguous().numpy()  # (B, 3, H, W) -> (B, H, W, 3)
        return images if output_type == "np" else [PIL.Image.fromarray(image) for image in images]


__all__ = ["ViTVQImageProcessor"]
