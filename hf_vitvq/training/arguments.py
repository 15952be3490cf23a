"""Command-line and config-file arguments of `train.py`, as typed dataclasses parsed by `HfArgumentParser`.

Flag names follow the diffusers training scripts where they overlap (`--dataset_name`, `--max_train_steps`,
`--checkpointing_steps`, `--resume_from_checkpoint latest`, ...). `--config FILE` loads a YAML or JSON file of
these flags; flags given on the command line override the file.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from hf_vitvq import ViTVQConfig

from .data import first_image_file
from .losses import GAN_WEIGHT_MODES

logger = logging.getLogger(__name__)

# Quantizer options that `--codebook_recipe` applies to a `vq` model built from a preset, under `--model_overrides`.
# `ema_restart` is the recipe of benchmarks/collapse_ablation.py that keeps ~97% of the tiny preset's 1024 codes in
# use: Euclidean codes moved by an EMA of their latents, codes unused for 50 steps re-seeded from the batch, gradients
# through the rotation trick. `preset` keeps the preset's quantizer as it is: for S-128, B-64, L-32 and tiny, TiTok's
# l2-normalised, gradient-trained codebook, which collapses to ~3% of the tiny preset's codes in that ablation.
CODEBOOK_RECIPES: dict[str, dict[str, Any]] = {
    "ema_restart": {
        "use_l2_norm_codes": False,
        "use_ema_codebook": True,
        "dead_code_steps": 50,
        "use_rotation_trick": True,
    },
    "preset": {},
}
# The longest warm-up that `--lr_warmup_steps` defaults to.
DEFAULT_MAX_WARMUP_STEPS = 500


def default_warmup_steps(max_train_steps: int) -> int:
    """The warm-up when `--lr_warmup_steps` is not set: 10% of the run, at most 500 steps."""
    return min(DEFAULT_MAX_WARMUP_STEPS, max_train_steps // 10)


@dataclass
class ModelArguments:
    model_config: str = field(
        default="tiny", metadata={"help": "A ViTVQConfig preset name (S-128, B-64, L-32, seed, tiny) or a config JSON."}
    )
    model_overrides: str | None = field(
        default=None, metadata={"help": "JSON of config fields to override, e.g. '{\"codebook_size\": 512}'."}
    )
    codebook_recipe: str = field(
        default="ema_restart",
        metadata={
            "help": "Quantizer options for a vq model built from a preset (under --model_overrides, which win): "
            "ema_restart (Euclidean codes moved by an EMA, codes unused for 50 steps re-seeded, rotation trick: keeps "
            "the codebook in use when training from scratch) or preset (the preset's quantizer as it is: for S-128, "
            "B-64, L-32 and tiny TiTok's l2-normalised codebook, which collapses when the tiny preset trains from "
            "scratch). Not applied to a config JSON, to other quantizer types, or to SimVQ."
        },
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Anything `datasets.load_dataset` reads: a Hub name, 'imagefolder', 'parquet', 'webdataset'."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's config name."})
    train_data_dir: str | None = field(
        default=None, metadata={"help": "A local folder of images (read as a multi-shard stream, one shard per file)."}
    )
    data_files: str | None = field(default=None, metadata={"help": "Glob of data files (parquet, tar shards)."})
    image_column: str | None = field(
        default=None, metadata={"help": "Column holding the images; detected when the dataset has one Image feature."}
    )
    train_split: str = field(default="train")
    validation_split: str | None = field(
        default=None, metadata={"help": "Split used for validation; else `validation_images` held out of the stream."}
    )
    validation_images: int | None = field(
        default=None,
        metadata={
            "help": "Images used for validation. Default: 32, or 10%% of a --train_data_dir's files or of a map-style "
            "dataset's rows when that is fewer (at least 1)."
        },
    )
    streaming: bool = field(default=True, metadata={"help": "Stream the dataset instead of downloading it first."})
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "Examples in the shuffle buffer (0: no shuffle)."})
    resolution: int | None = field(default=None, metadata={"help": "Training crop size; defaults to the model's."})
    random_crop_scale_min: float = field(default=0.8, metadata={"help": "Smallest crop area of RandomResizedCrop."})
    random_crop_scale_max: float = field(default=1.0, metadata={"help": "Largest crop area of RandomResizedCrop."})
    random_flip: bool = field(default=True, metadata={"help": "Flip training images horizontally at random."})
    dataloader_num_workers: int = field(
        default=2,
        metadata={
            "help": "DataLoader worker processes per training process that read, decode, crop and normalise "
            "training images (0: the training process itself). A GPU needs enough to supply its step rate "
            "(benchmarks/data_throughput.py measures images/s per worker). At most the number of shards of each "
            "process's stream (a worker reads whole shards). The stream depends on it: resume with the same number."
        },
    )
    jpeg_draft: bool = field(
        default=True,
        metadata={
            "help": "Decode a JPEG at 1/2, 1/4 or 1/8 scale (DCT-domain downscaling) when the random crop's source "
            "region stays at least twice the crop size: the same crop geometry, about 2x faster for 256 px crops of "
            "1600x1200 photos (benchmarks/data_throughput.py)."
        },
    )
    max_consecutive_decode_failures: int = field(
        default=100,
        metadata={"help": "Stop with an error after this many training samples in a row fail to decode."},
    )


@dataclass
class TokenizerTrainingArguments:
    output_dir: str = field(default="outputs/vitvq")
    seed: int = field(default=0)
    train_batch_size: int = field(default=8, metadata={"help": "Images per device per step."})
    gradient_accumulation_steps: int = field(default=1)
    max_train_steps: int = field(default=1000)
    learning_rate: float = field(default=1e-4)
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.99)
    adam_weight_decay: float = field(default=1e-4, metadata={"help": "Applied to weight matrices only."})
    adam_epsilon: float = field(default=1e-8)
    max_grad_norm: float = field(default=1.0)
    lr_scheduler: str = field(default="cosine", metadata={"help": "Any `transformers.get_scheduler` name."})
    lr_warmup_steps: int | None = field(
        default=None,
        metadata={"help": "Steps of linear learning-rate warm-up. Default: 10%% of --max_train_steps, at most 500."},
    )
    reconstruction_l1_weight: float = field(default=0.0)
    reconstruction_l2_weight: float = field(default=1.0)
    quantizer_loss_weight: float = field(default=1.0)
    lpips_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the LPIPS (v0.1, VGG16) perceptual term (TiTok's single-stage recipe: 1.0). Without "
            "--lpips_trunk and with no cached or downloadable VGG16 weights the term is turned off with a warning."
        },
    )
    lpips_trunk: str | None = field(
        default=None,
        metadata={
            "help": "torchvision's VGG16 weights file (vgg16-397923af.pth) for LPIPS. Default: the torch hub cache "
            "($TORCH_HOME/hub/checkpoints/), downloaded there when online. A missing or wrong file is an error."
        },
    )
    convnext_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of TiTok's ConvNeXt-S perceptual term (single-stage recipe: 0.1; stage 2: 0.1)."},
    )
    convnext_model: str | None = field(
        default=None,
        metadata={
            "help": "The ConvNeXt classifier of --convnext_weight: torchvision's convnext_small state-dict file "
            "(convnext_small-0c510722.pth, TiTok's), or a Hub id or folder of a ConvNextForImageClassification "
            "(e.g. facebook/convnext-small-224, a different checkpoint: the loss values differ from TiTok's)."
        },
    )
    discriminator_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the adversarial term -mean D(x_hat) in the tokenizer's loss (TiTok single-stage: 0.1, "
            "stage 2: 0.01). 0 turns the discriminator off."
        },
    )
    discriminator_start_step: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps before the discriminator trains and the adversarial term counts (TiTok stage 2: "
            "20000); a value >= --max_train_steps leaves them off, with a warning."
        },
    )
    discriminator_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the discriminator's AdamW (same betas, weight decay, scheduler type and "
            "warm-up as the tokenizer's; its schedule spans the steps after --discriminator_start_step). "
            "Default: --learning_rate (TiTok: 1e-4 for both)."
        },
    )
    discriminator_hidden_channels: int = field(
        default=128,
        metadata={
            "help": "Width of the patch discriminator's first stage (TiTok: 128, about 1.9 M parameters; the cost "
            "grows with its square: small images train well with 32)."
        },
    )
    lecam_weight: float = field(
        default=0.001, metadata={"help": "Weight of the LeCAM regulariser in the discriminator's loss (TiTok's)."}
    )
    gan_weight_mode: str = field(
        default="fixed",
        metadata={
            "help": "fixed: the adversarial term weighs --discriminator_weight (TiTok); adaptive: "
            "--discriminator_weight times VQGAN's ratio of the gradient norms of the reconstruction and adversarial "
            "terms at the decoder's last layer (clamped to [0, 1e4])."
        },
    )
    finetune_decoder_from: str | None = field(
        default=None,
        metadata={
            "help": "A trained model folder or Hub id: train only its decoder (TiTok's stage 2), with the encoder and "
            "quantizer frozen (no gradients, no codebook updates, eval mode). The model's config comes from there: "
            "--model_config, --codebook_recipe and --model_overrides do not apply."
        },
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16."})
    use_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the weights; `final/` then holds it."})
    ema_decay: float = field(default=0.999)
    gradient_checkpointing: bool = field(default=False)
    checkpointing_steps: int = field(default=500)
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint path."})
    validation_steps: int = field(default=500)
    logging_steps: int = field(default=10)
    codebook_usage_warning: float = field(
        default=0.1,
        metadata={
            "help": "Warn when the fraction of codes used over the model's usage_window of training steps falls below "
            "this (checked every --logging_steps; 0 turns it off)."
        },
    )
    report_to: str = field(default="auto", metadata={"help": "auto (tensorboard when installed), none, all, ..."})
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)
    hub_token: str | None = field(default=None)
    hub_push_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Also push each checkpoint, in the background, to checkpoints/ in the repo; with "
            "--checkpoints_total_limit the repo's checkpoints/ follows output_dir's (and uploads superseded while "
            "queued are skipped), without it nothing is deleted from the repo."
        },
    )

    def __post_init__(self) -> None:
        if self.lr_warmup_steps is None:
            self.lr_warmup_steps = default_warmup_steps(self.max_train_steps)


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TokenizerTrainingArguments)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Flags from a `.yaml`/`.yml` or `.json` file, as a flat dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(path.read_text()) or {}
    elif path.suffix == ".json":
        values = json.loads(path.read_text())
    else:
        raise ValueError(f"--config {path}: expected a .yaml, .yml or .json file")
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag names to values, got {type(values).__name__}")
    return values


def parse_config_and_flags(argument_classes: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """One instance of each of `argument_classes` (dataclasses of flags) from `--config FILE` (optional: a YAML or JSON
    file of these flags) and the command-line flags `argv` (default: `sys.argv[1:]`), the command line winning. Raises
    a `ValueError` naming unknown flags, in the file or on the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(argument_classes)
    parser.add_argument("--config", default=None, help="YAML or JSON file of these flags.")
    config_path = parser.parse_known_args(argv)[0].config
    if config_path is not None:
        file_values = read_config_file(config_path)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ValueError(f"--config {config_path}: unknown flags {unknown}")
        if isinstance(file_values.get("model_overrides"), dict):  # YAML users write a mapping
            file_values["model_overrides"] = json.dumps(file_values["model_overrides"])
        parser.set_defaults(**file_values)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise ValueError(f"Unknown arguments: {remaining}")
    return tuple(parsed[: len(argument_classes)])  # the last one is the namespace of --config


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TokenizerTrainingArguments]:
    """Parse `--config FILE` (optional) and command-line flags of `train.py`, the command line winning, then check
    them."""
    model_args, data_args, training_args = parse_config_and_flags(ARGUMENT_CLASSES, argv)
    check_args(model_args, data_args, training_args)
    return model_args, data_args, training_args


def check_args(model_args: ModelArguments, data_args: DataArguments, training_args: TokenizerTrainingArguments) -> None:
    """Raise a ValueError saying what to pass, before anything expensive starts."""
    if data_args.dataset_name and data_args.train_data_dir:
        raise ValueError("Pass either --dataset_name or --train_data_dir, not both.")
    if data_args.train_data_dir is not None:
        folder = Path(data_args.train_data_dir)
        if not folder.is_dir():
            raise ValueError(f"--train_data_dir {folder}: no such folder.")
        if first_image_file(folder) is None:
            raise ValueError(f"--train_data_dir {folder}: the folder holds no image files.")
    if not training_args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be > 0, got {training_args.learning_rate}.")
    if model_args.codebook_recipe not in CODEBOOK_RECIPES:
        recipe = model_args.codebook_recipe
        raise ValueError(f"--codebook_recipe must be one of {list(CODEBOOK_RECIPES)}, got {recipe!r}.")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME.")
    if training_args.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {training_args.mixed_precision!r}.")
    if data_args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {data_args.dataloader_num_workers}.")
    if not 0 < data_args.random_crop_scale_min <= data_args.random_crop_scale_max <= 1:
        raise ValueError("Need 0 < --random_crop_scale_min <= --random_crop_scale_max <= 1.")
    for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                 "validation_steps", "logging_steps"):  # fmt: skip
        if getattr(training_args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(training_args, name)}.")
    for name, value in (("validation_images", data_args.validation_images),
                        ("max_consecutive_decode_failures", data_args.max_consecutive_decode_failures)):  # fmt: skip
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}.")
    if training_args.lr_warmup_steps < 0:
        raise ValueError(f"--lr_warmup_steps must be >= 0, got {training_args.lr_warmup_steps}.")
    if training_args.lr_warmup_steps >= training_args.max_train_steps:
        logger.warning(
            f"--lr_warmup_steps {training_args.lr_warmup_steps} >= --max_train_steps {training_args.max_train_steps}: "
            f"the learning rate never reaches --learning_rate {training_args.learning_rate} (leave --lr_warmup_steps "
            "unset for a warm-up of 10% of the run)."
        )
    if not 0 <= training_args.codebook_usage_warning <= 1:
        raise ValueError(f"--codebook_usage_warning must be in [0, 1], got {training_args.codebook_usage_warning}.")
    if training_args.checkpoints_total_limit is not None and training_args.checkpoints_total_limit < 1:
        raise ValueError("--checkpoints_total_limit must be >= 1 (or left unset to keep every checkpoint).")
    if not 0 < training_args.ema_decay < 1:
        raise ValueError(f"--ema_decay must be in (0, 1), got {training_args.ema_decay}.")
    check_loss_args(model_args, training_args)
    if model_args.model_overrides is not None:
        try:
            overrides = json.loads(model_args.model_overrides)
        except json.JSONDecodeError as error:
            raise ValueError(f"--model_overrides must be a JSON object: {error}") from error
        if not isinstance(overrides, dict):
            raise ValueError("--model_overrides must be a JSON object of config fields.")
        try:
            ViTVQConfig.check_field_names(overrides)
        except ValueError as error:
            raise ValueError(f"--model_overrides: {error}") from error


def check_loss_args(model_args: ModelArguments, training_args: TokenizerTrainingArguments) -> None:
    """Raise a ValueError for bad perceptual, adversarial and decoder fine-tuning flags; warn about a discriminator
    that would never train."""
    args = training_args
    for name in ("lpips_weight", "convnext_weight", "discriminator_weight", "lecam_weight",
                 "discriminator_start_step"):  # fmt: skip
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}.")
    if args.gan_weight_mode not in GAN_WEIGHT_MODES:
        raise ValueError(
            f"--gan_weight_mode must be one of {', '.join(GAN_WEIGHT_MODES)}, got {args.gan_weight_mode!r}."
        )
    if args.discriminator_learning_rate is not None and not args.discriminator_learning_rate > 0:
        raise ValueError(f"--discriminator_learning_rate must be > 0, got {args.discriminator_learning_rate}.")
    if args.discriminator_hidden_channels < 1:
        raise ValueError(f"--discriminator_hidden_channels must be >= 1, got {args.discriminator_hidden_channels}.")
    if args.convnext_weight > 0 and args.convnext_model is None:
        raise ValueError(
            "--convnext_weight needs --convnext_model: torchvision's convnext_small-0c510722.pth (TiTok's weights), "
            "or a Hub id or folder of a ConvNextForImageClassification such as facebook/convnext-small-224."
        )
    if args.discriminator_weight > 0 and args.discriminator_start_step >= args.max_train_steps:
        logger.warning(
            f"--discriminator_start_step {args.discriminator_start_step} >= --max_train_steps {args.max_train_steps}: "
            "the discriminator never trains and the adversarial term never counts in this run."
        )
    if args.finetune_decoder_from is not None and model_args.model_overrides is not None:
        raise ValueError(
            "--finetune_decoder_from takes the model's config from the trained model: leave out --model_overrides."
        )
