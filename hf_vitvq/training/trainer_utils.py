"""Pieces of the training loops (`training/train.py`, `training/train_prior.py`) that do not need the loop itself: the
Accelerator and the optimization state both scripts set up, the weight EMA, progress counters saved in checkpoints,
tracker helpers; and for the tokenizer the model config a run builds, the perceptual networks and the discriminator
a run uses, and the freezing of decoder fine-tuning."""

from __future__ import annotations

import gc
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from huggingface_hub import constants
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_scheduler

from hf_vitvq import ViTVQConfig, ViTVQModel
from hf_vitvq.configuration_vitvq import looks_like_local_path

from . import checkpointing
from .arguments import CODEBOOK_RECIPES, ModelArguments, TokenizerTrainingArguments
from .discriminator import PatchDiscriminator
from .hub import CheckpointPusher, push_folder
from .losses import LossWeights
from .perceptual import (
    LPIPS,
    ConvNextPerceptualLoss,
    PerceptualWeightsError,
    find_lpips_heads,
    lpips_trunk_available,
    vgg16_cache_path,
)

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good state was saved as a checkpoint."""


@dataclass
class TrainingProgress:
    """Counters saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    global_step: int = 0
    images_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step, "images_seen": self.images_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step, self.images_seen = state["global_step"], state["images_seen"]


class OptimizationArguments(Protocol):
    """The flags that `training_accelerator` and `prepare_optimization` read (both scripts' training arguments)."""

    output_dir: str
    seed: int
    mixed_precision: str
    gradient_accumulation_steps: int
    report_to: str
    learning_rate: float
    adam_beta1: float
    adam_beta2: float
    adam_weight_decay: float
    adam_epsilon: float
    lr_scheduler: str
    lr_warmup_steps: int
    max_train_steps: int
    use_ema: bool
    ema_decay: float


def training_accelerator(args: OptimizationArguments) -> Accelerator:
    """The run's `Accelerator` (mixed precision, gradient accumulation, trackers logging under `OUTPUT_DIR/logs`),
    with every random generator seeded from `args.seed`."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=resolve_report_to(args.report_to),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    set_seed(args.seed)
    return accelerator


@dataclass
class Optimization:
    """What `prepare_optimization` returns: the prepared model and optimizer, the scheduler, the weight EMA and the
    step counters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    progress: TrainingProgress


def scheduled_adamw(
    model: nn.Module, args: OptimizationArguments, learning_rate: float, num_training_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over `parameter_groups(model)` at peak `learning_rate`, with the arguments' betas, epsilon and weight
    decay, and `get_scheduler`'s schedule of the arguments' type and warm-up over `num_training_steps`."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.adam_weight_decay),
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=num_training_steps
    )
    return optimizer, lr_scheduler


def prepare_optimization(accelerator: Accelerator, model: nn.Module, args: OptimizationArguments) -> Optimization:
    """`scheduled_adamw` over the run's steps at `--learning_rate`, model and optimizer prepared by
    `accelerator`, with `--use_ema` an EMA of the weights, and new step counters. The scheduler is not prepared: it
    is stepped once per optimizer step on every process, whatever their number. The EMA, the scheduler and the
    counters are registered for checkpointing, in that order (the order checkpoints hold them in: a trainer
    registers its own objects after them)."""
    optimizer, lr_scheduler = scheduled_adamw(model, args, args.learning_rate, args.max_train_steps)
    prepared_model, prepared_optimizer = accelerator.prepare(model, optimizer)
    ema = None
    if args.use_ema:
        ema = AveragedModel(model, multi_avg_fn=ema_of_floats(args.ema_decay), use_buffers=True)
        accelerator.register_for_checkpointing(ema)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(lr_scheduler, progress)
    return Optimization(prepared_model, prepared_optimizer, lr_scheduler, ema, progress)


class TrainingRun:
    """What the training scripts' trainers (`Trainer` in train.py, `PriorTrainer` in train_prior.py) share: the
    subclass's `__init__` sets the attributes below (see `training_accelerator`, `prepare_optimization`,
    `CheckpointPusher.for_run`); these methods write and resume checkpoints, end an optimizer step, choose the weights
    to export and push them. A trainer with state of its own per process extends the checkpoint hooks
    (`write_process_files`, `check_checkpoint`, `load_accelerator_state`, `restore_process_files`)."""

    accelerator: Accelerator
    args: Any  # the script's training arguments: `push_to_hub`, `hub_model_id`, `hub_token`, ...
    output_dir: Path
    model: nn.Module  # prepared by the accelerator
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    progress: TrainingProgress
    checkpoint_pusher: CheckpointPusher | None

    # ------------------------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write `checkpoint-STEP` (see `checkpointing.save_checkpoint`), with each process's `write_process_files`."""
        return checkpointing.save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.progress.global_step,
            keep=self.args.checkpoints_total_limit,
            uploads=self.checkpoint_pusher,
            write_process_files=self.write_process_files,
        )

    def write_process_files(self, folder: Path) -> None:
        """Write this process's own files into checkpoint `folder` (none by default)."""

    def resume(self) -> None:
        """Load `--resume_from_checkpoint` (a path, or `latest` in `output_dir`: see
        `checkpointing.choose_resume_checkpoint`), and drop the entries of `train_log.jsonl` after its step. A load
        that fails raises `CheckpointError` naming the checkpoint."""
        requested = self.args.resume_from_checkpoint
        if requested is None:
            return
        path = checkpointing.resolve_resume_checkpoint(self.accelerator, self.output_dir, requested)
        if path is None:
            logger.info(f"No checkpoint in {self.output_dir}: starting from scratch.")
            return
        self.check_checkpoint(path)
        try:
            self.load_accelerator_state(path)
        except Exception as error:  # e.g. a truncated file in a checkpoint without a manifest
            raise checkpointing.CheckpointError(f"Could not load checkpoint {path}: {error}") from error
        self.restore_process_files(path)
        step, log_path = self.progress.global_step, self.output_dir / "train_log.jsonl"
        if self.accelerator.is_main_process and (dropped := checkpointing.drop_log_entries_after(log_path, step)):
            logger.info(f"Dropped {dropped} lines of later steps from {log_path}")
        self.accelerator.wait_for_everyone()
        logger.info(f"Resumed from {path} at step {step}")

    def check_checkpoint(self, path: Path) -> None:
        """Raise if checkpoint `path` cannot be resumed by this run, before anything is loaded (nothing to check by
        default)."""

    def load_accelerator_state(self, path: Path) -> None:
        """`accelerator.load_state(path)`: the model, optimizer and registered objects."""
        self.accelerator.load_state(str(path))

    def restore_process_files(self, path: Path) -> None:
        """Restore what `write_process_files` wrote into checkpoint `path`, once its state is loaded (nothing by
        default)."""

    # ------------------------------------------------------------------------------------------ steps and export

    def evaluation_model(self) -> nn.Module:
        """The weights to evaluate and export: the EMA when enabled, else the raw model."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)

    def end_optimizer_step(self, batch_size: int) -> None:
        """After an optimizer step: step the scheduler and the EMA, count the step and the images all processes read
        for it (`batch_size` per process and micro-batch)."""
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.accelerator.unwrap_model(self.model))
        self.progress.global_step += 1
        self.progress.images_seen += batch_size * self.accelerator.num_processes * self.args.gradient_accumulation_steps

    def export_folders(self) -> dict[Path, nn.Module]:
        """Where `export` saves which weights: `final/` the `evaluation_model`, and with an EMA `final_raw/` the raw
        weights."""
        folders = {self.output_dir / "final": self.evaluation_model()}
        if self.ema is not None:
            folders[self.output_dir / "final_raw"] = self.accelerator.unwrap_model(self.model)
        return folders

    def push_final(self, final: Path) -> None:
        """With `--push_to_hub`, upload `final` to `--hub_model_id`, after the checkpoint uploads still under way."""
        if not self.args.push_to_hub:
            return
        self.finish_pushes()  # the final model's commit comes after the checkpoints'
        url = push_folder(final, self.args.hub_model_id, None, self.args.hub_token)
        logger.info(f"Pushed {final} to {url}")

    def finish_pushes(self) -> None:
        """Finish the checkpoint uploads still under way (main process; see `CheckpointPusher.finish`). Later calls
        do nothing."""
        pusher, self.checkpoint_pusher = self.checkpoint_pusher, None
        if pusher is not None:
            pusher.finish()


def end_training(accelerator: Accelerator) -> None:
    """Release the run's memory and end its trackers and process group (explicitly: it avoids gloo's sporadic abort
    at interpreter exit)."""
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def tracker_config(args: TokenizerTrainingArguments) -> dict[str, Any]:
    """The training arguments the trackers record (TensorBoard's hparams, W&B's config): every one that is set, but
    not the Hub token."""
    return {name: value for name, value in vars(args).items() if value is not None and name != "hub_token"}


def ema_of_floats(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """`AveragedModel`'s `multi_avg_fn` for a weight EMA with decay `decay`: floating-point tensors are averaged;
    integer and bool buffers (the codebook's step counters, flags) follow the model, as averaging would truncate them
    (torch's EMA function leaves a counter stuck at its first value)."""
    average = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point():  # the tensors come grouped by dtype
            average(averaged, current, num_averaged)
            return
        for averaged_tensor, current_tensor in zip(averaged, current, strict=True):
            averaged_tensor.copy_(current_tensor)

    return update


def codebook_recipe(name: str, config: ViTVQConfig) -> dict[str, Any]:
    """The quantizer options that `--codebook_recipe name` sets on `config`: `CODEBOOK_RECIPES[name]` for a `vq`
    quantizer, none for other quantizer types and SimVQ (whose codes exclude EMA updates and restarts)."""
    if config.quantizer_type != "vq" or config.use_simvq:
        return {}
    return CODEBOOK_RECIPES[name]


def build_config(model_args: ModelArguments, resolution: int | None) -> ViTVQConfig:
    """The model config from a preset name (with `--codebook_recipe`'s quantizer options) or a config JSON, with
    `--model_overrides` (which win over the recipe) and `--resolution` applied."""
    overrides = json.loads(model_args.model_overrides) if model_args.model_overrides else {}
    if resolution is not None:
        overrides["image_size"] = resolution
    if model_args.model_config in ViTVQConfig.presets():
        config = ViTVQConfig.from_preset(model_args.model_config, **overrides)
        if recipe := codebook_recipe(model_args.codebook_recipe, config):
            config = ViTVQConfig.from_preset(model_args.model_config, **{**recipe, **overrides})
        return config
    path = Path(model_args.model_config)
    if not path.exists():
        raise ValueError(
            f"--model_config {model_args.model_config!r} is neither a preset ({ViTVQConfig.presets()}) nor a file."
        )
    # from_base, not from_pretrained(path, **overrides): that would drop misspelt keys silently and skip the checks
    return ViTVQConfig.from_base(ViTVQConfig.get_config_dict(path)[0], **overrides)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on linear and conv weights only; none on biases, norms, tokens, positions and
    the codebook."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]


def write_code_histogram(writer: Any, frequency: torch.Tensor, step: int) -> None:
    """Log a (..., codebook_size) code-frequency histogram (summed over RVQ levels) to a tensorboard writer, one
    bucket per code."""
    counts = frequency.reshape(-1, frequency.shape[-1]).sum(dim=0).double().cpu()
    codes = torch.arange(counts.numel(), dtype=torch.float64)
    writer.add_histogram_raw(
        "train/code_frequency",
        min=0.0,
        max=float(counts.numel() - 1),
        num=float(counts.sum()),
        sum=float((codes * counts).sum()),
        sum_squares=float((codes**2 * counts).sum()),
        bucket_limits=(codes + 0.5).tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


def resolve_report_to(report_to: str) -> str | None:
    """`auto` means tensorboard when it is installed, otherwise no tracker."""
    if report_to == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    return None if report_to == "none" else report_to


class LPIPSUnavailableError(RuntimeError):
    """LPIPS was asked for without `--lpips_trunk`, and torchvision's VGG16 weights are neither cached nor
    downloadable: training goes on without the term (after one warning)."""


def load_lpips(lpips_trunk: str | None) -> LPIPS:
    """LPIPS with torchvision's VGG16 trunk from `lpips_trunk`, else from the torch hub cache, else downloaded (not
    tried under `HF_HUB_OFFLINE=1`). A named file that is missing or wrong, a damaged cached file, or missing LPIPS
    heads raise `PerceptualWeightsError`; no file named, none cached and no download raise `LPIPSUnavailableError`.
    The global random state is left as it was (the trunk is initialised before its weights load)."""
    find_lpips_heads()  # the heads ship with torchmetrics: without them, an error rather than a silent fallback
    with torch.random.fork_rng(devices=[]):
        if lpips_trunk_available(lpips_trunk):
            return LPIPS(lpips_trunk)
        if constants.HF_HUB_OFFLINE:
            raise LPIPSUnavailableError(
                f"no VGG16 weights in {vgg16_cache_path()} and HF_HUB_OFFLINE is set, so no download was tried"
            )
        try:
            return LPIPS()
        except PerceptualWeightsError as error:
            raise LPIPSUnavailableError(str(error)) from error


def load_convnext(model_id_or_path: str) -> ConvNextPerceptualLoss:
    """The ConvNeXt perceptual term from a torchvision state-dict file, a folder or a Hub id; a file or checkpoint
    that cannot be loaded raises `PerceptualWeightsError` naming it. The global random state is left as it was."""
    if looks_like_local_path(model_id_or_path) and not Path(model_id_or_path).exists():
        raise PerceptualWeightsError(
            f"--convnext_model {model_id_or_path}: no such file or folder. Expected torchvision's convnext_small "
            "state-dict file, or a folder or Hub id of a ConvNextForImageClassification."
        )
    with torch.random.fork_rng(devices=[]):
        try:
            return ConvNextPerceptualLoss.from_pretrained(model_id_or_path)
        except OSError as error:  # transformers: not a folder, not on the Hub, or offline and not cached
            raise PerceptualWeightsError(
                f"Could not load the ConvNeXt classifier {model_id_or_path!r} (--convnext_model): {error}"
            ) from error


def build_discriminator(num_channels: int, image_size: int, hidden_channels: int, seed: int) -> PatchDiscriminator:
    """TiTok's patch discriminator (3 stages) for `image_size` images: logits on a grid of
    min(16, image_size / 8) cells (TiTok's 16x16 at 256 px; not more cells than the last stage has), GroupNorm with
    gcd(32, hidden_channels) groups (TiTok's 32 at width 128). Initialised from `seed` without touching the global
    random state, so that turning the discriminator on changes nothing else in a run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PatchDiscriminator(
            num_channels=num_channels,
            hidden_channels=hidden_channels,
            num_groups=math.gcd(32, hidden_channels),
            pooled_size=max(1, min(16, image_size // 8)),
        )


def loss_weights(args: TokenizerTrainingArguments) -> LossWeights:
    """The tokenizer loss weights the training arguments set."""
    return LossWeights(
        reconstruction_l1=args.reconstruction_l1_weight,
        reconstruction_l2=args.reconstruction_l2_weight,
        quantizer=args.quantizer_loss_weight,
        lpips=args.lpips_weight,
        convnext=args.convnext_weight,
        adversarial=args.discriminator_weight,
    )


def frozen_for_decoder_finetuning(model: ViTVQModel) -> tuple[nn.Module, nn.Module]:
    """The modules that decoder fine-tuning freezes: the encoder and the quantizer."""
    return model.encoder, model.quantize


def freeze_encoder_and_quantizer(model: ViTVQModel) -> None:
    """Decoder fine-tuning (TiTok's stage 2): no gradients for the encoder and quantizer, and eval mode, in which the
    quantizer changes no state (codebook EMA, dead-code restarts, usage counts) and no dropout runs. Call before
    building the optimizer and wrapping the model for DDP; `set_train_mode` keeps them in eval mode."""
    for module in frozen_for_decoder_finetuning(model):
        module.requires_grad_(False)
        module.eval()


def set_train_mode(model: ViTVQModel, decoder_only: bool) -> None:
    """Train mode for the whole model, or, when fine-tuning the decoder, for all but the frozen encoder and
    quantizer."""
    model.train()
    if decoder_only:
        for module in frozen_for_decoder_finetuning(model):
            module.eval()
