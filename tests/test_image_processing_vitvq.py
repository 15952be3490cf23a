"""Tests for `ViTVQImageProcessor`: input conversion, resize/crop geometry, exact values, round trips, errors."""

import ast
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from hf_vitvq import ViTVQImageProcessor
from hf_vitvq.pixel_conversion import normalize_pixels, to_uint8

REPO = Path(__file__).resolve().parents[1]
MODULE_PATH = REPO / "hf_vitvq" / "image_processing_vitvq.py"
PHOTOS_DIR = REPO / ".." / "shared" / "data" / "photos"
TITOK_REFERENCE = REPO / "tests" / "fixtures" / "titok" / "titok_tiny_vq" / "reference.safetensors"


def random_uint8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def raw_processor(side: int = 8) -> ViTVQImageProcessor:
    """A processor that neither resizes nor rescales an already `side x side` image: output = 0..255 RGB values."""
    return ViTVQImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_rescale=False, do_normalize=False
    )


def pixels(processor: ViTVQImageProcessor, images, **kwargs) -> np.ndarray:
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


# ----------------------------------------------------------------------------------------------- settings


def test_defaults():
    processor = ViTVQImageProcessor()
    assert processor.model_input_names == ["pixel_values"]
    assert processor.do_convert_rgb and processor.do_resize and processor.do_center_crop
    assert processor.do_rescale and processor.do_normalize
    assert processor.size.shortest_edge == 256 and processor.size.height is None
    # ints: size is the short side (as torchvision's Resize(256)), crop_size a square
    custom = ViTVQImageProcessor(size=64, crop_size=48)
    assert custom.size.shortest_edge == 64 and (custom.crop_size.height, custom.crop_size.width) == (48, 48)
    assert (processor.crop_size.height, processor.crop_size.width) == (256, 256)
    assert int(processor.resample) == int(PIL.Image.Resampling.BICUBIC)
    assert processor.rescale_factor == 1 / 255
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and list(processor.image_std) == [0.5, 0.5, 0.5]


def test_save_pretrained_preserves_every_setting(tmp_path):
    settings = {
        "do_convert_rgb": False,
        "do_resize": False,
        "size": {"height": 48, "width": 40},
        "resample": int(PIL.Image.Resampling.LANCZOS),
        "do_center_crop": False,
        "crop_size": {"height": 24, "width": 16},
        "do_rescale": False,
        "rescale_factor": 1 / 127.5,
        "do_normalize": False,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
    }
    ViTVQImageProcessor(**settings).save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    for name, value in settings.items():
        assert saved[name] == value, name
    assert saved["image_processor_type"] == "ViTVQImageProcessor"

    loaded = ViTVQImageProcessor.from_pretrained(tmp_path)
    loaded_dict = {name: value for name, value in loaded.to_dict().items() if name != "auto_map"}
    assert loaded_dict == ViTVQImageProcessor(**settings).to_dict()
    assert dict(loaded.size) == dict(ViTVQImageProcessor(**settings).size)
    assert loaded.rescale_factor == 1 / 127.5 and list(loaded.image_std) == [0.4, 0.5, 0.6]


def test_default_config_file_values(tmp_path):
    ViTVQImageProcessor().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 256}
    assert saved["crop_size"] == {"height": 256, "width": 256}
    assert saved["resample"] == 3  # PIL BICUBIC
    assert saved["rescale_factor"] == 1 / 255
    assert saved["image_mean"] == [0.5, 0.5, 0.5] and saved["image_std"] == [0.5, 0.5, 0.5]
    assert all(saved[flag] is True for flag in ("do_convert_rgb", "do_resize", "do_center_crop", "do_rescale"))


def test_call_overrides_do_not_change_the_processor():
    processor = ViTVQImageProcessor()
    image = np.full((256, 256, 3), 255, dtype=np.uint8)
    assert pixels(processor, image, do_normalize=False).max() == 1.0
    assert processor.do_normalize is True
    assert pixels(processor, image).max() == 1.0 and pixels(processor, np.zeros_like(image)).min() == -1.0


@pytest.mark.parametrize("module", ["image_processing_vitvq", "pixel_conversion"])
def test_processor_modules_import_only_each_other_and_light_packages_for_remote_code(module):
    """A saved folder gets the processor's file and the siblings it imports relatively: those may import nothing
    else of ours, and no package beyond numpy, PIL, torch and transformers."""
    tree = ast.parse((MODULE_PATH.parent / f"{module}.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            assert node.level == 1 and node.module == "pixel_conversion", f"relative import on line {node.lineno}"
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
    allowed = {"numpy", "PIL", "torch", "transformers"} | set(sys.stdlib_module_names)
    assert roots <= allowed, roots - allowed


def test_the_two_processor_files_work_alone_as_in_a_remote_code_folder(tmp_path, monkeypatch):
    folder = tmp_path / "remote_folder"
    folder.mkdir()
    (folder / "__init__.py").touch()
    for module in ("image_processing_vitvq", "pixel_conversion"):
        shutil.copy(MODULE_PATH.parent / f"{module}.py", folder)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("remote_folder.image_processing_vitvq")
    assert module.__file__.startswith(str(folder))
    image = random_uint8(40, 30)
    np.testing.assert_array_equal(pixels(module.ViTVQImageProcessor(), image), pixels(ViTVQImageProcessor(), image))


# ------------------------------------------------------------------------------------- values and round trips


def test_known_pixel_values():
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    image[0, 0] = (0, 255, 128)
    image[0, 1] = (1, 254, 127)
    values = pixels(ViTVQImageProcessor(), image)
    assert values.shape == (1, 3, 256, 256) and values.dtype == np.float32
    np.testing.assert_allclose(values[0, :, 0, 0], [-1.0, 1.0, 128 / 127.5 - 1], rtol=0, atol=1e-7)
    np.testing.assert_allclose(values[0, :, 0, 1], [1 / 127.5 - 1, 254 / 127.5 - 1, 127 / 127.5 - 1], atol=1e-7)
    assert values.min() == -1.0 and values.max() == 1.0


def test_value_range_is_minus_one_to_one():
    values = pixels(ViTVQImageProcessor(), random_uint8(300, 400))
    assert values.min() >= -1.0 and values.max() <= 1.0
    assert values.min() < -0.99 and values.max() > 0.99  # random noise spans the range


@pytest.mark.parametrize("output_type", ["np", "pt", "pil"])
def test_round_trip_is_exact_without_resize(output_type):
    image = random_uint8(256, 256, seed=1)
    processor = ViTVQImageProcessor()
    restored = processor.postprocess(processor(image, return_tensors="pt").pixel_values, output_type=output_type)
    if output_type == "pil":
        assert len(restored) == 1 and restored[0].mode == "RGB" and restored[0].size == (256, 256)
        restored = np.asarray(restored[0])[None]
    elif output_type == "pt":
        assert restored.dtype == torch.uint8 and restored.shape == (1, 3, 256, 256)
        restored = restored.permute(0, 2, 3, 1).numpy()
    assert restored.dtype == np.uint8 and restored.shape == (1, 256, 256, 3)
    np.testing.assert_array_equal(restored[0], image)


def test_round_trip_small_size_and_centre_crop_offset():
    processor = ViTVQImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    square = random_uint8(32, 32, seed=2)
    np.testing.assert_array_equal(processor.postprocess(pixels(processor, square), "np")[0], square)
    # Short side already 32, so no resize. Crop offsets as torchvision: int(round((size - 32) / 2)), half to even.
    for height, width, top, left in [(32, 35, 0, 2), (32, 33, 0, 0), (38, 32, 3, 0), (37, 32, 2, 0)]:
        image = random_uint8(height, width, seed=height + width)
        restored = processor.postprocess(pixels(processor, image), "np")[0]
        np.testing.assert_array_equal(restored, image[top : top + 32, left : left + 32])


def test_do_normalize_false_gives_zero_one_and_postprocess_inverts_it():
    image = random_uint8(256, 256, seed=5)
    processor = ViTVQImageProcessor(do_normalize=False)
    values = pixels(processor, image)
    np.testing.assert_allclose(values[0], image.transpose(2, 0, 1) / 255.0, rtol=0, atol=1e-7)
    assert values.min() == 0.0 and values.max() == 1.0
    np.testing.assert_array_equal(processor.postprocess(values, "np")[0], image)
    # The default processor would read the same [0, 1] values as [-1, 1]: a different (wrong) image.
    assert not np.array_equal(ViTVQImageProcessor().postprocess(values, "np")[0], image)


def test_custom_mean_std_and_rescale_are_inverted():
    mean, std = [0.1, 0.2, 0.3], [0.2, 0.3, 0.4]
    processor = ViTVQImageProcessor(image_mean=mean, image_std=std, size=16, crop_size=16)
    image = random_uint8(16, 16, seed=6)
    values = pixels(processor, image)
    expected = (image.transpose(2, 0, 1) / 255.0 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    np.testing.assert_allclose(values[0], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(processor.postprocess(values, "np")[0], image)

    unscaled = ViTVQImageProcessor(do_rescale=False, do_normalize=False, size=16, crop_size=16)
    np.testing.assert_array_equal(pixels(unscaled, image)[0], image.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(unscaled.postprocess(pixels(unscaled, image), "np")[0], image)


def test_postprocess_clamps_rounds_and_accepts_one_image():
    processor = ViTVQImageProcessor()
    values = torch.tensor([-3.0, -1.0, 100.4 / 127.5 - 1, 100.6 / 127.5 - 1, 1.0, 2.5]).reshape(1, 1, 6).repeat(3, 1, 1)
    restored = processor.postprocess(values, output_type="np")  # (3, 1, 6) -> batch of one
    assert restored.shape == (1, 1, 6, 3)
    np.testing.assert_array_equal(restored[0, 0, :, 0], [0, 0, 100, 101, 255, 255])
    images = processor.postprocess(torch.zeros(2, 3, 5, 7), output_type="pil")
    assert [image.size for image in images] == [(7, 5), (7, 5)]
    assert np.asarray(images[1])[0, 0].tolist() == [128, 128, 128]  # 0 -> 127.5 -> rounds to even 128


# ------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("height", "width", "resized"),
    [(300, 451, (256, 384)), (451, 300, (384, 256)), (3, 5, (256, 426)), (1, 1, (256, 256)), (512, 512, (256, 256))],
)
def test_resize_short_side_then_centre_crop(height, width, resized):
    image = random_uint8(height, width, seed=height)
    processor = ViTVQImageProcessor()
    uncropped = processor(image, do_center_crop=False)["pixel_values"][0]
    assert uncropped.shape == (3, *resized)
    cropped = pixels(processor, image)
    assert cropped.shape == (1, 3, 256, 256)
    top, left = round((resized[0] - 256) / 2), round((resized[1] - 256) / 2)
    np.testing.assert_array_equal(cropped[0], uncropped[:, top : top + 256, left : left + 256])


def test_exact_size_and_crop_larger_than_image_pads_black():
    processor = ViTVQImageProcessor(size={"height": 20, "width": 10}, crop_size={"height": 24, "width": 10})
    values = pixels(processor, np.full((50, 50, 3), 255, dtype=np.uint8))
    assert values.shape == (1, 3, 24, 10)
    assert (values[0, :, :2] == -1).all() and (values[0, :, 22:] == -1).all()  # 2 rows of padding each side
    np.testing.assert_allclose(values[0, :, 2:22], 1.0, atol=1e-6)


def test_resize_matches_pil_bicubic():
    image = random_uint8(60, 90, seed=7)
    processor = ViTVQImageProcessor(do_center_crop=False, do_rescale=False, do_normalize=False)
    ours = processor(image)["pixel_values"][0]
    assert ours.shape == (3, 256, 384)
    # 8-bit input: PIL's own 8-bit RGB resize, bit for bit.
    reference = np.asarray(PIL.Image.fromarray(image).resize((384, 256), PIL.Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(ours, reference.transpose(2, 0, 1))
    # 16-bit input: PIL float32 ("F") resize per channel, clipped to [0, 255], no 8-bit rounding.
    deep = image.astype(np.uint16) * 257 + 100
    ours = processor(deep)["pixel_values"][0]
    channels = [
        np.asarray(PIL.Image.fromarray((deep[..., c] / 257).astype(np.float32)).resize((384, 256), 3)) for c in range(3)
    ]
    np.testing.assert_allclose(ours, np.clip(np.stack(channels), 0, 255), rtol=0, atol=1e-3)
    assert np.abs(ours - np.rint(ours)).max() > 0.1  # really not quantised


def test_solid_colour_survives_resize():
    image = np.empty((100, 60, 3), dtype=np.uint8)
    image[:] = (37, 200, 90)
    expected = np.broadcast_to(np.reshape([37, 200, 90], (3, 1, 1)), (3, 256, 256))
    processor = ViTVQImageProcessor(do_normalize=False, do_rescale=False)
    np.testing.assert_array_equal(pixels(processor, image)[0], expected)
    np.testing.assert_allclose(pixels(processor, image / 255.0)[0], expected, rtol=0, atol=1e-3)


# ------------------------------------------------------------------------------------- input conversion


def _palette_image() -> PIL.Image.Image:
    image = PIL.Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    return image


def _transparent_palette_image() -> PIL.Image.Image:
    image = _palette_image()
    image.info["transparency"] = 1
    return image


@pytest.mark.parametrize(
    ("make_image", "expected"),
    [
        (lambda: PIL.Image.new("RGB", (8, 8), (10, 20, 30)), (10, 20, 30)),
        (lambda: PIL.Image.new("L", (8, 8), 100), (100, 100, 100)),
        (lambda: PIL.Image.new("LA", (8, 8), (100, 255)), (100, 100, 100)),
        (lambda: PIL.Image.new("LA", (8, 8), (100, 0)), (255, 255, 255)),
        (lambda: PIL.Image.new("RGBA", (8, 8), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: PIL.Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (255, 255, 255)),
        (lambda: PIL.Image.new("RGBA", (8, 8), (10, 20, 30, 51)), (206, 208, 210)),  # 0.2 * c + 0.8 * 255
        (lambda: PIL.Image.new("CMYK", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),
        (lambda: PIL.Image.new("CMYK", (8, 8), (255, 0, 0, 0)), (0, 255, 255)),
        (lambda: PIL.Image.new("CMYK", (8, 8), (0, 0, 0, 255)), (0, 0, 0)),
        (_palette_image, (10, 20, 30)),
        (_transparent_palette_image, (255, 255, 255)),
        (lambda: PIL.Image.new("I;16", (8, 8), 25700), (100, 100, 100)),  # 25700 / 65535 * 255 = 100
        (lambda: PIL.Image.new("I;16", (8, 8), 65535), (255, 255, 255)),
        (lambda: PIL.Image.new("I", (8, 8), 25700), (100, 100, 100)),
        (lambda: PIL.Image.new("F", (8, 8), 0.5), (127.5, 127.5, 127.5)),
        (lambda: PIL.Image.new("1", (8, 8), 1), (255, 255, 255)),
        (lambda: PIL.Image.new("1", (8, 8), 0), (0, 0, 0)),
    ],
)
def test_pil_modes_convert_to_rgb(make_image, expected):
    image = make_image()
    values = pixels(raw_processor(), image)
    assert values.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(values[0, :, 3, 5], expected, rtol=0, atol=1e-4)
    assert (values[0] == values[0, :, :1, :1]).all(), f"mode {image.mode}: not a solid colour"


def test_16_bit_arrays_keep_their_precision():
    image = np.zeros((8, 8, 3), dtype=np.uint16)
    image[..., 0], image[..., 1], image[..., 2] = 25700, 65535, 25828  # 100, 255 and 100.498...
    values = pixels(raw_processor(), image)
    np.testing.assert_allclose(values[0, :, 0, 0], [100.0, 255.0, 25828 / 257], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(
        pixels(raw_processor(), torch.from_numpy(image.astype(np.int32)).to(torch.uint16)), values
    )


def test_numpy_hwc_chw_torch_and_float_inputs_agree():
    image = random_uint8(40, 50, seed=8)
    processor = ViTVQImageProcessor()
    expected = pixels(processor, PIL.Image.fromarray(image))
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    for variant in (image, chw, torch.from_numpy(chw), torch.from_numpy(image), image.astype(np.int64)):
        np.testing.assert_array_equal(pixels(processor, variant), expected)
    batch = pixels(processor, np.stack([image, image[::-1]]))  # (B, H, W, C) batch
    assert batch.shape == (2, 3, 256, 256)
    np.testing.assert_array_equal(batch[:1], expected)
    np.testing.assert_array_equal(pixels(processor, torch.from_numpy(np.stack([chw, chw[:, ::-1].copy()]))), batch)
    # Float inputs take the float32 resize path; without a resize they match the uint8 result exactly.
    same_size = ViTVQImageProcessor(size=40, crop_size=40)
    expected = pixels(same_size, image)
    for variant in (image.astype(np.float32) / 255, torch.from_numpy(chw).double() / 255):
        np.testing.assert_allclose(pixels(same_size, variant), expected, rtol=0, atol=1e-6)


def test_ambiguous_layout_follows_library_convention_or_input_data_format():
    processor = ViTVQImageProcessor(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    array = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    assert processor(array)["pixel_values"][0].shape == (3, 3, 4)  # numpy: (H, W, C)
    assert processor(torch.from_numpy(array))["pixel_values"][0].shape == (3, 4, 3)  # torch: (C, H, W)
    first = processor(array, input_data_format="channels_first")["pixel_values"][0]
    np.testing.assert_array_equal(first, array.astype(np.float32))


def test_grayscale_and_rgba_arrays():
    processor = raw_processor()
    gray = np.full((8, 8), 77, dtype=np.uint8)
    np.testing.assert_array_equal(pixels(processor, gray)[0, :, 0, 0], [77, 77, 77])
    np.testing.assert_array_equal(pixels(processor, gray[..., None]), pixels(processor, gray))
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (10, 20, 30, 255)  # opaque
    rgba[:, 4:] = (10, 20, 30, 0)  # transparent -> white
    values = pixels(processor, rgba)
    np.testing.assert_array_equal(values[0, :, 0, 0], [10, 20, 30])
    np.testing.assert_array_equal(values[0, :, 0, 7], [255, 255, 255])
    np.testing.assert_allclose(pixels(processor, rgba.astype(np.float32) / 255), values, atol=1e-4)


def test_list_of_mixed_sizes_is_a_batch():
    images = [random_uint8(300, 200), PIL.Image.new("L", (40, 90), 30), torch.rand(3, 257, 1000)]
    processor = ViTVQImageProcessor()
    batch = processor(images, return_tensors="pt")["pixel_values"]
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32 and batch.shape == (3, 3, 256, 256)
    for index, image in enumerate(images):
        np.testing.assert_array_equal(batch[index].numpy(), pixels(processor, image)[0])
    as_list = processor(images)["pixel_values"]  # return_tensors=None: list of (3, H, W) arrays
    assert isinstance(as_list, list) and len(as_list) == 3 and as_list[2].shape == (3, 256, 256)


# ------------------------------------------------------------------------------------------- real photos


def test_real_jpegs():
    photos = sorted(PHOTOS_DIR.glob("*.jpg"))[:2]
    if len(photos) < 2:
        pytest.skip(f"need two JPEGs in {PHOTOS_DIR}")
    images = [PIL.Image.open(path) for path in photos]
    processor = ViTVQImageProcessor()
    values = processor(images, return_tensors="pt")["pixel_values"]
    assert values.shape == (2, 3, 256, 256) and values.dtype == torch.float32
    assert values.min() >= -1 and values.max() <= 1
    assert values.std() > 0.1  # a photo, not a blank
    # Same pixels as TiTok's torchvision pipeline (Resize(256, BICUBIC) on PIL, CenterCrop(256)), done by hand.
    for image, processed in zip(images, values, strict=True):
        width, height = image.size
        new_size = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
        resized = np.asarray(image.convert("RGB").resize(new_size, PIL.Image.Resampling.BICUBIC))
        top, left = round((resized.shape[0] - 256) / 2), round((resized.shape[1] - 256) / 2)
        reference = resized[top : top + 256, left : left + 256].transpose(2, 0, 1) / 127.5 - 1
        np.testing.assert_allclose(processed.numpy(), reference, rtol=0, atol=1e-6)


def test_matches_official_titok_preprocessing():
    if not TITOK_REFERENCE.exists() or not PHOTOS_DIR.exists():
        pytest.skip("needs tests/fixtures/titok and ../shared/data/photos")
    from safetensors.numpy import load_file

    # The fixture's inputs, made with the official code: these two photos, short side 32 (PIL bicubic), centre
    # crop 32 (torchvision offsets), RGB / 255.
    reference = load_file(TITOK_REFERENCE)["pixel_values"]
    names = ["sun80_abbey_sun_asztnlqhlrvirneh.jpg", "sun80_beach_sun_bgtlposotyokcsdg.jpg"]
    processor = ViTVQImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_normalize=False
    )
    np.testing.assert_array_equal(pixels(processor, [PIL.Image.open(PHOTOS_DIR / name) for name in names]), reference)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([], ValueError, "empty list"),
        (None, TypeError, "images is a NoneType; expected a PIL.Image.Image, numpy.ndarray or torch.Tensor"),
        ("photo.jpg", TypeError, "images is a str; expected a PIL.Image.Image"),
        ({"pixel_values": 1}, TypeError, "images is a dict"),
        ([np.zeros((8, 8, 3), np.uint8), 3], TypeError, r"images\[1\] is a int"),
        ([[np.zeros((8, 8, 3), np.uint8)]], TypeError, "nested lists are not supported"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "zero-size image of shape"),
        (np.zeros((8, 0), np.uint8), ValueError, "zero-size image"),
        (PIL.Image.new("RGB", (0, 8)), ValueError, "zero-size PIL image"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "empty batch"),
        (np.zeros((8, 8, 5), np.uint8), ValueError, "channel axis .* 5\\+-channel"),
        (np.zeros((2, 8, 8), np.uint8), ValueError, r"shape \(2, 8, 8\): expected 1 \(grayscale\), 3 \(RGB\)"),
        (np.zeros((8,), np.uint8), ValueError, "expected an image"),
        (np.zeros((1, 1, 8, 8, 3), np.uint8), ValueError, "expected an image"),
        (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN or infinite"),
        (torch.full((3, 8, 8), float("inf")), ValueError, "NaN or infinite"),
        (np.full((8, 8, 3), 2.0), ValueError, r"Float image has values in \[2, 2\]; expected floats in \[0, 1\]"),
        (np.full((8, 8, 3), -1.0), ValueError, r"\[0, 1\]"),
        (np.full((8, 8, 3), 300, np.int64), ValueError, r"values in \[300, 300\]; expected 8-bit"),
        (np.zeros((8, 8, 3), np.complex64), TypeError, "Unsupported image dtype complex64"),
        (PIL.Image.new("I", (8, 8), 70000), ValueError, "16-bit"),
    ],
)
def test_bad_inputs_raise(images, error, message):
    with pytest.raises(error, match=message):
        ViTVQImageProcessor()(images, return_tensors="pt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"do_convert_rgb": False}, "mode 'L' with do_convert_rgb=False"),
        ({"return_tensors": "mlx"}, "return_tensors"),
        ({"do_center_crop": False}, "different sizes after preprocessing"),
        ({"data_format": "channels_last"}, "channels-first"),
    ],
)
def test_bad_call_settings_raise(kwargs, message):
    images = [PIL.Image.new("L", (30, 20)), PIL.Image.new("L", (20, 20))]
    with pytest.raises(ValueError, match=message):
        ViTVQImageProcessor()(images, **{"return_tensors": "pt", **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std` must be non-zero"),
        ({"image_mean": [0.5, 0.5]}, "one float or 3 floats"),
        ({"size": {"longest_edge": 256}}, "shortest_edge"),
        ({"rescale_factor": 0.0}, "rescale_factor` must be positive"),
    ],
)
def test_bad_settings_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTVQImageProcessor(**kwargs)


def test_rgb_only_when_do_convert_rgb_is_false():
    processor = ViTVQImageProcessor(do_convert_rgb=False)
    assert pixels(processor, random_uint8(20, 20)).shape == (1, 3, 256, 256)
    with pytest.raises(ValueError, match="4 channels .* do_convert_rgb=False"):
        processor(random_uint8(20, 20, channels=4))


def test_postprocess_errors():
    processor = ViTVQImageProcessor()
    with pytest.raises(ValueError, match=r"output_type` must be one of \('pil', 'np', 'pt'\), got 'jpeg'"):
        processor.postprocess(torch.zeros(1, 3, 4, 4), output_type="jpeg")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) or \(3, H, W\).*got torch.Size\(\[1, 4, 4, 3\]\)"):
        processor.postprocess(torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"got \(4, 4\)"):
        processor.postprocess(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        processor.postprocess(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray, got list"):
        processor.postprocess([[0.0]])


def test_for_image_size_resizes_and_crops_to_the_model_size():
    processor = ViTVQImageProcessor.for_image_size(32, do_normalize=False)
    assert processor.size["shortest_edge"] == 32
    assert (processor.crop_size["height"], processor.crop_size["width"]) == (32, 32)
    pixel_values = processor(PIL.Image.new("RGB", (90, 50), (255, 0, 0)), return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 32, 32)
    assert pixel_values[0, 0].min().item() == 1.0 and pixel_values[0, 1].max().item() == 0.0


def test_batched_pixel_values_are_contiguous():
    pixel_values = ViTVQImageProcessor.for_image_size(16)([PIL.Image.new("RGB", (20, 30))] * 2, return_tensors="pt")
    assert pixel_values.pixel_values.is_contiguous()


@pytest.mark.parametrize(
    ("value_range", "expected"), [((-1.0, 1.0), (-1.0, 1.0)), ((0.0, 1.0), (0.0, 1.0)), ((-2.0, 6.0), (-2.0, 6.0))]
)
def test_for_config_maps_pixels_onto_the_config_range(value_range, expected):
    from types import SimpleNamespace

    processor = ViTVQImageProcessor.for_config(SimpleNamespace(image_size=8, pixel_value_range=value_range))
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[0, 0] = 255
    pixel_values = processor(image, return_tensors="pt").pixel_values
    assert (pixel_values.min().item(), pixel_values.max().item()) == pytest.approx(expected)
    assert np.array_equal(processor.postprocess(pixel_values, output_type="np")[0], image)


# ------------------------------------------------------------------------------ input dtypes (float64, bfloat16)


def test_float64_float16_bfloat16_and_float8_inputs():
    image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    processor = ViTVQImageProcessor.for_image_size(16)
    reference = pixels(processor, image.float())
    np.testing.assert_allclose(pixels(processor, image), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pixels(processor, image.numpy()), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pixels(processor, image.numpy().astype(np.float16)), reference, rtol=0, atol=2e-3)
    # dtypes numpy lacks are read as float32: the same pixels as the tensor cast by hand
    for dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float16):
        low_precision = image.to(dtype)
        np.testing.assert_array_equal(pixels(processor, low_precision), pixels(processor, low_precision.float()))
    np.testing.assert_array_equal(pixels(processor, image.float().requires_grad_()), reference)


def test_numpy_bfloat16_is_rejected_naming_the_dtype():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with pytest.raises(TypeError, match="Unsupported image dtype bfloat16"):
        ViTVQImageProcessor()(np.zeros((8, 8, 3), ml_dtypes.bfloat16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "positive"),
        ({"crop_size": {"height": 4}}, "crop_size"),
        ({"data_format": "channels_last"}, "channels-first"),
        ({"image_std": [0.5, 0.5, 0.0], "do_normalize": False}, "non-zero"),  # checked even when the step is off
    ],
)
def test_more_bad_settings_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTVQImageProcessor(**kwargs)


# ------------------------------------------------------------------- normalize_pixels / to_uint8 (tensor path)

VALUE_RANGES = [(-1.0, 1.0), (0.0, 1.0), (-2.0, 6.0)]


def config_processor(value_range: tuple[float, float], image_size: int = 16) -> ViTVQImageProcessor:
    from types import SimpleNamespace

    return ViTVQImageProcessor.for_config(SimpleNamespace(image_size=image_size, pixel_value_range=value_range))


@pytest.mark.parametrize("value_range", VALUE_RANGES)
def test_normalize_pixels_equals_the_processor_to_float32_rounding(value_range):
    processor = config_processor(value_range)
    image = random_uint8(16, 16, seed=11)
    chw = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
    expected = processor(image, return_tensors="pt").pixel_values
    ours = normalize_pixels(chw, value_range)
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    scale = max(abs(value) for value in value_range)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6 * scale)
    unit = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(12))  # a float image in [0, 1]
    expected = processor(unit, return_tensors="pt").pixel_values
    torch.testing.assert_close(normalize_pixels(unit, value_range), expected, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("value_range", VALUE_RANGES)
def test_to_uint8_inverts_normalize_pixels_and_matches_postprocess(value_range):
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    for dtype in (torch.float32, torch.float64):
        restored = to_uint8(normalize_pixels(levels, value_range).to(dtype), value_range)
        assert restored.dtype == torch.uint8
        assert torch.equal(restored, levels)
    low, high = value_range
    noisy = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(13)) * (high - low) * 1.4 + low - 0.2
    assert torch.equal(config_processor(value_range).postprocess(noisy, "pt"), to_uint8(noisy, value_range))
    assert to_uint8(torch.tensor([low - 5.0, high + 5.0]), value_range).tolist() == [0, 255]  # clamped


@pytest.mark.parametrize("value_range", VALUE_RANGES)
def test_normalize_pixels_writes_into_out_the_numbers_it_returns_and_leaves_its_input_alone(value_range):
    hwc = torch.from_numpy(random_uint8(16, 16, seed=14))[None]  # (1, H, W, 3): normalised through a permuted view
    expected = normalize_pixels(hwc.permute(0, 3, 1, 2).contiguous(), value_range)
    out = torch.full((1, 3, 16, 16), float("nan"))
    assert normalize_pixels(hwc.permute(0, 3, 1, 2), value_range, out=out) is out
    assert torch.equal(out, expected)
    unit = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(15))
    before = unit.clone()
    floats = normalize_pixels(unit, value_range)
    assert torch.equal(unit, before)  # the result is computed in place, on a copy
    assert torch.equal(normalize_pixels(unit, value_range, out=torch.empty_like(unit)), floats)


def test_normalize_pixels_rejects_other_integer_dtypes():
    with pytest.raises(TypeError, match="must be uint8 .* got dtype torch.int16"):
        normalize_pixels(torch.zeros(3, 2, 2, dtype=torch.int16), (-1.0, 1.0))
