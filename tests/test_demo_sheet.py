"""The reconstruction sheet of the demo and of validation: enlarged tiles, per-pair PSNR, what the tokens are."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from training_utils import QUICK_RUN, run_in_process

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.metrics import psnr
from hf_vitvq.training.data import embedded_streams
from hf_vitvq.training.evaluation import (
    model_reconstruction_sheet,
    reconstruction_sheet,
    spread_images,
    to_unit_range,
    token_caption,
)
from hf_vitvq.training.image_shards import validation_batches


def random_images(count: int, size: int, seed: int) -> list[Image.Image]:
    generator = np.random.default_rng(seed)
    return [Image.fromarray(generator.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def tile(sheet_image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(sheet_image.crop(box))


@pytest.mark.parametrize(("size", "scale"), [(32, 4), (48, 3), (128, 1), (200, 1)])
def test_small_images_are_enlarged_by_nearest_neighbour_to_at_least_128_pixels(size, scale):
    originals, reconstructions = random_images(5, size, seed=0), random_images(5, size, seed=1)
    sheet = reconstruction_sheet(originals, reconstructions, "caption")
    assert sheet.scale == scale
    for images, boxes in ((originals, sheet.original_boxes), (reconstructions, sheet.reconstruction_boxes)):
        assert len(boxes) == 5
        for image, box in zip(images, boxes, strict=True):
            drawn = tile(sheet.image, box)
            assert drawn.shape == (size * scale, size * scale, 3) and size * scale >= 128
            # every source pixel becomes a scale x scale block of exactly its value
            expected = np.asarray(image).repeat(scale, axis=0).repeat(scale, axis=1)
            np.testing.assert_array_equal(drawn, expected)
    # 4 pairs a row: the fifth pair starts a second row, below the first, at the left
    assert sheet.original_boxes[4][0] == sheet.original_boxes[0][0]
    assert sheet.original_boxes[4][1] > sheet.original_boxes[0][3]


def test_images_of_different_sizes_are_refused():
    reconstructions = [*random_images(1, 32, seed=1), Image.new("RGB", (16, 16))]
    with pytest.raises(ValueError, match=r"All images must be 32x32 .*\(16, 16\)"):
        reconstruction_sheet(random_images(2, 32, seed=0), reconstructions, "")


def test_each_pair_shows_the_psnr_of_the_drawn_images(monkeypatch):
    """The number under each pair is `hf_vitvq.metrics.psnr` of the model's 8-bit reconstruction against the
    8-bit original, as drawn on the sheet and as validation scores them."""
    written = []
    draw_text = ImageDraw.ImageDraw.text

    def recording_text(self, xy, text, *args, **kwargs):
        written.append(text)
        return draw_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", recording_text)
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig.from_preset("tiny")).eval()
    processor = ViTVQImageProcessor.for_config(model.config)
    pixel_values = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sheet = model_reconstruction_sheet(model, processor, pixel_values, count=5)

    with torch.no_grad():
        reconstruction = model(pixel_values[:5]).reconstruction
    expected = psnr(to_unit_range(reconstruction, model.config), to_unit_range(pixel_values[:5], model.config))
    torch.testing.assert_close(torch.tensor(sheet.psnrs), expected, rtol=1e-4, atol=1e-3)

    def drawn(box: tuple[int, int, int, int]) -> torch.Tensor:  # the image under `box`, (1, 3, H, W) in [0, 1]
        pixels = tile(sheet.image, box)[:: sheet.scale, :: sheet.scale].copy()
        return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255

    drawn_psnrs = [
        psnr(drawn(reconstruction), drawn(original)).item()
        for reconstruction, original in zip(sheet.reconstruction_boxes, sheet.original_boxes, strict=True)
    ]
    assert drawn_psnrs == pytest.approx(sheet.psnrs, rel=1e-6)
    assert [text for text in written if text.startswith("PSNR")] == [f"PSNR {value:.1f} dB" for value in sheet.psnrs]
    assert sheet.caption == token_caption(model.config) and sheet.caption in written


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "32 tokens per 32x32 image, each one of 1024 codes (10 bits): 320 bits per image (0.312 bits per pixel)"),
        (
            {"quantizer_type": "rvq", "num_quantizers": 3, "use_l2_norm_codes": False},
            "96 tokens (32 x 3 residual levels) per 32x32 image, each one of 1024 codes (10 bits): 960 bits per image "
            "(0.938 bits per pixel)",
        ),
        (
            {"quantizer_type": "fsq", "fsq_levels": [8, 5, 5, 5]},
            f"32 tokens per 32x32 image, each one of 1000 codes (9.97 bits): {32 * math.log2(1000):.2f} bits per "
            "image (0.311 bits per pixel)",
        ),
        (
            {"quantizer_type": "lfq", "codebook_dim": 6},
            "32 tokens per 32x32 image, each one of 64 codes (6 bits): 192 bits per image (0.188 bits per pixel)",
        ),
        ({"quantizer_type": "kl"}, "32 continuous tokens of 12 channels per 32x32 image (no bit count)"),
    ],
)
def test_the_caption_counts_tokens_and_bits_of_the_config(overrides, expected):
    assert token_caption(ViTVQConfig.from_preset("tiny", **overrides)) == expected


def test_a_sheet_shows_images_spread_over_the_whole_validation_set():
    batches = [torch.arange(4.0), torch.arange(4.0, 8.0), torch.arange(8.0, 10.0)]  # 10 "images"
    assert spread_images(batches, count=4).tolist() == [0.0, 2.0, 5.0, 7.0]
    assert spread_images(batches, count=10).tolist() == spread_images(batches, count=20).tolist() == list(range(10))
    assert spread_images(batches).tolist() == [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0]  # 8 by default


def test_training_writes_validation_and_final_sheets(tmp_path):
    """A 2-step run over 12 validation tiles (batches of 4): the validation sheet and `final/reconstructions.png` are
    the sheet of 128-pixel tiles of 8 of them spread over all 12, the final one drawn by the saved model."""
    output_dir = tmp_path / "run"
    run_in_process([*QUICK_RUN, "--output_dir", str(output_dir), "--max_train_steps", "2", "--validation_steps", "2",
                    "--checkpointing_steps", "1000", "--validation_images", "12"])  # fmt: skip
    model = ViTVQModel.from_pretrained(output_dir / "final").eval()
    processor = ViTVQImageProcessor.from_pretrained(output_dir / "final")
    batches = validation_batches(embedded_streams(32)[1], "image", processor, limit=12, batch_size=4)
    expected = model_reconstruction_sheet(model, processor, torch.cat(batches)[[0, 1, 3, 4, 6, 7, 9, 10]])
    assert expected.scale == 4 and len(expected.psnrs) == 8
    for name in ("final/reconstructions.png", "validation/step-0000002.png"):
        with Image.open(output_dir / name) as written:
            np.testing.assert_array_equal(np.asarray(written), np.asarray(expected.image))
