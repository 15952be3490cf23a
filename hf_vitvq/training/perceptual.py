"""Perceptual losses for tokenizer training, without torchvision: LPIPS (v0.1, VGG16) and TiTok's ConvNeXt term.

- LPIPS: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018),
  `richzhang/PerceptualSimilarity`. The VGG16 trunk is ours in plain torch, named as torchvision's `vgg16().features`
  so that torchvision's ImageNet file (`vgg16-397923af.pth`) loads unchanged; the v0.1 linear heads come from the
  `vgg.pth` that the torchmetrics (and lpips) wheels carry.
- ConvNeXt term: TiTok (`bytedance/1d-tokenizer`, `modeling/modules/perceptual_loss.py`): the mean squared difference
  of an ImageNet ConvNeXt-S classifier's logits for the two images, here on transformers'
  `ConvNextForImageClassification`; torchvision's `convnext_small` state dict converts onto it exactly.

Both networks are frozen (eval mode, no parameter gradients) but pass gradients to their inputs, and compute in
float32 with autocast disabled, as TiTok's loss does. Inputs are images in [-1, 1].

Every weight file is read with `torch.load(..., weights_only=True)`; a missing file, a pickle that refuses to load that
way, wrong keys or wrong shapes raise `PerceptualWeightsError` naming the file and what was expected.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ConvNextConfig, ConvNextForImageClassification
from transformers.utils import logging

logger = logging.get_logger(__name__)

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# VGG16 configuration "D" up to relu5_3 (torchvision's `features[:30]`): per block, (channels, number of 3x3 convs),
# each conv followed by a ReLU, a 2x2 max-pool between blocks; this numbers the modules exactly as torchvision does.
# LPIPS taps each block's last ReLU (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: modules 3, 8, 15, 22, 29).
_VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
LPIPS_CHANNELS = tuple(channels for channels, _ in _VGG16_BLOCKS)
# LPIPS v0.1 ScalingLayer: (x - shift) / scale on [-1, 1] inputs (ImageNet statistics moved to that range).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_VGG16_DESCRIPTION = "torchvision's VGG16 weights"


class PerceptualWeightsError(ValueError):
    """A perceptual network's weight file is missing, not loadable with `weights_only=True`, or holds the wrong
    tensors; the message names the file and what was expected."""


# --------------------------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------------------------


def _abbreviate(names: Iterable[str], limit: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_weights_file(path: str | os.PathLike, description: str) -> dict[str, torch.Tensor]:
    """Read a state dict with `torch.load(path, map_location="cpu", weights_only=True)`.

    Raises `PerceptualWeightsError` (naming `path` and `description`, e.g. "torchvision's VGG16 weights") when the
    file is missing, cannot be unpickled that way (custom classes, corrupt data) or is not a mapping of names to
    tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PerceptualWeightsError(f"Expected {description} in {path}, but there is no such file.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise PerceptualWeightsError(
            f"Could not read {path} with torch.load(weights_only=True): {error}. Expected {description} saved as a "
            "plain state dict (names to tensors)."
        ) from error
    return check_tensor_mapping(state_dict, description, source=str(path))


def check_tensor_mapping(state_dict: object, description: str, source: str) -> dict[str, torch.Tensor]:
    """`state_dict` as a dict after checking it maps strings to tensors; otherwise `PerceptualWeightsError`."""
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state_dict.items()
    ):
        raise PerceptualWeightsError(
            f"{source} holds a {type(state_dict).__name__}, not a state dict; expected {description} as a mapping of "
            "parameter names to tensors."
        )
    return dict(state_dict)


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, torch.Size],
    description: str,
    source: str,
    ignored_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise `PerceptualWeightsError` unless `state_dict` has exactly the keys of `expected_shapes` (plus any
    starting with one of `ignored_prefixes`), each a floating-point tensor of the expected shape."""
    present = {name for name in state_dict if not name.startswith(ignored_prefixes)}
    missing, unexpected = set(expected_shapes) - present, present - set(expected_shapes)
    wrong = [
        f"{name}: {tuple(state_dict[name].shape)} {state_dict[name].dtype} (expected {tuple(shape)} floating point)"
        for name, shape in expected_shapes.items()
        if name in state_dict and (state_dict[name].shape != shape or not torch.is_floating_point(state_dict[name]))
    ]
    problems = [
        f"missing keys: {_abbreviate(missing)}" if missing else "",
        f"unexpected keys: {_abbreviate(unexpected)}" if unexpected else "",
        f"wrong shapes or dtypes: {'; '.join(wrong[:6])}" if wrong else "",
    ]
    if any(problems):
        raise PerceptualWeightsError(
            f"{source} does not hold {description}: {'; '.join(p for p in problems if p)}. Expected the "
            f"{len(expected_shapes)} tensors {_abbreviate(expected_shapes)}."
        )


# --------------------------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------------------------


def vgg16_cache_path() -> Path:
    """Where `torch.hub.load_state_dict_from_url(VGG16_URL)` keeps torchvision's VGG16 file (under `$TORCH_HOME`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name


def lpips_trunk_available(lpips_trunk: str | os.PathLike | None = None) -> bool:
    """Whether `LPIPS(lpips_trunk)` has trunk weights to load without a download: True when a path is given (a
    missing or wrong file then raises `PerceptualWeightsError` when loading, as a user error should) or when the
    torch hub cache holds torchvision's VGG16 file. Training turns the LPIPS term off with a warning when this is
    False and it cannot download, instead of running with random trunk weights."""
    return lpips_trunk is not None or vgg16_cache_path().is_file()


def find_lpips_heads() -> Path:
    """The LPIPS v0.1 VGG heads file (`vgg.pth`, 7 KB) shipped in the torchmetrics or the lpips wheel, located with
    `importlib.util.find_spec` without importing either package."""
    candidates = []
    for package, relative_path in (
        ("torchmetrics", "functional/image/lpips_models/vgg.pth"),
        ("lpips", "weights/v0.1/vgg.pth"),
    ):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            candidates.append(Path(spec.origin).parent / relative_path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise PerceptualWeightsError(
        "Could not find the LPIPS v0.1 VGG heads (vgg.pth): install torchmetrics (its wheel carries "
        "functional/image/lpips_models/vgg.pth) or pass the file's path as `lpips_heads`"
        + (f"; looked at {', '.join(map(str, candidates))}." if candidates else ".")
    )


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features` up to relu5_3 (3x3 convs with padding 1, ReLU, 2x2 max-pools), with the same
    module indices (`features.0.weight` ... `features.28.bias`), so torchvision's VGG16 state dict loads unchanged.
    Returns the five LPIPS taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        tap_ends = []
        in_channels = 3
        for block, (channels, num_convs) in enumerate(_VGG16_BLOCKS):
            if block > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for _ in range(num_convs):
                layers += [nn.Conv2d(in_channels, channels, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = channels
            tap_ends.append(len(layers))
        self.features = nn.Sequential(*layers)
        self.tap_ends = tuple(tap_ends)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> 5 feature maps (B, C_i, H / 2^i, W / 2^i), C_i = 64, 128, 256, 512, 512; H, W >= 16."""
        taps = []
        start = 0
        hidden_states = pixel_values
        for end in self.tap_ends:
            for layer in self.features[start:end]:
                hidden_states = layer(hidden_states)
            taps.append(hidden_states)
            start = end
        return tuple(taps)

    def load_torchvision_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """Load torchvision's `vgg16()` state dict: every `features.*` tensor must be present with its shape, the
        `classifier.*` tensors (fully connected layers) are ignored, anything else is an error."""
        expected = {name: tensor.shape for name, tensor in self.state_dict().items()}
        check_state_dict(state_dict, expected, _VGG16_DESCRIPTION, source, ignored_prefixes=("classifier.",))
        self.load_state_dict({name: state_dict[name] for name in expected})


def _lpips_head_key(index: int) -> str:
    # index 1 because index 0 of each `NetLinLayer.model` is a Dropout
    return f"lin{index}.model.1.weight"


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """LPIPS' channel normalisation x / (||x||_2 over channels + eps) of (B, C, H, W) features.

    `vector_norm` is the same number as sqrt(sum x^2), with a zero (not NaN) gradient where all channels are 0.
    """
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


class FrozenImageComparison(nn.Module):
    """Base of the perceptual networks: a fixed network that compares two image batches. Subclasses call `freeze()`
    at the end of `__init__`: no parameter takes gradients and the module stays in eval mode whatever `train()` is
    asked (TiTok calls `eval()` on them each forward), while gradients still flow to the inputs."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenImageComparison:
        return super().train(False)

    def check_pair(self, images: torch.Tensor, references: torch.Tensor) -> None:
        """Raise a `ValueError` unless both are (B, 3, H, W) batches of the same shape."""
        if images.shape != references.shape or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects two (B, 3, H, W) batches of the same shape, got "
                f"{tuple(images.shape)} and {tuple(references.shape)}."
            )


class LPIPS(FrozenImageComparison):
    """LPIPS v0.1 with a VGG16 trunk: d(x, y) = sum over the 5 taps of mean_{h,w} w_l . (n(f_l(x)) - n(f_l(y)))^2,
    where f_l are the VGG16 features of the scaled images, n is `unit_normalize` and w_l the 1x1 linear heads.

    Frozen (always in eval mode, `requires_grad=False`); gradients flow to the inputs.

    Args:
        lpips_trunk (`str` or `os.PathLike`, *optional*):
            torchvision's VGG16 state dict file (`vgg16-397923af.pth`). When None, it is taken from the torch hub cache
            (`$TORCH_HOME/hub/checkpoints/`), downloaded there from `VGG16_URL` when absent (needs network).
        lpips_heads (`str` or `os.PathLike`, *optional*):
            The LPIPS v0.1 heads file (`vgg.pth`, keys `lin0.model.1.weight` ... `lin4.model.1.weight`); found in the
            installed torchmetrics or lpips package when None.
        random_trunk (`bool`, *optional*, defaults to `False`):
            Keep the trunk randomly initialised instead of loading it, with a warning. For tests and timings only:
            the distances then carry little perceptual meaning.
    """

    def __init__(
        self,
        lpips_trunk: str | os.PathLike | None = None,
        lpips_heads: str | os.PathLike | None = None,
        random_trunk: bool = False,
    ) -> None:
        super().__init__()
        if random_trunk and lpips_trunk is not None:
            raise ValueError(f"Pass either `lpips_trunk` ({lpips_trunk}) or `random_trunk=True`, not both.")
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.trunk = VGG16Features()
        self.heads = nn.ModuleList(nn.Conv2d(channels, 1, kernel_size=1, bias=False) for channels in LPIPS_CHANNELS)

        if random_trunk:
            logger.warning("LPIPS runs with a randomly initialised VGG16 trunk (random_trunk=True): tests only.")
        elif lpips_trunk is not None:
            self.trunk.load_torchvision_state_dict(
                load_weights_file(lpips_trunk, _VGG16_DESCRIPTION), source=str(lpips_trunk)
            )
        else:
            self.trunk.load_torchvision_state_dict(_download_vgg16(), source=str(vgg16_cache_path()))
        self._load_heads(find_lpips_heads() if lpips_heads is None else Path(lpips_heads))
        self.freeze()

    def _load_heads(self, path: Path) -> None:
        description = "the LPIPS v0.1 VGG heads"
        state_dict = load_weights_file(path, description)
        expected = {_lpips_head_key(i): head.weight.shape for i, head in enumerate(self.heads)}
        check_state_dict(state_dict, expected, description, str(path))
        with torch.no_grad():
            for i, head in enumerate(self.heads):
                head.weight.copy_(state_dict[_lpips_head_key(i)])

    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """LPIPS distance of each pair of (B, 3, H, W) images in [-1, 1] (H, W >= 16): (B,) float32, >= 0."""
        self.check_pair(images, references)
        with torch.autocast(device_type=images.device.type, enabled=False):
            features = self.trunk((torch.cat([images, references]).float() - self.shift) / self.scale)
            distance = images.new_zeros(images.shape[0], dtype=torch.float32)
            for head, tap in zip(self.heads, features, strict=True):
                tap_images, tap_references = unit_normalize(tap).chunk(2)
                squared_difference = (tap_images - tap_references).square()
                # the 1x1 head is linear, so averaging over H, W first gives the same number for less work
                distance = distance + head(squared_difference.mean(dim=(2, 3), keepdim=True)).flatten()
        return distance


def _download_vgg16() -> dict[str, torch.Tensor]:
    """torchvision's VGG16 state dict via `torch.hub.load_state_dict_from_url` (offline when already cached)."""
    cache_path = vgg16_cache_path()
    try:
        state_dict = torch.hub.load_state_dict_from_url(VGG16_URL, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:  # URLError is an OSError
        raise PerceptualWeightsError(
            f"Could not load {_VGG16_DESCRIPTION} from {VGG16_URL} (cached as {cache_path}): {error}. Offline, pass "
            "the file's path as `lpips_trunk` or copy it to that cache path."
        ) from error
    return check_tensor_mapping(state_dict, _VGG16_DESCRIPTION, source=str(cache_path))


# --------------------------------------------------------------------------------------------------------------------
# ConvNeXt
# --------------------------------------------------------------------------------------------------------------------


def convnext_small_config() -> ConvNextConfig:
    """transformers' `ConvNextConfig` for torchvision's `convnext_small` (LayerNorm eps 1e-6 everywhere, as
    torchvision; no stochastic depth, which is inactive in eval mode anyway)."""
    return ConvNextConfig(
        depths=[3, 3, 27, 3],
        hidden_sizes=[96, 192, 384, 768],
        layer_scale_init_value=1e-6,
        layer_norm_eps=1e-6,
        drop_path_rate=0.0,
        num_labels=1000,
    )


def torchvision_convnext_key_map(config: ConvNextConfig) -> dict[str, str]:
    """torchvision `ConvNeXt` state-dict name -> transformers `ConvNextForImageClassification` name, for every tensor.

    torchvision: `features.0` stem (`.0` conv, `.1` LayerNorm2d); stage s's blocks at `features.{2s+1}.{j}`
    (`block.0` depthwise conv, `block.2` LayerNorm, `block.3` / `block.5` the two Linear layers, `layer_scale`); the
    downsampling before stage s >= 1 at `features.{2s}` (`.0` LayerNorm2d, `.1` conv); `classifier.0` LayerNorm2d,
    `classifier.2` Linear. Requires `config.layer_scale_init_value > 0` (torchvision's blocks always have it).
    """
    if not config.layer_scale_init_value > 0:
        raise ValueError("torchvision's ConvNeXt blocks have a layer scale: `layer_scale_init_value` must be > 0.")
    modules = [
        ("features.0.0", "convnext.embeddings.patch_embeddings"),
        ("features.0.1", "convnext.embeddings.layernorm"),
    ]
    layer_scales = []
    for stage, depth in enumerate(config.depths):
        stage_name = f"convnext.encoder.stages.{stage}"
        if stage > 0:
            modules += [(f"features.{2 * stage}.{i}", f"{stage_name}.downsampling_layer.{i}") for i in (0, 1)]
        for block in range(depth):
            torchvision_block, block_name = f"features.{2 * stage + 1}.{block}", f"{stage_name}.layers.{block}"
            modules += [
                (f"{torchvision_block}.block.{index}", f"{block_name}.{name}")
                for index, name in ((0, "dwconv"), (2, "layernorm"), (3, "pwconv1"), (5, "pwconv2"))
            ]
            layer_scales.append((f"{torchvision_block}.layer_scale", f"{block_name}.layer_scale_parameter"))
    modules += [("classifier.0", "convnext.layernorm"), ("classifier.2", "classifier")]
    key_map = {f"{old}.{kind}": f"{new}.{kind}" for old, new in modules for kind in ("weight", "bias")}
    key_map.update(layer_scales)
    return key_map


def _renamed(
    state_dict: Mapping[str, torch.Tensor], key_map: Mapping[str, str], source_kind: str
) -> dict[str, torch.Tensor]:
    missing, unexpected = set(key_map) - set(state_dict), set(state_dict) - set(key_map)
    if missing or unexpected:
        raise ValueError(
            f"Not a {source_kind} ConvNeXt state dict for this config: "
            + "; ".join(
                f"{kind} keys: {_abbreviate(keys)}"
                for kind, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
            + "."
        )
    renamed = {}
    for name, new_name in key_map.items():
        value = state_dict[name]
        # layer scale: torchvision (C, 1, 1) <-> transformers (C,)
        if name.endswith("layer_scale"):
            value = value.reshape(-1)
        elif name.endswith("layer_scale_parameter"):
            value = value.reshape(-1, 1, 1)
        renamed[new_name] = value
    return renamed


def convnext_state_dict_from_torchvision(
    state_dict: Mapping[str, torch.Tensor], config: ConvNextConfig
) -> dict[str, torch.Tensor]:
    """torchvision `ConvNeXt` state dict -> `ConvNextForImageClassification` state dict (same tensors, renamed;
    layer scales reshaped (C, 1, 1) -> (C,)). Raises `ValueError` listing missing or unexpected keys."""
    return _renamed(state_dict, torchvision_convnext_key_map(config), "torchvision")


def convnext_state_dict_to_torchvision(
    state_dict: Mapping[str, torch.Tensor], config: ConvNextConfig
) -> dict[str, torch.Tensor]:
    """Inverse of `convnext_state_dict_from_torchvision`."""
    inverse = {new: old for old, new in torchvision_convnext_key_map(config).items()}
    return _renamed(state_dict, inverse, "transformers")


class ConvNextPerceptualLoss(FrozenImageComparison):
    """TiTok's ConvNeXt perceptual term: both images from [-1, 1] to [0, 1], resized to `image_size` (bilinear,
    antialiased, as TiTok), ImageNet-normalised, then the mean squared difference of the classifier's logits.

    Frozen (always in eval mode, `requires_grad=False`); gradients flow to the inputs.

    TiTok uses torchvision's `convnext_small` IMAGENET1K_V1 weights (`convnext_small-0c510722.pth`): load that file
    with `from_pretrained(path_to_the_pth)`. The Hub's `facebook/convnext-small-224` is a different checkpoint (the
    ConvNeXt authors' ImageNet-1k weights converted for transformers; torchvision retrained its own with a newer
    recipe), so its logits, and the loss values, differ from TiTok's.

    Args:
        classifier (`ConvNextForImageClassification`): the network whose logits are compared.
        image_size (`int`, *optional*, defaults to 224): side of the square both images are resized to.
    """

    def __init__(self, classifier: ConvNextForImageClassification, image_size: int = 224) -> None:
        super().__init__()
        self.classifier = classifier.float()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        image_size: int = 224,
        torchvision_config: ConvNextConfig | None = None,
    ) -> ConvNextPerceptualLoss:
        """From a torchvision ConvNeXt state-dict file (converted with `convnext_state_dict_from_torchvision`; its
        architecture is `torchvision_config`, by default `convnext_small_config()`), or else a Hub id or local folder
        of a `ConvNextForImageClassification` (`from_pretrained`, float32, no stochastic depth). A checkpoint without
        classifier weights is an error, not a random head."""
        if torchvision_config is not None and not Path(model_id_or_path).is_file():
            raise ValueError(
                f"`torchvision_config` describes a torchvision file, but {model_id_or_path} is not a file."
            )
        if Path(model_id_or_path).is_file():
            config = convnext_small_config() if torchvision_config is None else torchvision_config
            description = "torchvision ConvNeXt weights"
            state_dict = load_weights_file(model_id_or_path, description)
            try:
                state_dict = convnext_state_dict_from_torchvision(state_dict, config)
            except ValueError as error:
                raise PerceptualWeightsError(f"{model_id_or_path} does not hold {description}: {error}") from error
            classifier = ConvNextForImageClassification(config)
            expected = {name: tensor.shape for name, tensor in classifier.state_dict().items()}
            check_state_dict(state_dict, expected, description, str(model_id_or_path))
            classifier.load_state_dict(state_dict)
        else:
            classifier, loading_info = ConvNextForImageClassification.from_pretrained(
                model_id_or_path, dtype=torch.float32, drop_path_rate=0.0, output_loading_info=True
            )
            if loading_info["missing_keys"]:
                raise PerceptualWeightsError(
                    f"{model_id_or_path} lacks weights of ConvNextForImageClassification: "
                    f"{_abbreviate(loading_info['missing_keys'])}; expected a ConvNeXt ImageNet classifier."
                )
        return cls(classifier, image_size=image_size)

    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of the logits for two (B, 3, H, W) batches in [-1, 1]: a float32 scalar."""
        self.check_pair(images, references)
        with torch.autocast(device_type=images.device.type, enabled=False):
            pixels = (torch.cat([images, references]).float() + 1) / 2  # [-1, 1] -> [0, 1]
            pixels = F.interpolate(
                pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
            logits = self.classifier(pixel_values=(pixels - self.mean) / self.std).logits
            logits_images, logits_references = logits.chunk(2)
            return F.mse_loss(logits_images, logits_references)
