"""Convert a published TiTok checkpoint (github.com/bytedance/1d-tokenizer) into a `hf_vitvq` model folder.

    python -m hf_vitvq.convert_titok --checkpoint tokenizer_titok_l32_imagenet --output titok-l32

The official Hub repositories (`yucornetto/tokenizer_titok_*`) hold a nested `config.json` (`model.vq_model.*`,
`dataset.preprocessing.crop_size`) and a weights file; download them however you like (e.g. `huggingface-cli
download yucornetto/tokenizer_titok_l32_imagenet --local-dir tokenizer_titok_l32_imagenet`): this script reads local
files only. It writes `config.json`, `model.safetensors`, `preprocessor_config.json` (TiTok's preprocessing: resize
the short side bicubic, centre crop, RGB in [0, 1]), a model card, and the modeling code for `trust_remote_code`.

Every official tensor is used exactly once and every shape is checked (as nanoGPT's `from_pretrained` does), so a
conversion either reproduces the official model or fails with a message naming the offending key.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from .configuration_vitvq import TITOK_VIT_SIZES, ViTVQConfig
from .image_processing_vitvq import ViTVQImageProcessor
from .model_card import TrainingDetails, model_card
from .modeling_vitvq import ViTVQModel

# The MaskGIT-VQGAN pixel decoder of the two-stage models: config field -> (official config key, official value).
# The released configs carry none of these keys; they are read when present, for models built at other sizes.
_MASKGIT_VQGAN_FIELDS: dict[str, tuple[str, Any]] = {
    "maskgit_num_codes": ("pixel_num_codes", 1024),
    "maskgit_code_dim": ("pixel_z_channels", 256),
    "maskgit_hidden_channels": ("pixel_hidden_channels", 128),
    "maskgit_channel_mult": ("pixel_channel_mult", [1, 1, 2, 2, 4]),
    "maskgit_num_res_blocks": ("pixel_num_res_blocks", 2),
}

# TiTok reads and reconstructs RGB in [0, 1] (torchvision's ToTensor, no mean/std normalisation).
TITOK_PIXEL_VALUE_RANGE = (0.0, 1.0)

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
# What the released tokenizers were trained on, as a Hub dataset id (the card's `datasets` metadata).
TITOK_TRAINING_DATASET = "ILSVRC/imagenet-1k"


def _vit_key_map(ours: str, theirs: str, num_layers: int) -> dict[str, str]:
    """Names of one ViT stack's LayerNorms and blocks: ours (`{ours}.transformer.*`) -> official (`{theirs}.*`)."""
    key_map = {}
    for suffix in ("weight", "bias"):
        key_map[f"{ours}.transformer.pre_layernorm.{suffix}"] = f"{theirs}.ln_pre.{suffix}"
        key_map[f"{ours}.transformer.post_layernorm.{suffix}"] = f"{theirs}.ln_post.{suffix}"
        for i in range(num_layers):
            layer, block = f"{ours}.transformer.layers.{i}", f"{theirs}.transformer.{i}"
            key_map[f"{layer}.layernorm_before.{suffix}"] = f"{block}.ln_1.{suffix}"
            key_map[f"{layer}.attention.qkv.{suffix}"] = f"{block}.attn.in_proj_{suffix}"  # rows q | k | v
            key_map[f"{layer}.attention.out_proj.{suffix}"] = f"{block}.attn.out_proj.{suffix}"
            key_map[f"{layer}.layernorm_after.{suffix}"] = f"{block}.ln_2.{suffix}"
            key_map[f"{layer}.mlp.fc1.{suffix}"] = f"{block}.mlp.c_fc.{suffix}"
            key_map[f"{layer}.mlp.fc2.{suffix}"] = f"{block}.mlp.c_proj.{suffix}"
    return key_map


def titok_key_map(model: ViTVQModel) -> dict[str, str]:
    """Every parameter name of `model` -> the name of the official TiTok tensor it is loaded from. (Buffers, such as
    a quantizer's usage statistics, have no official counterpart and keep their initial values.)"""
    config = model.config
    key_map = {
        "encoder.latent_tokens": "latent_tokens",
        "encoder.class_embedding": "encoder.class_embedding",
        "encoder.position_embeddings": "encoder.positional_embedding",
        "encoder.latent_position_embeddings": "encoder.latent_token_positional_embedding",
        "decoder.class_embedding": "decoder.class_embedding",
        "decoder.mask_token": "decoder.mask_token",
        "decoder.position_embeddings": "decoder.positional_embedding",
        "decoder.latent_position_embeddings": "decoder.latent_token_positional_embedding",
    }
    for suffix in ("weight", "bias"):
        key_map[f"encoder.patch_embeddings.{suffix}"] = f"encoder.patch_embed.{suffix}"
        key_map[f"encoder.projection.{suffix}"] = f"encoder.conv_out.{suffix}"  # a 1x1 conv there
        key_map[f"decoder.embed.{suffix}"] = f"decoder.decoder_embed.{suffix}"
        if config.decoder_head == "maskgit_vqgan":
            key_map[f"decoder.maskgit_head.fc1.{suffix}"] = f"decoder.ffn.0.{suffix}"
            key_map[f"decoder.maskgit_head.fc2.{suffix}"] = f"decoder.ffn.2.{suffix}"
        else:
            key_map[f"decoder.pixel_projection.{suffix}"] = f"decoder.ffn.0.{suffix}"
            key_map[f"decoder.conv_out.{suffix}"] = f"decoder.conv_out.{suffix}"
    key_map.update(_vit_key_map("encoder", "encoder", config.encoder_num_hidden_layers))
    key_map.update(_vit_key_map("decoder", "decoder", config.decoder_num_hidden_layers))
    if config.decoder_head == "maskgit_vqgan":
        key_map["decoder.maskgit_head.codebook.weight"] = "pixel_quantize.embedding.weight"
        # Our MaskGIT-VQGAN decoder keeps the taming-transformers names (conv_in, mid, up.{i}.block.{j}, ...).
        prefix = "decoder.maskgit_head.decoder."
        for name, _ in model.named_parameters():
            if name.startswith(prefix):
                key_map[name] = "pixel_decoder." + name.removeprefix(prefix)
    codebook = getattr(model.quantize, "embedding", None)  # the VQ codebook; continuous (KL) tokens have none
    if codebook is not None:
        ours = next(name for name, param in model.named_parameters() if param is codebook.weight)
        key_map[ours] = "quantize.embedding.weight"
    return key_map


def convert_state_dict(official: Mapping[str, torch.Tensor], model: ViTVQModel) -> dict[str, torch.Tensor]:
    """Rename (and, for 1x1 convolutions that are linear layers here, reshape) an official TiTok state dict into
    `model`'s. Raises a `ValueError` naming any official key that is missing or left over, or any shape mismatch."""
    expected = dict(model.named_parameters())
    key_map = titok_key_map(model)
    unmapped = sorted(set(expected) - set(key_map))
    assert not unmapped, f"no official name for {unmapped}"  # a bug in titok_key_map, not in the checkpoint
    missing = sorted(theirs for theirs in key_map.values() if theirs not in official)
    unexpected = sorted(set(official) - set(key_map.values()))
    if missing or unexpected:
        raise ValueError(
            "The checkpoint does not match its config.json: "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}."
        )
    assert len(official) == len(key_map) == len(expected)
    converted = {}
    for ours, theirs in key_map.items():
        tensor = official[theirs]
        if tensor.ndim == 4 and tensor.shape[2:] == (1, 1) and expected[ours].ndim == 2:
            tensor = tensor.flatten(1)  # 1x1 conv (out, in, 1, 1) -> linear (out, in)
        if tensor.shape != expected[ours].shape:
            raise ValueError(
                f"Official tensor {theirs!r} has shape {tuple(official[theirs].shape)}, but its config.json implies "
                f"{tuple(expected[ours].shape)} (for {ours!r})."
            )
        converted[ours] = tensor.detach().to(expected[ours].dtype).contiguous()
    return converted


def _get(section: Mapping[str, Any], key: str, where: str) -> Any:
    """`section[key]`, or a `ValueError` naming the missing official config key `{where}.{key}`."""
    if not isinstance(section, Mapping) or key not in section:
        raise ValueError(f"Not an official TiTok config: `{where}.{key}` is missing.")
    return section[key]


def _vit_sizes(name: str, role: str, model_sizes: Mapping[str, tuple[int, int, int]]) -> dict[str, Any]:
    if name not in model_sizes:
        raise ValueError(
            f"Unknown TiTok {role} model size {name!r}; expected one of {sorted(model_sizes)} "
            "(pass `extra_model_sizes={name: (width, layers, heads)}` for others)."
        )
    width, layers, heads = model_sizes[name]
    return {
        f"{role}_hidden_size": width,
        f"{role}_num_hidden_layers": layers,
        f"{role}_num_attention_heads": heads,
        f"{role}_mlp_ratio": 4.0,
    }


def config_from_titok(
    titok_config: Mapping[str, Any], extra_model_sizes: Mapping[str, tuple[int, int, int]] | None = None
) -> ViTVQConfig:
    """The `ViTVQConfig` of an official TiTok `config.json` (already parsed).

    Args:
        titok_config: the nested official config: `model.vq_model.*` and `dataset.preprocessing.crop_size`.
        extra_model_sizes: ViT sizes beyond TiTok's `small` / `base` / `large`, as `{name: (width, layers, heads)}`.
    """
    vq = _get(_get(titok_config, "model", "config.json"), "vq_model", "model")
    preprocessing = _get(_get(titok_config, "dataset", "config.json"), "preprocessing", "dataset")
    crop_size = _get(preprocessing, "crop_size", "dataset.preprocessing")
    where = "model.vq_model"
    patch_size = _get(vq, "vit_enc_patch_size", where)
    if _get(vq, "vit_dec_patch_size", where) != patch_size:
        raise ValueError(f"Encoder and decoder patch sizes differ ({patch_size} vs {vq['vit_dec_patch_size']}).")
    model_sizes = {**TITOK_VIT_SIZES, **(extra_model_sizes or {})}
    # Defaults of missing keys are the official code's.
    quantize_mode = vq.get("quantize_mode", "vq")
    is_legacy = vq.get("is_legacy", True)
    finetune_decoder = vq.get("finetune_decoder", True)
    if is_legacy != finetune_decoder:
        raise ValueError(
            f"Unsupported TiTok variant: is_legacy={is_legacy} with finetune_decoder={finetune_decoder}. The released "
            "models are two-stage (both true: MaskGIT-VQGAN head) or single-stage (both false: pixel head)."
        )
    kwargs: dict[str, Any] = {
        "image_size": crop_size,
        "patch_size": patch_size,
        **_vit_sizes(_get(vq, "vit_enc_model_size", where), "encoder", model_sizes),
        **_vit_sizes(_get(vq, "vit_dec_model_size", where), "decoder", model_sizes),
        "num_latent_tokens": _get(vq, "num_latent_tokens", where),
        "codebook_dim": _get(vq, "token_size", where),
        "use_class_token": True,
        "layer_norm_eps": 1e-5,
        "pixel_value_range": TITOK_PIXEL_VALUE_RANGE,
        "legacy_latent_layout": is_legacy,
        "decoder_head": "maskgit_vqgan" if finetune_decoder else "pixels",
    }
    if quantize_mode == "vq":
        kwargs["codebook_size"] = _get(vq, "codebook_size", where)
        kwargs["use_l2_norm_codes"] = _get(vq, "use_l2_norm", where)
        kwargs["commitment_cost"] = vq.get("commitment_cost", 0.25)
    elif quantize_mode == "vae":
        kwargs["quantizer_type"] = "kl"  # the encoder emits mean and log-variance of `token_size` channels each
    else:
        raise ValueError(f"Unsupported TiTok quantize_mode {quantize_mode!r}; expected 'vq' or 'vae'.")
    if finetune_decoder:
        for field, (key, default) in _MASKGIT_VQGAN_FIELDS.items():
            kwargs[field] = vq.get(key, default)
    return ViTVQConfig(**kwargs)


def load_titok_checkpoint(checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """Read an official checkpoint: a folder with `config.json` and `model.safetensors` or `pytorch_model.bin`, or
    one weights file (`.safetensors`, or `.bin` read with `torch.load(weights_only=True)`) beside a `config.json`.

    Returns:
        (the parsed config.json, the state dict, the path of config.json).
    """
    path = Path(checkpoint)
    if path.is_dir():
        found = [path / name for name in WEIGHTS_NAMES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"No weights in {path}: expected one of {list(WEIGHTS_NAMES)}.")
        weights_path, config_path = found[0], path / "config.json"
    elif path.is_file():
        weights_path, config_path = path, path.parent / "config.json"
    else:
        raise FileNotFoundError(f"TiTok checkpoint {path} does not exist.")
    if not config_path.is_file():
        raise FileNotFoundError(f"No config.json beside {weights_path}: the official config is needed to convert.")
    titok_config = json.loads(config_path.read_text())
    if weights_path.suffix == ".safetensors":
        state_dict = load_file(weights_path)
    elif weights_path.suffix in (".bin", ".pt", ".pth"):
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"Unknown weights format {weights_path.name!r}; expected .safetensors or .bin.")
    return titok_config, state_dict, config_path


def titok_model_card(config: ViTVQConfig, name: str, source: str, model_id: str) -> ModelCard:
    """The card of a converted checkpoint: [`hf_vitvq.model_card.model_card`] with TiTok's provenance, license,
    citation and training data.

    Args:
        config: the converted model's configuration.
        name: the checkpoint's name (the official folder's name), the card's title.
        source: the official config file it was converted from, as shown in the card.
        model_id: the folder or Hub id that the card's loading snippets use.
    """
    description = (
        f'The TiTok 1D image tokenizer `{name}` from "An Image is Worth 32 Tokens for Reconstruction and '
        'Generation" (Yu et al., [arXiv 2406.07550](https://arxiv.org/abs/2406.07550)), converted from the official '
        f"release of [bytedance/1d-tokenizer](https://github.com/bytedance/1d-tokenizer) (`{source}`) with "
        "`hf_vitvq.convert_titok`. The weights are the authors' work, released under the Apache-2.0 license, which "
        "applies to this copy too; cite the paper if you use them. The conversion only renames and reshapes tensors: "
        "token ids are identical to the official code's, and reconstructions agree with it to float32 rounding. "
        "Images are read as TiTok reads them: bicubic resize of the short side, centre crop, RGB in [0, 1]."
    )
    training = TrainingDetails(
        data="ImageNet-1k (ILSVRC 2012) training images at 256x256",
        notes="Trained by the TiTok authors; the recipe is in the paper and in bytedance/1d-tokenizer's configs. "
        "The published ImageNet rFID of each released tokenizer is listed there and in hf-vitvq's README; "
        "`hf-vitvq eval` reproduces that protocol on the 50,000 validation images.",
    )
    return model_card(config, model_id, description, title=name, datasets=[TITOK_TRAINING_DATASET], training=training)


def convert_titok(
    checkpoint: str | Path,
    output_dir: str | Path | None = None,
    extra_model_sizes: Mapping[str, tuple[int, int, int]] | None = None,
) -> tuple[ViTVQModel, ViTVQImageProcessor]:
    """Convert an official TiTok checkpoint; see the module docstring.

    Args:
        checkpoint: a folder with `config.json` and the weights, or the weights file itself (beside `config.json`).
        output_dir: where to write the `hf_vitvq` folder; nothing is written when `None`.
        extra_model_sizes: ViT sizes beyond TiTok's `small` / `base` / `large`, as `{name: (width, layers, heads)}`.

    Returns:
        The converted model (in eval mode) and its image processor.
    """
    titok_config, official, config_path = load_titok_checkpoint(checkpoint)
    config = config_from_titok(titok_config, extra_model_sizes)
    model = ViTVQModel(config)
    result = model.load_state_dict(convert_state_dict(official, model), strict=False)
    buffers = set(model.state_dict()) - {name for name, _ in model.named_parameters()}
    assert not result.unexpected_keys and set(result.missing_keys) == buffers
    model.eval()
    processor = ViTVQImageProcessor.for_config(config)
    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        name = config_path.parent.resolve().name
        card = titok_model_card(config, name, source=f"{name}/{config_path.name}", model_id=str(output_dir))
        card.save(output_dir / "README.md")
    return model, processor


def _model_size(text: str) -> tuple[str, tuple[int, int, int]]:
    """Parse `NAME=WIDTH,LAYERS,HEADS` (the `--extra_model_size` flag)."""
    name, _, sizes = text.partition("=")
    try:
        width, layers, heads = (int(value) for value in sizes.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WIDTH,LAYERS,HEADS (e.g. tiny=32,2,4), got {text!r}") from None
    return name, (width, layers, heads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="official checkpoint folder, or its weights file"
    )
    parser.add_argument("--output", required=True, type=Path, help="folder to write the hf_vitvq model to")
    parser.add_argument(
        "--extra_model_size",
        action="append",
        type=_model_size,
        default=[],
        metavar="NAME=WIDTH,LAYERS,HEADS",
        help="a ViT size beyond small/base/large named in the checkpoint's config (repeatable)",
    )
    args = parser.parse_args(argv)
    model, _ = convert_titok(args.checkpoint, args.output, extra_model_sizes=dict(args.extra_model_size))
    config = model.config
    print(
        f"Converted {args.checkpoint} -> {args.output}: {config.num_latent_tokens} tokens, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters."
    )


if __name__ == "__main__":
    main()
