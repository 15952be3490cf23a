"""One conversion to RGB (`to_rgb_array`) for inference and training: the image processor and training's
`decode_image` see the same pixels for 16-bit, transparent, CMYK, palette and mode "I" images."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import PIL.Image
import pytest

from hf_vitvq import ViTVQImageProcessor
from hf_vitvq.pixel_conversion import to_rgb_array
from hf_vitvq.training.data import decode_image


def encoded(image: PIL.Image.Image, image_format: str = "PNG") -> bytes:
    """The file bytes of `image` (PNG, or TIFF for modes PNG cannot hold: CMYK, 32-bit "I")."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def picture(height: int = 24, width: int = 40) -> np.ndarray:
    """A smooth grayscale picture with values in [0.05, 0.95] (no clipping at the ends), float64."""
    y, x = np.mgrid[:height, :width]
    return 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 7.0) + 0.15 * (x / width - 0.5)


def colour_picture(height: int = 24, width: int = 40) -> np.ndarray:
    """An (H, W, 3) uint8 colour picture."""
    gray = picture(height, width)
    return np.rint(np.stack([gray, gray[::-1], 1 - gray], axis=-1) * 255).astype(np.uint8)


def rgba() -> PIL.Image.Image:
    rgba = np.concatenate([colour_picture(), np.zeros((24, 40, 1), np.uint8)], axis=-1)
    rgba[..., 3] = np.linspace(0, 255, 40).astype(np.uint8)  # transparent on the left, opaque on the right
    return PIL.Image.fromarray(rgba, "RGBA")


def palette(transparent: bool) -> PIL.Image.Image:
    image = PIL.Image.fromarray(colour_picture()).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    if transparent:
        image.info["transparency"] = int(np.asarray(image)[0, 0])  # the colour of the top-left corner
    return image


SOURCES: dict[str, Callable[[], bytes]] = {
    "16-bit gray (I;16)": lambda: encoded(PIL.Image.fromarray(np.rint(picture() * 65535).astype(np.uint16))),
    "RGBA": lambda: encoded(rgba()),
    "LA": lambda: encoded(rgba().convert("LA")),
    "CMYK": lambda: encoded(PIL.Image.fromarray(colour_picture()).convert("CMYK"), "TIFF"),
    "palette": lambda: encoded(palette(transparent=False)),
    "palette with a transparent colour": lambda: encoded(palette(transparent=True)),
    "mode I, 8-bit values": lambda: encoded(
        PIL.Image.fromarray(np.rint(picture() * 255).astype(np.int32), "I"), "TIFF"
    ),
    "mode I, 16-bit values": lambda: encoded(
        PIL.Image.fromarray(np.rint(picture() * 65535).astype(np.int32), "I"), "TIFF"
    ),
}


def processor_pixels(image: PIL.Image.Image) -> np.ndarray:
    """What the processor feeds the model, before rescaling: (H, W, 3) on the 0..255 scale, not resized."""
    processor = ViTVQImageProcessor(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    return processor(image, return_tensors="np").pixel_values[0].transpose(1, 2, 0)


@pytest.mark.parametrize("source", list(SOURCES))
def test_training_decoding_and_the_processor_see_the_same_pixels(source):
    data = SOURCES[source]()
    decoded = decode_image({"bytes": data, "path": None})
    assert decoded.mode == "RGB" and decoded.size == (40, 24)
    reference = processor_pixels(PIL.Image.open(io.BytesIO(data)))
    # decode_image rounds high-precision pixels to 8 bits; 8-bit sources agree exactly
    np.testing.assert_allclose(np.asarray(decoded), reference, rtol=0, atol=0.5 + 1e-4)
    assert np.ptp(reference) > 100  # the picture survived: not clipped to white or black


@pytest.mark.parametrize("mode", ["16-bit PNG", "mode I"])
def test_16_bit_gray_equals_its_8_bit_version_within_one_level(mode):
    gray8 = np.rint(picture() * 255).astype(np.uint8)
    deep = np.rint(picture() * 65535).astype(np.uint16)
    data = (
        encoded(PIL.Image.fromarray(deep))
        if mode == "16-bit PNG"
        else encoded(PIL.Image.fromarray(deep.astype(np.int32), "I"), "TIFF")
    )
    expected = np.repeat(gray8[..., None], 3, axis=-1).astype(np.float64)
    # convert("RGB") clipped these to white (99.996% of a 16-bit photo's pixels were 255)
    np.testing.assert_allclose(np.asarray(decode_image(data)), expected, rtol=0, atol=1)
    np.testing.assert_allclose(processor_pixels(PIL.Image.open(io.BytesIO(data))), expected, rtol=0, atol=0.51)


def test_mode_i_is_8_bit_up_to_255_and_16_bit_above():
    gray8 = np.rint(picture() * 255).astype(np.uint8)
    as_i = PIL.Image.fromarray(gray8).convert("I")  # PIL's own L -> I keeps 0..255
    assert as_i.mode == "I"
    rgb = to_rgb_array(as_i)
    assert rgb.dtype == np.uint8  # the same picture as mode L, not read as 16-bit (almost black)
    np.testing.assert_array_equal(rgb, to_rgb_array(PIL.Image.fromarray(gray8)))
    deep = PIL.Image.fromarray(np.full((2, 2), 25700, np.int32), "I")
    np.testing.assert_allclose(to_rgb_array(deep), 100.0, rtol=0, atol=1e-4)  # 25700 / 65535 * 255
    assert to_rgb_array(deep).dtype == np.float32
    with pytest.raises(ValueError, match=r"\[-1, 300\]; expected 8-bit values"):
        to_rgb_array(PIL.Image.fromarray(np.array([[-1, 300]], np.int32), "I"))
    assert decode_image(PIL.Image.fromarray(np.full((2, 2), 70000, np.int32), "I")) is None  # out of range


def test_transparency_is_composited_on_white():
    decoded = np.asarray(decode_image(encoded(rgba())))
    np.testing.assert_array_equal(decoded[:, 0], 255)  # alpha 0: white, not the hidden colour
    np.testing.assert_array_equal(decoded[:, -1], colour_picture()[:, -1])  # alpha 255: the colour
    corner = np.asarray(decode_image(encoded(palette(transparent=True))))[0, 0]
    np.testing.assert_array_equal(corner, [255, 255, 255])


def test_to_rgb_array_dtypes_and_float_checks():
    assert to_rgb_array(PIL.Image.new("RGB", (3, 2), (1, 2, 3))).dtype == np.uint8
    assert to_rgb_array(PIL.Image.new("RGB", (3, 2))).shape == (2, 3, 3)
    np.testing.assert_allclose(to_rgb_array(PIL.Image.new("F", (3, 2), 0.25)), 63.75, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"Float image has values in \[1\.5, 1\.5\]"):
        to_rgb_array(PIL.Image.new("F", (3, 2), 1.5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_rgb_array(PIL.Image.new("F", (3, 2), float("nan")))
