"""LPIPS (random VGG16 trunk, the real v0.1 heads from torchmetrics' wheel) and the ConvNeXt perceptual term (tiny
random ConvNeXt): metric properties, gradients to the input, torchvision-named weight files, clear errors for bad
files, and the torchvision <-> transformers ConvNeXt key converter. Offline."""

from __future__ import annotations

import collections
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextModel

from hf_vitvq.training.perceptual import (
    LPIPS,
    VGG16_URL,
    ConvNextPerceptualLoss,
    PerceptualWeightsError,
    VGG16Features,
    convnext_state_dict_from_torchvision,
    convnext_state_dict_to_torchvision,
    find_lpips_heads,
    lpips_trunk_available,
)


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(random_trunk=True)


@pytest.fixture(scope="module")
def photos(photo_paths) -> torch.Tensor:
    """Two real photos as a (2, 3, 64, 64) batch in [-1, 1]."""
    arrays = [np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.BICUBIC)) for path in photo_paths[:2]]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def blurred(images: torch.Tensor) -> torch.Tensor:
    kernel_1d = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = torch.outer(kernel_1d, kernel_1d) / 256
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), kernel.expand(3, 1, 5, 5), groups=3)


def torchvision_vgg16_file(path, trunk: VGG16Features) -> dict[str, torch.Tensor]:
    """A file named as torchvision's vgg16() state dict: our trunk's tensors plus (small, fake) classifier layers."""
    state_dict = collections.OrderedDict(trunk.state_dict())
    state_dict.update({"classifier.0.weight": torch.randn(4, 8), "classifier.6.bias": torch.randn(4)})
    torch.save(state_dict, path)
    return state_dict


# ---------------------------------------------------------------------------------------------------------------- LPIPS


def test_lpips_uses_the_shipped_v01_heads(lpips):
    heads_path = find_lpips_heads()
    assert heads_path.parts[-4:] == ("functional", "image", "lpips_models", "vgg.pth")
    assert "torchmetrics" in heads_path.parts
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    for index, head in enumerate(lpips.heads):
        assert torch.equal(head.weight, heads[f"lin{index}.model.1.weight"])


def test_lpips_metric_properties(lpips, photos):
    other = photos.flip(0)
    assert torch.equal(lpips(photos, photos), torch.zeros(2))
    forward, backward = lpips(photos, other), lpips(other, photos)
    assert forward.shape == (2,) and forward.dtype == torch.float32
    torch.testing.assert_close(forward, backward, rtol=1e-5, atol=1e-7)
    assert (forward > 0).all()
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert (lpips(noise[:2], noise[2:]) >= 0).all()


def test_lpips_matches_torchmetrics_reference(lpips, photos, monkeypatch):
    """torchmetrics' own LPIPS code (scaling layer, VGG16 slices, normalisation, heads, averages), run on our trunk
    since it would take torchvision's, gives the same distances (it puts its eps 1e-8 inside the square root)."""
    reference_lpips = pytest.importorskip("torchmetrics.functional.image.lpips")
    monkeypatch.setattr(reference_lpips, "_get_tv_model_features", lambda net, pretrained: lpips.trunk.features)
    reference = reference_lpips._LPIPS(pretrained=True, net="vgg", pnet_rand=True)
    other = blurred(photos.flip(0))
    with torch.no_grad():
        expected = reference(photos, other).flatten()
    torch.testing.assert_close(lpips(photos, other), expected, rtol=1e-4, atol=1e-6)


def test_lpips_blur_is_farther_than_small_noise(lpips, photos):
    noisy = photos + 0.02 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(2))
    blur_distance, noise_distance = lpips(photos, blurred(photos)), lpips(photos, noisy)
    assert (blur_distance > 3 * noise_distance).all(), (blur_distance, noise_distance)


def test_lpips_is_frozen_but_passes_gradients(lpips, photos):
    reconstruction = blurred(photos).requires_grad_(True)
    lpips.train()
    assert not lpips.training and not lpips.trunk.training
    assert not any(parameter.requires_grad for parameter in lpips.parameters())
    lpips(reconstruction, photos).sum().backward()
    assert torch.isfinite(reconstruction.grad).all()
    assert reconstruction.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in lpips.parameters())


def test_lpips_float32_under_autocast(lpips, photos):
    reference = lpips(photos, blurred(photos))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distance = lpips(photos.bfloat16(), blurred(photos).bfloat16())
    assert distance.dtype == torch.float32
    torch.testing.assert_close(distance, reference, rtol=0.05, atol=1e-4)  # only the inputs were rounded to bf16


def test_lpips_rejects_mismatched_shapes(lpips):
    with pytest.raises(ValueError, match=r"same shape, got \(1, 3, 32, 32\) and \(1, 3, 16, 16\)"):
        lpips(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 16, 16))


def test_torchvision_named_vgg16_file_loads_every_key(tmp_path):
    torch.manual_seed(1)
    source = VGG16Features()
    state_dict = torchvision_vgg16_file(tmp_path / "vgg16.pth", source)
    assert "features.28.bias" in state_dict and "features.30.weight" not in state_dict  # torchvision's numbering
    loaded = LPIPS(lpips_trunk=tmp_path / "vgg16.pth")
    trunk_state = loaded.trunk.state_dict()
    assert set(trunk_state) == {name for name in state_dict if name.startswith("features.")}
    assert len(trunk_state) == 26  # 13 convs: weight and bias
    assert all(torch.equal(trunk_state[name], state_dict[name]) for name in trunk_state)


def test_lpips_uses_the_torch_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not lpips_trunk_available()
    assert lpips_trunk_available(tmp_path / "any.pth")  # a given path counts; loading it checks it

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PerceptualWeightsError, match=f"Could not load torchvision's VGG16 weights from {VGG16_URL}"):
        LPIPS()

    torch.manual_seed(2)
    cache = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cache.parent.mkdir(parents=True, exist_ok=True)
    state_dict = torchvision_vgg16_file(cache, VGG16Features())
    assert lpips_trunk_available()
    assert torch.equal(LPIPS().trunk.features[28].bias, state_dict["features.28.bias"])


class NotATensor:
    pass


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("features.28.bias"), r"missing keys: features\.28\.bias"),
        (lambda sd: sd.update({"features.30.weight": torch.zeros(1)}), r"unexpected keys: features\.30\.weight"),
        (
            lambda sd: sd.update({"features.0.weight": torch.zeros(64, 3, 5, 5)}),
            r"features\.0\.weight: \(64, 3, 5, 5\)",
        ),
        (lambda sd: sd.update({"features.0.bias": torch.zeros(64, dtype=torch.long)}), r"features\.0\.bias: .*int64"),
    ],
)
def test_wrong_vgg16_file_is_a_clear_error(tmp_path, change, message):
    state_dict = VGG16Features().state_dict()
    change(state_dict)
    torch.save(state_dict, tmp_path / "vgg16.pth")
    with pytest.raises(PerceptualWeightsError, match=message) as error:
        LPIPS(lpips_trunk=tmp_path / "vgg16.pth")
    assert str(tmp_path / "vgg16.pth") in str(error.value)
    assert "torchvision's VGG16 weights" in str(error.value)


def test_unloadable_files_are_clear_errors(tmp_path):
    with pytest.raises(PerceptualWeightsError, match="no such file") as error:
        LPIPS(lpips_trunk=tmp_path / "absent.pth")
    assert str(tmp_path / "absent.pth") in str(error.value)

    torch.save({"features.0.weight": NotATensor()}, tmp_path / "custom.pth")
    with pytest.raises(PerceptualWeightsError, match=r"weights_only=True") as error:
        LPIPS(lpips_trunk=tmp_path / "custom.pth")
    assert str(tmp_path / "custom.pth") in str(error.value)

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(PerceptualWeightsError, match=r"holds a list, not a state dict"):
        LPIPS(lpips_trunk=tmp_path / "list.pth")


def test_wrong_heads_file_is_a_clear_error(tmp_path):
    heads = torch.load(find_lpips_heads(), map_location="cpu", weights_only=True)
    heads["lin4.model.1.weight"] = torch.zeros(1, 256, 1, 1)
    torch.save(heads, tmp_path / "heads.pth")
    with pytest.raises(PerceptualWeightsError, match=r"LPIPS v0.1 VGG heads.*lin4\.model\.1\.weight: \(1, 256, 1, 1\)"):
        LPIPS(lpips_heads=tmp_path / "heads.pth", random_trunk=True)


# ------------------------------------------------------------------------------------------------------------- ConvNeXt


def tiny_convnext_config(**overrides: object) -> ConvNextConfig:
    kwargs = {"depths": [1, 2, 1, 1], "hidden_sizes": [8, 16, 32, 64], "num_labels": 10, "layer_norm_eps": 1e-6}
    kwargs.update(overrides)
    return ConvNextConfig(**kwargs)


def randomized(model: nn.Module) -> nn.Module:
    """Every parameter random (not 1e-6 layer scales, unit LayerNorms), so that a misplaced tensor shows."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


class LayerNorm2d(nn.LayerNorm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.permute(*self.dims)


class TorchvisionCNBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute(0, 3, 1, 2),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.layer_scale * self.block(hidden_states)


class TorchvisionConvNeXt(nn.Module):
    """torchvision's `ConvNeXt` module layout (torchvision/models/convnext.py), for checking the converter: stem
    `features.0`, stages at odd indices, downsampling at even ones, `classifier` = LayerNorm2d, Flatten, Linear."""

    def __init__(self, config: ConvNextConfig) -> None:
        super().__init__()
        widths = config.hidden_sizes
        layers = [nn.Sequential(nn.Conv2d(3, widths[0], kernel_size=4, stride=4), LayerNorm2d(widths[0], eps=1e-6))]
        for stage, depth in enumerate(config.depths):
            layers.append(nn.Sequential(*(TorchvisionCNBlock(widths[stage]) for _ in range(depth))))
            if stage + 1 < len(config.depths):
                downsample = nn.Conv2d(widths[stage], widths[stage + 1], kernel_size=2, stride=2)
                layers.append(nn.Sequential(LayerNorm2d(widths[stage], eps=1e-6), downsample))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            LayerNorm2d(widths[-1], eps=1e-6), nn.Flatten(1), nn.Linear(widths[-1], config.num_labels)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixel_values).mean(dim=(2, 3), keepdim=True))


def test_convnext_converter_round_trip_is_exact():
    config = tiny_convnext_config()
    state_dict = randomized(ConvNextForImageClassification(config)).state_dict()
    torchvision_state = convnext_state_dict_to_torchvision(state_dict, config)
    assert torchvision_state["features.7.0.layer_scale"].shape == (64, 1, 1)
    back = convnext_state_dict_from_torchvision(torchvision_state, config)
    assert list(back) != [] and set(back) == set(state_dict)
    assert all(torch.equal(back[name], state_dict[name]) for name in state_dict)
    again = convnext_state_dict_to_torchvision(back, config)
    assert set(again) == set(torchvision_state)
    assert all(torch.equal(again[name], torchvision_state[name]) for name in torchvision_state)


def test_convnext_converter_matches_torchvision_layout():
    """Names and shapes equal those of torchvision's module layout, and both networks give the same logits."""
    config = tiny_convnext_config()
    model = randomized(ConvNextForImageClassification(config)).eval()
    reference = TorchvisionConvNeXt(config).eval()
    torchvision_state = convnext_state_dict_to_torchvision(model.state_dict(), config)
    expected = {name: tensor.shape for name, tensor in reference.state_dict().items()}
    assert {name: tensor.shape for name, tensor in torchvision_state.items()} == expected
    reference.load_state_dict(torchvision_state)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, reference(pixels), rtol=1e-4, atol=1e-5)


def test_convnext_converter_names_missing_keys():
    config = tiny_convnext_config()
    torchvision_state = convnext_state_dict_to_torchvision(ConvNextForImageClassification(config).state_dict(), config)
    del torchvision_state["features.4.1.weight"]
    with pytest.raises(ValueError, match=r"missing keys: features\.4\.1\.weight"):
        convnext_state_dict_from_torchvision(torchvision_state, config)


@pytest.fixture(scope="module")
def convnext_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("convnext")
    torch.manual_seed(4)
    ConvNextForImageClassification(tiny_convnext_config(layer_scale_init_value=0.5)).save_pretrained(folder)
    return folder


def test_convnext_loss_properties(convnext_folder, photos):
    loss_fn = ConvNextPerceptualLoss.from_pretrained(convnext_folder)
    loss_fn.train()
    assert not loss_fn.training and not any(parameter.requires_grad for parameter in loss_fn.parameters())
    assert loss_fn.classifier.config.drop_path_rate == 0.0
    assert loss_fn(photos, photos).item() == 0.0
    reconstruction = blurred(photos).requires_grad_(True)
    loss = loss_fn(reconstruction, photos)
    assert loss.shape == () and loss.dtype == torch.float32 and loss.item() > 0
    loss.backward()
    assert torch.isfinite(reconstruction.grad).all() and reconstruction.grad.abs().sum() > 0


def test_convnext_loss_is_the_logit_mse_at_224(convnext_folder):
    """The documented recipe by hand: [-1, 1] -> [0, 1], antialiased bilinear resize to 224 (256 px inputs, so that
    the antialiasing matters), ImageNet statistics."""
    loss_fn = ConvNextPerceptualLoss.from_pretrained(convnext_folder)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def logits(images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate((images + 1) / 2, size=224, mode="bilinear", align_corners=False, antialias=True)
        return loss_fn.classifier(pixel_values=(resized - mean) / std).logits

    images, references = torch.rand(2, 2, 3, 256, 256, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        expected = F.mse_loss(logits(images), logits(references))
        torch.testing.assert_close(loss_fn(images, references), expected, rtol=1e-4, atol=1e-7)


def test_convnext_loss_from_torchvision_file(tmp_path, photos):
    config = tiny_convnext_config()
    model = randomized(ConvNextForImageClassification(config)).eval()
    torch.save(convnext_state_dict_to_torchvision(model.state_dict(), config), tmp_path / "convnext.pth")
    loss_fn = ConvNextPerceptualLoss.from_pretrained(tmp_path / "convnext.pth", torchvision_config=config)
    with torch.no_grad():
        torch.testing.assert_close(
            loss_fn.classifier(pixel_values=photos).logits, model(pixel_values=photos).logits, rtol=1e-5, atol=1e-6
        )
    # a file of other tensors (here LPIPS' VGG16 trunk) is named in the error
    torch.save(VGG16Features().state_dict(), tmp_path / "vgg16.pth")
    with pytest.raises(PerceptualWeightsError, match=r"vgg16\.pth does not hold torchvision ConvNeXt weights"):
        ConvNextPerceptualLoss.from_pretrained(tmp_path / "vgg16.pth", torchvision_config=config)


def test_convnext_checkpoint_without_classifier_is_an_error(tmp_path):
    ConvNextModel(tiny_convnext_config()).save_pretrained(tmp_path / "no_head")
    with pytest.raises(PerceptualWeightsError, match=r"lacks weights of ConvNextForImageClassification: classifier"):
        ConvNextPerceptualLoss.from_pretrained(tmp_path / "no_head")
