"""Image processor for ViT-VQ (TiTok-style 1D) image tokenizers.

`ViTVQImageProcessor` turns images into the `pixel_values` a `ViTVQModel` encodes, and `postprocess` turns the
model's reconstructions back into images. It follows the transformers 5.x image-processor layout
(`BaseImageProcessor` via its PIL/NumPy backend `PilBackend`; see `models/vit/image_processing_pil_vit.py`) and
the TiTok recipe (Yu et al., 2024, "An Image is Worth 32 Tokens for Reconstruction and Generation",
arXiv:2406.07550), whose reference code uses torchvision's `Resize(256, BICUBIC)`, `CenterCrop(256)` and
`ToTensor()` on PIL images: resize the short side to 256 with bicubic filtering, centre-crop 256x256, scale to
[0, 1]; here additionally normalised to [-1, 1] by default. 8-bit inputs give exactly those pixels (PIL's 8-bit
bicubic resize, torchvision's crop offsets) without depending on torchvision.

Internally every image is a `(3, H, W)` array on the 0..255 scale: uint8 for 8-bit sources (uint8 arrays, most
PIL modes), float32 for high-precision ones (uint16, float in [0, 1], PIL `I;16`/`I`/`F`), which are resized in
float32 rather than quantised to 8 bits first. So `rescale_factor=1/255` means the same thing for every input.

This file is copied into saved model folders for `trust_remote_code` loading: it may import only the standard
library, numpy, PIL, torch and transformers.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

# Channel counts an image array may have: grayscale, RGB, RGBA (alpha is composited on white).
_VALID_NUM_CHANNELS = (1, 3, 4)
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_POSTPROCESS_OUTPUT_TYPES = ("pil", "np", "pt")
_RETURN_TENSORS = (None, "pt", "np")


def _describe(value: Any) -> str:
    """Short description of an input for error messages: its type, and its shape and dtype if it has them."""
    module = type(value).__module__
    name = type(value).__name__ if module == "builtins" else f"{module}.{type(value).__name__}"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{name} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return name


def _to_pixel_array(array: np.ndarray) -> np.ndarray:
    """Convert pixel values of any supported dtype to the 0..255 scale.

    Args:
        array (`np.ndarray`): pixel values of any shape.
            uint8 and other integer dtypes: 0..255 (8-bit; values outside raise).
            uint16: 0..65535 (16-bit), scaled by 255/65535.
            bool: False -> 0, True -> 255.
            float: 0..1; NaN, inf or values outside [0, 1] raise.

    Returns:
        `np.ndarray`: same shape, values in [0, 255]; uint8 for 8-bit sources (uint8, bool, other integers),
        float32 for uint16 and float sources.
    """
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float64) * (255.0 / 65535.0)).astype(np.float32)
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer image of dtype {array.dtype} has values in [{low}, {high}]; expected 8-bit values in "
                "[0, 255]. Pass 16-bit images as uint16 (scaled by 1/65535) and float images in [0, 1]."
            )
        return array.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(
                f"Image contains NaN or infinite values ({int(np.isnan(array).sum())} NaN, "
                f"{int(np.isinf(array).sum())} inf); expected finite floats in [0, 1]."
            )
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"Float image has values in [{low:g}, {high:g}]; expected floats in [0, 1]. Pass 8-bit data as "
                "uint8, 16-bit data as uint16, and undo any normalisation (e.g. to [-1, 1]) first."
            )
        return (array.astype(np.float64) * 255.0).astype(np.float32)
    raise TypeError(
        f"Unsupported image dtype {array.dtype}; expected uint8, uint16, another integer type with values in "
        "[0, 255], bool, or float in [0, 1]."
    )


def _pil_to_hwc(image: PIL.Image.Image) -> np.ndarray:
    """Read a PIL image of any mode as a `(H, W, C)` array on the 0..255 scale, C in {1, 3, 4}.

    16-bit modes (`I;16*`) and `I` are read as 16-bit (0..65535), `F` as float in [0, 1], `1` as black/white.
    Modes with transparency (`RGBA`, `LA`, `PA`, `P` with a transparent colour, ...) become RGBA; every other
    mode (`L`, `P`, `CMYK`, `YCbCr`, `HSV`, ...) is converted to RGB by PIL. The result is uint8 for 8-bit
    modes and float32 for `I;16*`, `I` and `F`.
    """
    mode = image.mode
    if mode in _PIL_16BIT_MODES:
        array = _to_pixel_array(np.asarray(image).astype(np.uint16))
    elif mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"PIL image of mode 'I' has values in [{values.min()}, {values.max()}]; mode 'I' is read as "
                "16-bit (0..65535)."
            )
        array = _to_pixel_array(values.astype(np.uint16))
    elif mode == "F":
        array = _to_pixel_array(np.asarray(image))
    elif mode == "1":
        array = _to_pixel_array(np.asarray(image.convert("L")))
    elif mode == "RGB" and not image.has_transparency_data:
        array = _to_pixel_array(np.asarray(image))
    else:
        target = "RGBA" if image.has_transparency_data else "RGB"
        try:
            converted = image.convert(target)
        except ValueError as error:
            raise ValueError(f"Cannot convert a PIL image of mode {mode!r} to {target}: {error}") from error
        array = _to_pixel_array(np.asarray(converted))
    return array[..., None] if array.ndim == 2 else array


def _array_to_hwc(
    array: np.ndarray, input_data_format: ChannelDimension | None, prefer_channels_first: bool
) -> np.ndarray:
    """Bring a 2-d or 3-d image array to `(H, W, C)` with C in {1, 3, 4}.

    Args:
        array (`np.ndarray`): `(H, W)`, `(H, W, C)` or `(C, H, W)`.
        input_data_format (`ChannelDimension`, *optional*): layout of a 3-d array; inferred when `None`.
        prefer_channels_first (`bool`): layout to pick when both the first and last axis could be channels
            (e.g. `(3, 4, 3)`): `True` for torch tensors (CHW convention), `False` for numpy arrays (HWC).

    Returns:
        `np.ndarray`: `(H, W, C)` view of the input.
    """
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise ValueError(f"Expected a 2-d (H, W) or 3-d (H, W, C) / (C, H, W) image, got shape {array.shape}.")
    if input_data_format is None:
        first_ok = array.shape[0] in _VALID_NUM_CHANNELS
        last_ok = array.shape[-1] in _VALID_NUM_CHANNELS
        if not (first_ok or last_ok):
            raise ValueError(
                f"Cannot find the channel axis of an image of shape {array.shape}: expected 1 (grayscale), "
                "3 (RGB) or 4 (RGBA) channels on the first or last axis. 2-channel and 5+-channel images are "
                "ambiguous and not supported; convert them to RGB first."
            )
        channels_first = first_ok and (prefer_channels_first or not last_ok)
    else:
        channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
        num_channels = array.shape[0] if channels_first else array.shape[-1]
        if num_channels not in _VALID_NUM_CHANNELS:
            raise ValueError(
                f"Image of shape {array.shape} has {num_channels} channels on the {input_data_format} axis; "
                "expected 1 (grayscale), 3 (RGB) or 4 (RGBA)."
            )
    return np.moveaxis(array, 0, -1) if channels_first else array


def _hwc_to_rgb(array: np.ndarray) -> np.ndarray:
    """`(H, W, C)` on the 0..255 scale, C in {1, 3, 4} -> `(H, W, 3)` of the same dtype: gray is repeated,
    alpha composited on white (rounded to the nearest integer for uint8)."""
    num_channels = array.shape[-1]
    if num_channels == 1:
        return np.repeat(array, 3, axis=-1)
    if num_channels == 4:
        alpha = array[..., 3:].astype(np.float64) / 255.0
        # out = a * rgb + (1 - a) * white
        rgb = array[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.rint(rgb).astype(np.uint8) if array.dtype == np.uint8 else rgb.astype(np.float32)
    return array


def _center_crop_or_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop a `(C, H, W)` image to `(C, height, width)`; a side shorter than the crop is zero-padded.

    As torchvision's `CenterCrop` (used by TiTok): the crop offset is `int(round((H - height) / 2))` (Python's
    round, half to even), and padding puts `(height - H) // 2` rows above the image.
    """
    _, in_height, in_width = image.shape
    if in_height < height or in_width < width:
        padded_height, padded_width = max(in_height, height), max(in_width, width)
        padded = np.zeros((image.shape[0], padded_height, padded_width), dtype=image.dtype)
        top, left = (padded_height - in_height) // 2, (padded_width - in_width) // 2
        padded[:, top : top + in_height, left : left + in_width] = image
        image, in_height, in_width = padded, padded_height, padded_width
    top, left = int(round((in_height - height) / 2)), int(round((in_width - width) / 2))
    return image[:, top : top + height, left : left + width]


def _as_channel_values(value: float | tuple[float, ...] | list[float], name: str) -> np.ndarray:
    """Broadcast a per-channel statistic (one float or three) to a `(3, 1, 1)` float64 array."""
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3:
        raise ValueError(f"`{name}` must be one float or 3 floats (one per RGB channel), got {value!r}.")
    return values.reshape(3, 1, 1)


class ViTVQImageProcessor(PilBackend):
    r"""
    Image processor for ViT-VQ tokenizers: any image -> `pixel_values` of shape `(B, 3, crop_height, crop_width)`,
    and `postprocess`: model output -> uint8 images.

    Pipeline (each step can be switched off): convert to RGB -> resize the short side to `size["shortest_edge"]`
    (tiny images are upsampled) -> centre-crop to `crop_size` -> multiply by `rescale_factor` -> normalise with
    `image_mean` / `image_std`. With the defaults, pixel value `v` (0..255) becomes `v / 127.5 - 1`, in [-1, 1].
    For a model trained on [0, 1] inputs, pass `do_normalize=False`; `postprocess` inverts exactly the rescale
    and normalisation this processor is configured with.

    Accepted inputs, one image or a list/tuple of them (sizes may differ):
    - `PIL.Image.Image` of any mode: `L`, `LA`, `P`, `PA`, `RGB`, `RGBA`, `CMYK`, `YCbCr`, `1` (black/white),
      `I;16*` and `I` (read as 16-bit, 0..65535), `F` (read as float in [0, 1]).
    - `np.ndarray` or `torch.Tensor` of shape `(H, W)`, `(H, W, C)` or `(C, H, W)` with C in {1, 3, 4}, dtype
      uint8 (0..255), uint16 (0..65535, scaled by 1/65535), another integer type with values in 0..255, bool,
      or float in [0, 1]. When both end axes could be channels (e.g. `(3, 4, 3)`), numpy arrays are read as
      channels-last and torch tensors as channels-first; pass `input_data_format` to decide explicitly.
    - A 4-d array or tensor, `(B, H, W, C)` or `(B, C, H, W)`, is accepted as a batch of B images.

    Alpha (RGBA arrays, PIL modes with transparency) is composited on a white background, as transformers'
    `convert_to_rgb` does for PIL images. 8-bit inputs are resized by PIL in 8-bit RGB, exactly as
    torchvision/transformers PIL pipelines do; 16-bit and float inputs are resized per channel in float32 (no
    8-bit rounding) and clipped to [0, 255], so they may differ from the same image given as uint8 by a few
    levels near edges. Crop offsets follow torchvision's `CenterCrop`. If the crop is larger than the (resized)
    image, the missing border is black (zero) padding.

    Errors: `TypeError` for unsupported input types (str, dict, None, nested lists, ...) and dtypes; `ValueError`
    for an empty list or batch, a zero-size image, an unsupported channel count (2, 5, ...), NaN or inf values,
    values outside the dtype's range, and invalid settings.

    Args:
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Convert grayscale, RGBA and other modes to RGB. If `False`, every input must already be RGB (3 channels
            or PIL mode `RGB`), otherwise a `ValueError` is raised.
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize the image to `size`.
        size (`int` or `dict[str, int]`, *optional*, defaults to `{"shortest_edge": 256}`):
            `{"shortest_edge": s}` resizes the short side to `s`, keeping the aspect ratio (long side
            `int(s * long / short)`, as in torchvision and transformers); `{"height": h, "width": w}` resizes to
            exactly `h x w`. An int `s` means `{"shortest_edge": s}`.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            PIL resampling filter used when resizing.
        do_center_crop (`bool`, *optional*, defaults to `True`):
            Whether to centre-crop to `crop_size` after resizing.
        crop_size (`int` or `dict[str, int]`, *optional*, defaults to `{"height": 256, "width": 256}`):
            Output size of the centre crop; an int `c` means `{"height": c, "width": c}`.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply the 0..255 pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Scale applied by `do_rescale`; must be positive.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to apply `(x - image_mean) / image_std` per channel.
        image_mean (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel mean used by `do_normalize`.
        image_std (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel standard deviation used by `do_normalize`; must be non-zero.
    """

    model_input_names = ["pixel_values"]
    default_to_square = False  # an int `size` means {"shortest_edge": size}, like torchvision's Resize(int)

    do_convert_rgb = True
    do_resize = True
    size = {"shortest_edge": 256}  # class attributes are the defaults transformers falls back on
    resample = PILImageResampling.BICUBIC
    do_center_crop = True
    crop_size = {"height": 256, "width": 256}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]

    def __init__(
        self,
        do_convert_rgb: bool = True,
        do_resize: bool = True,
        size: int | dict[str, int] | None = None,
        resample: PILImageResampling | int = PILImageResampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: int | dict[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        **kwargs: Unpack[ImagesKwargs],
    ) -> None:
        settings = {
            "do_convert_rgb": do_convert_rgb,
            "do_resize": do_resize,
            "size": size,
            "resample": resample,
            "do_center_crop": do_center_crop,
            "crop_size": crop_size,
            "do_rescale": do_rescale,
            "rescale_factor": rescale_factor,
            "do_normalize": do_normalize,
            "image_mean": image_mean,
            "image_std": image_std,
        }
        # None means "class default": drop it, or the base class would store the None as an attribute.
        super().__init__(**{name: value for name, value in settings.items() if value is not None}, **kwargs)
        self._validate_preprocess_kwargs(
            **{name: getattr(self, name, None) for name in self._valid_kwargs_names if name != "return_tensors"}
        )

    @classmethod
    def for_config(cls, config: Any, **kwargs: Any) -> ViTVQImageProcessor:
        """The processor matching a `ViTVQConfig`: its `image_size`, and a normalisation that maps 0..255 pixels onto
        its `pixel_value_range` ([-1, 1] for models trained here, [0, 1] for converted TiTok checkpoints)."""
        low, high = config.pixel_value_range
        if (low, high) == (0.0, 1.0):
            kwargs.setdefault("do_normalize", False)
        else:  # (x - mean) / std maps [0, 1] onto [low, high]
            kwargs.setdefault("image_mean", [-low / (high - low)] * 3)
            kwargs.setdefault("image_std", [1 / (high - low)] * 3)
        return cls.for_image_size(config.image_size, **kwargs)

    @classmethod
    def for_image_size(cls, image_size: int, **kwargs: Any) -> ViTVQImageProcessor:
        """The processor for a model of `image_size` x `image_size` inputs: resize the short side to `image_size`,
        centre-crop a square of that size (other settings as `kwargs`)."""
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, **kwargs)

    def __call__(
        self,
        images: ImageInput,
        return_tensors: str | TensorType | None = None,
        **kwargs: Unpack[ImagesKwargs],
    ) -> BatchFeature:
        """Preprocess an image or a batch of images; same as `preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self,
        images: ImageInput,
        return_tensors: str | TensorType | None = None,
        **kwargs: Unpack[ImagesKwargs],
    ) -> BatchFeature:
        """Preprocess an image or a batch of images into `pixel_values`.

        Args:
            images (`ImageInput`):
                A PIL image, numpy array or torch tensor (`(H, W)`, `(H, W, C)`, `(C, H, W)`, or a 4-d batch), or a
                non-empty list/tuple of them. See the class docstring for accepted modes and dtypes.
            return_tensors (`str` or `TensorType`, *optional*):
                `"pt"` for a torch tensor, `"np"` for a numpy array, `None` for a list of numpy arrays.
            **kwargs:
                Per-call overrides of any setting (`do_resize`, `size`, `crop_size`, `do_normalize`, ...), and
                `input_data_format` (`"channels_first"` / `"channels_last"`) for 3-d array inputs.

        Returns:
            `BatchFeature`: `pixel_values`, float32, `(B, 3, H, W)` (`H, W` = `crop_size` when centre-cropping)
            for `"pt"` / `"np"`, or a list of B `(3, H, W)` arrays when `return_tensors=None`.
        """
        if return_tensors is not None and TensorType(return_tensors).value not in _RETURN_TENSORS:
            raise ValueError(f"`return_tensors` must be one of {_RETURN_TENSORS}, got {return_tensors!r}.")
        return super().preprocess(images, return_tensors=return_tensors, **kwargs)

    def _validate_preprocess_kwargs(
        self,
        do_resize: bool | None = None,
        size: SizeDict | None = None,
        do_center_crop: bool | None = None,
        crop_size: SizeDict | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | tuple[float, ...] | None = None,
        image_std: float | tuple[float, ...] | None = None,
        data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> None:
        """Check the merged settings of one call (or of `__init__`); raise `ValueError` naming the bad one."""
        super()._validate_preprocess_kwargs(
            do_resize=do_resize,
            size=size,
            do_center_crop=do_center_crop,
            crop_size=crop_size,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            **kwargs,
        )
        if do_resize:
            if size.shortest_edge is not None and size.longest_edge is None:
                edges = [size.shortest_edge]
            elif size.height is not None and size.width is not None:
                edges = [size.height, size.width]
            else:
                raise ValueError(
                    f'`size` must be {{"shortest_edge": int}} or {{"height": int, "width": int}}, got {dict(size)}.'
                )
            if min(edges) < 1:
                raise ValueError(f"`size` must be positive, got {dict(size)}.")
        if do_center_crop and (
            crop_size.height is None or crop_size.width is None or min(crop_size.height, crop_size.width) < 1
        ):
            raise ValueError(f'`crop_size` must be {{"height": int, "width": int}} (positive), got {dict(crop_size)}.')
        if do_rescale and not rescale_factor > 0:
            raise ValueError(f"`rescale_factor` must be positive (postprocess divides by it), got {rescale_factor}.")
        if do_normalize:
            _as_channel_values(image_mean, "image_mean")
            if (_as_channel_values(image_std, "image_std") == 0).any():
                raise ValueError(f"`image_std` must be non-zero, got {image_std!r}.")
        if data_format is not None and ChannelDimension(data_format) != ChannelDimension.FIRST:
            raise ValueError(f"Only channels-first output is supported, got `data_format={data_format!r}`.")

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list[Any]:
        """Flatten the input into a list of single images (PIL, 2-d/3-d arrays or tensors), checking types.

        Unlike the transformers default, strings (paths, URLs) are not fetched: load images before calling.
        4-d arrays/tensors are split into their images.

        Returns:
            `list`: one entry per image.
        """
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("Got an empty list of images; expected at least one image.")
        flat = []
        for index, item in enumerate(items):
            where = f"images[{index}]" if isinstance(images, (list, tuple)) else "images"
            if isinstance(item, PIL.Image.Image):
                flat.append(item)
            elif isinstance(item, (np.ndarray, torch.Tensor)):
                if item.ndim == 4:
                    if item.shape[0] == 0:
                        raise ValueError(f"{where} is an empty batch of shape {tuple(item.shape)}.")
                    flat.extend(item.unbind(0) if isinstance(item, torch.Tensor) else list(item))
                elif item.ndim in (2, 3):
                    flat.append(item)
                else:
                    raise ValueError(
                        f"{where} has shape {tuple(item.shape)}; expected an image (H, W), (H, W, C), (C, H, W) "
                        "or a batch of images (B, H, W, C) / (B, C, H, W)."
                    )
            elif isinstance(item, (list, tuple)):
                raise TypeError(f"{where} is a {_describe(item)}; nested lists are not supported, pass a flat list.")
            else:
                raise TypeError(
                    f"{where} is a {_describe(item)}; expected a PIL.Image.Image, numpy.ndarray or torch.Tensor "
                    "(or a list of them). Load files and URLs yourself, e.g. with PIL.Image.open."
                )
        return flat

    def process_image(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Convert one image to a `(3, H, W)` array on the 0..255 scale.

        Args:
            image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`): one image (see the class docstring).
            do_convert_rgb (`bool`, *optional*): convert to RGB; if `False`, the image must already be RGB.
            input_data_format (`str` or `ChannelDimension`, *optional*): layout of a 3-d array; inferred if unset.

        Returns:
            `np.ndarray`: `(3, H, W)`, values in [0, 255]; uint8 for 8-bit sources, float32 otherwise.
        """
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        if isinstance(image, PIL.Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"Got a zero-size PIL image (width {image.width}, height {image.height}).")
            if not do_convert_rgb and image.mode != "RGB":
                raise ValueError(
                    f"Got a PIL image of mode {image.mode!r} with do_convert_rgb=False; pass RGB images or set "
                    "do_convert_rgb=True."
                )
            hwc = _pil_to_hwc(image)
        else:
            is_tensor = isinstance(image, torch.Tensor)
            if is_tensor:
                image = image.detach().cpu()
                image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
            if image.size == 0:
                raise ValueError(f"Got a zero-size image of shape {image.shape}; height and width must be >= 1.")
            hwc = _to_pixel_array(_array_to_hwc(image, input_data_format, prefer_channels_first=is_tensor))
            if not do_convert_rgb and hwc.shape[-1] != 3:
                raise ValueError(
                    f"Got an image with {hwc.shape[-1]} channels (shape {image.shape}) with do_convert_rgb=False; "
                    "pass 3-channel RGB images or set do_convert_rgb=True."
                )
        return np.ascontiguousarray(np.moveaxis(_hwc_to_rgb(hwc), -1, 0))

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Resize a `(3, H, W)` image with PIL: uint8 as an 8-bit RGB image, float per channel in float32.

        Args:
            image (`np.ndarray`): `(3, H, W)`, values on the 0..255 scale, uint8 or float32.
            size (`SizeDict`): `shortest_edge` (aspect ratio kept, long side `int(s * long / short)`) or
                `height` and `width`.
            resample (`PILImageResampling` or `int`, *optional*): PIL filter; defaults to `self.resample`.

        Returns:
            `np.ndarray`: `(3, new_height, new_width)` of the input's dtype (float32 clipped to [0, 255]).
        """
        resample = self.resample if resample is None else resample
        height, width = image.shape[-2:]
        if size.shortest_edge is not None:
            short, long = min(height, width), max(height, width)
            new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
            new_height, new_width = (new_short, new_long) if height <= width else (new_long, new_short)
        else:
            new_height, new_width = size.height, size.width
        if (new_height, new_width) == (height, width):
            return image
        resample = PILImageResampling(resample)
        if image.dtype == np.uint8:
            resized = PIL.Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).resize(
                (new_width, new_height), resample=resample
            )
            return np.asarray(resized).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        channels = [
            np.asarray(
                PIL.Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize(
                    (new_width, new_height), resample=resample
                )
            )
            for channel in image
        ]
        return np.clip(np.stack(channels), 0.0, 255.0)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        return_tensors: str | TensorType | None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Resize, centre-crop, rescale and normalise `(3, H, W)` 0..255 images; stack them if asked."""
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_center_crop:
                image = _center_crop_or_pad(image, crop_size.height, crop_size.width)
            values = image.astype(np.float64)  # float64 so that 0 -> -1 and 255 -> 1 exactly
            if do_rescale:
                values = values * rescale_factor
            if do_normalize:
                values = (values - _as_channel_values(image_mean, "image_mean")) / _as_channel_values(
                    image_std, "image_std"
                )
            processed.append(values.astype(np.float32))

        if return_tensors is None:
            return BatchFeature(data={"pixel_values": processed})
        shapes = {image.shape for image in processed}
        if len(shapes) > 1:
            raise ValueError(
                f"Images have different sizes after preprocessing ({sorted(shapes)}) and cannot be stacked into "
                f"one tensor; enable do_center_crop, use size={{'height': h, 'width': w}}, or return_tensors=None."
            )
        # np.stack keeps the inputs' (channels-last) memory order: make the batch C-contiguous (B, 3, H, W)
        batch = np.ascontiguousarray(np.stack(processed))
        return BatchFeature(data={"pixel_values": batch}, tensor_type=return_tensors)

    def postprocess(
        self,
        pixel_values: torch.Tensor | np.ndarray,
        output_type: Literal["pil", "np", "pt"] = "pil",
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Turn model pixel values (e.g. reconstructions in [-1, 1]) back into uint8 RGB images.

        Inverts this processor's normalisation (`x * image_std + image_mean`, if `do_normalize`) and rescaling
        (`/ rescale_factor`, if `do_rescale`) to the 0..255 scale, clamps to [0, 255] (i.e. [0, 1]) and rounds to
        uint8. A 3-d input is treated as a batch of one.

        Args:
            pixel_values (`torch.Tensor` or `np.ndarray`): `(B, 3, H, W)` or `(3, H, W)`, finite values.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.

        Returns:
            `"pil"`: list of B RGB `PIL.Image.Image` of size `W x H`; `"np"`: uint8 `np.ndarray` `(B, H, W, 3)`;
            `"pt"`: uint8 `torch.Tensor` `(B, 3, H, W)` on the CPU.
        """
        if output_type not in _POSTPROCESS_OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {_POSTPROCESS_OUTPUT_TYPES}, got {output_type!r}.")
        if isinstance(pixel_values, torch.Tensor):
            values = pixel_values.detach().to("cpu", torch.float64).numpy()
        elif isinstance(pixel_values, np.ndarray):
            if pixel_values.dtype.kind not in "biuf":
                raise TypeError(f"`pixel_values` must be numeric, got dtype {pixel_values.dtype}.")
            values = pixel_values.astype(np.float64)
        else:
            raise TypeError(f"`pixel_values` must be a torch.Tensor or numpy.ndarray, got {_describe(pixel_values)}.")
        if values.ndim == 3:
            values = values[None]
        if values.ndim != 4 or values.shape[1] != 3:
            raise ValueError(
                f"`pixel_values` must have shape (B, 3, H, W) or (3, H, W) (channels first), got {pixel_values.shape}."
            )
        if not np.isfinite(values).all():
            raise ValueError("`pixel_values` contains NaN or infinite values; cannot convert them to images.")

        if self.do_normalize:
            values = values * _as_channel_values(self.image_std, "image_std") + _as_channel_values(
                self.image_mean, "image_mean"
            )
        if self.do_rescale:
            values = values / self.rescale_factor
        images = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)  # (B, 3, H, W)

        if output_type == "pt":
            return torch.from_numpy(images)
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # (B, 3, H, W) -> (B, H, W, 3)
        if output_type == "np":
            return images
        return [PIL.Image.fromarray(image) for image in images]


__all__ = ["ViTVQImageProcessor"]
