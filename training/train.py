"""Train a ViT-VQ (TiTok-style) image tokenizer with Accelerate: one CPU, one GPU, or many.

    accelerate launch training/train.py --config training/configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 8 training/train.py --config training/configs/L-32.yaml \\
        --dataset_name ILSVRC/imagenet-1k --output_dir outputs/l32

Resumes exactly after a crash with `--resume_from_checkpoint latest` (model, optimizer, scheduler, scaler, EMA,
random states and the position in the shuffled data stream), from the newest checkpoint whose files match their
checksums. The result, `OUTPUT_DIR/final`, loads with `AutoModel.from_pretrained`. Every flag: `--help`, or
`hf_vitvq/training/arguments.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm
from transformers import AutoModel

from hf_vitvq import ViTVQImageProcessor, ViTVQModel
from hf_vitvq.training import checkpointing
from hf_vitvq.training.arguments import DataArguments, ModelArguments, TokenizerTrainingArguments, parse_args
from hf_vitvq.training.data import TrainingImageStream, load_streams
from hf_vitvq.training.evaluation import (
    evaluate_reconstruction,
    prefix_lengths,
    save_reconstruction_grid,
    spread_images,
)
from hf_vitvq.training.hub import CheckpointPusher
from hf_vitvq.training.image_shards import cpu_threads, validation_batches
from hf_vitvq.training.losses import DiscriminatorLoss, TokenizerLoss, decoder_last_layer
from hf_vitvq.training.model_card import describe_loss, write_model_card
from hf_vitvq.training.trainer_utils import (
    LPIPSUnavailableError,
    NonFiniteLossError,
    TrainingRun,
    build_config,
    build_discriminator,
    end_training,
    freeze_encoder_and_quantizer,
    load_convnext,
    load_lpips,
    loss_weights,
    prepare_optimization,
    scheduled_adamw,
    set_train_mode,
    tracker_config,
    training_accelerator,
    write_code_histogram,
)

logger = get_logger(__name__)

# The discriminator's weights in a checkpoint: Accelerate names the second prepared model's file model_1.*.
DISCRIMINATOR_FILES = ("model_1.safetensors", "model_1.bin")


class Trainer(TrainingRun):
    """The training loop and its checkpoints; `run()` trains to `max_train_steps`."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: TokenizerTrainingArguments) -> None:
        self.args = args
        self.data_args = data_args
        self.output_dir = Path(args.output_dir)
        self.accelerator = training_accelerator(args)
        # Weight files before the data: a missing or wrong one stops the run before any work.
        lpips, convnext = self.load_perceptual_networks()
        pretrained = None if args.finetune_decoder_from is None else self.load_model_to_finetune()
        self.config = build_config(model_args, data_args.resolution) if pretrained is None else pretrained.config
        self.resolution = self.config.image_size
        self.processor = ViTVQImageProcessor.for_config(self.config)

        # Data before the model: a dataset without a usable image column fails here, before any work.
        data = load_streams(data_args, self.resolution, world_size=self.accelerator.num_processes)
        self.stream = TrainingImageStream(
            data.train,
            data.image_column,
            self.config.pixel_value_range,
            self.resolution,
            seed=args.seed,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            shuffle_buffer_size=data_args.shuffle_buffer_size,
            crop_scale=(data_args.random_crop_scale_min, data_args.random_crop_scale_max),
            flip=data_args.random_flip,
            max_consecutive_failures=data_args.max_consecutive_decode_failures,
            num_workers=data_args.dataloader_num_workers,
            draft=data_args.jpeg_draft,
            interleaved_shards=data.interleaved_shards,
        )
        self.validation, self.sheet_images = [], None  # the validation images and those its sheets show
        if self.accelerator.is_main_process:
            self.validation = validation_batches(
                data.validation, data.image_column, self.processor, data.validation_images, args.train_batch_size
            )
            self.sheet_images = spread_images(self.validation)

        model = ViTVQModel(self.config) if pretrained is None else pretrained
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimization = prepare_optimization(self.accelerator, model, args)
        self.model, self.optimizer = optimization.model, optimization.optimizer
        self.lr_scheduler, self.ema = optimization.lr_scheduler, optimization.ema
        self.progress = optimization.progress
        self.loss_fn = TokenizerLoss(
            loss_weights(args), self.config.pixel_value_range, lpips, convnext, gan_weight_mode=args.gan_weight_mode
        )
        self.discriminator = self.discriminator_optimizer = self.discriminator_scheduler = None
        self.discriminator_loss_fn = None
        if args.discriminator_weight > 0:
            self.setup_discriminator()
        self.stream_state_at_step = self.stream.state_dict()
        self.forward_state_at_step = self.forward_state()
        self.first_step = 0  # where this run started (after resuming)
        self.usage_is_low = False  # whether the last check found the codebook usage under --codebook_usage_warning
        self.checkpoint_pusher = CheckpointPusher.for_run(args, self.accelerator.is_main_process)

    def load_perceptual_networks(self) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
        """(LPIPS, the ConvNeXt term) as the loss weights ask, on this process's device; frozen, so not prepared.
        The main process loads first (it may download LPIPS' trunk into the cache the others then read). A named
        file or model that cannot be loaded is an error; without --lpips_trunk and with no VGG16 weights to be had,
        LPIPS is turned off with one warning, and --lpips_weight set to 0 so that the trackers and the model card
        record what was trained."""
        args, accelerator = self.args, self.accelerator
        lpips = convnext = None
        with accelerator.main_process_first():
            if args.lpips_weight > 0:
                try:
                    lpips = load_lpips(args.lpips_trunk).to(accelerator.device)
                except LPIPSUnavailableError as error:
                    logger.warning(
                        f"The LPIPS term is off (--lpips_weight {args.lpips_weight} -> 0): {error}. Pass --lpips_trunk "
                        "with the path of torchvision's vgg16-397923af.pth to use it."
                    )
                    args.lpips_weight = 0.0
            if args.convnext_weight > 0:
                convnext = load_convnext(args.convnext_model).to(accelerator.device)
        return lpips, convnext

    def load_model_to_finetune(self) -> ViTVQModel:
        """The model of --finetune_decoder_from, with its encoder and quantizer frozen (before the optimizer and the
        DDP wrapper see it)."""
        source = self.args.finetune_decoder_from
        model = ViTVQModel.from_pretrained(source)
        resolution = self.data_args.resolution
        if resolution is not None and resolution != model.config.image_size:
            raise ValueError(
                f"--resolution {resolution} differs from the image size of --finetune_decoder_from {source} "
                f"({model.config.image_size}): leave --resolution out."
            )
        freeze_encoder_and_quantizer(model)
        return model

    def setup_discriminator(self) -> None:
        """The patch discriminator, with its own AdamW (the tokenizer's betas, epsilon and weight decay, as in TiTok)
        and scheduler (the same type and warm-up, over the steps from --discriminator_start_step), prepared by
        Accelerate (DDP, autocast); its weights, optimizer, scheduler and the LeCAM averages are in every
        checkpoint."""
        args, accelerator = self.args, self.accelerator
        discriminator = build_discriminator(
            self.config.num_channels, self.resolution, args.discriminator_hidden_channels, seed=args.seed
        )
        optimizer, self.discriminator_scheduler = scheduled_adamw(
            discriminator,
            args,
            args.discriminator_learning_rate or args.learning_rate,
            num_training_steps=max(1, args.max_train_steps - args.discriminator_start_step),
        )
        self.discriminator, self.discriminator_optimizer = accelerator.prepare(discriminator, optimizer)
        self.discriminator_loss_fn = DiscriminatorLoss(
            args.lecam_weight, pixel_value_range=self.config.pixel_value_range
        )
        self.discriminator_loss_fn.to(accelerator.device)
        accelerator.register_for_checkpointing(self.discriminator_scheduler, self.discriminator_loss_fn)

    def forward_state_modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose state a training forward changes: the quantizer (codebook, EMA and usage statistics)
        and, with the discriminator, the LeCAM averages."""
        modules = {"quantizer": self.accelerator.unwrap_model(self.model).quantize}
        if self.discriminator_loss_fn is not None:
            modules["lecam"] = self.discriminator_loss_fn
        return modules

    def forward_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """A copy of the state of `forward_state_modules`: kept at each optimizer step so that a step whose loss is
        not finite can be undone before the state is saved."""
        return {
            name: {key: tensor.clone() for key, tensor in module.state_dict().items()}
            for name, module in self.forward_state_modules().items()
        }

    # ------------------------------------------------------------------------------------------ checkpoints

    def stream_state_file(self, folder: Path) -> Path:
        """This process's data-stream position in checkpoint `folder`."""
        return folder / f"data_state_rank{self.accelerator.process_index}.json"

    def write_process_files(self, folder: Path) -> None:
        """This process's data-stream position at the checkpoint's step, and the number of processes."""
        state = {**self.stream_state_at_step, "world_size": self.accelerator.num_processes}
        self.stream_state_file(folder).write_text(json.dumps(state))

    def written_stream_state(self, path: Path) -> dict[str, Any]:
        """The data-stream position that checkpoint `path` holds for this process (without its `world_size`), after
        checking that the checkpoint was written by as many processes as this run has."""
        stream_file = self.stream_state_file(path)
        stream_state = json.loads(stream_file.read_text()) if stream_file.is_file() else {}
        num_processes = self.accelerator.num_processes
        written_by = stream_state.pop("world_size", num_processes if stream_state else None)
        if written_by != num_processes:
            raise ValueError(
                f"{path} was written by {written_by or 'fewer'} process(es), this run has {num_processes}: each "
                "process resumes its own part of the data stream, so resume with the number that wrote it."
            )
        return stream_state

    def check_checkpoint(self, path: Path) -> None:
        """Refuse a checkpoint written by another number of processes (`written_stream_state`)."""
        self.written_stream_state(path)

    def restore_process_files(self, path: Path) -> None:
        """Put the data stream where the checkpoint's step left it."""
        self.stream.load_state_dict(self.written_stream_state(path))
        self.stream_state_at_step = self.stream.state_dict()
        self.forward_state_at_step = self.forward_state()

    def load_accelerator_state(self, path: Path) -> None:
        """`accelerator.load_state(path)`; a checkpoint written without the discriminator (pixel-only training, or an
        older version) also loads into a run with one, whose discriminator, optimizer, scheduler and LeCAM averages
        then start fresh, with a warning."""
        has_discriminator = any((path / name).is_file() for name in DISCRIMINATOR_FILES)
        if has_discriminator and self.discriminator is None:
            raise checkpointing.CheckpointError(
                f"{path} holds a discriminator (it was written with --discriminator_weight > 0): resume with "
                "--discriminator_weight > 0, or train on from its weights with --finetune_decoder_from or a new run."
            )
        if has_discriminator or self.discriminator is None:
            self.accelerator.load_state(str(path))
            return
        logger.warning(f"{path} holds no discriminator state: the discriminator starts from scratch.")
        with self.checkpointing_without_discriminator():
            self.accelerator.load_state(str(path))

    @contextlib.contextmanager
    def checkpointing_without_discriminator(self) -> Iterator[None]:
        """Accelerate's lists of checkpointed objects without the discriminator, its optimizer, scheduler and LeCAM
        averages (registered last) while the block runs, so that `load_state` reads a checkpoint written without
        them. Accelerate has no public way to leave registered objects out."""
        accelerator = self.accelerator
        own = (
            self.discriminator,
            self.discriminator_optimizer,
            self.discriminator_scheduler,
            self.discriminator_loss_fn,
        )
        registered = (accelerator._models, accelerator._optimizers, accelerator._custom_objects)
        saved = [list(objects) for objects in registered]
        for objects in registered:
            objects[:] = [obj for obj in objects if not any(obj is mine for mine in own)]
        try:
            yield
        finally:
            for objects, before in zip(registered, saved, strict=True):
                objects[:] = before

    # ------------------------------------------------------------------------------------------ steps

    def stop_unless_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Return when every loss in `losses` (name -> scalar) is finite on every process; otherwise save the last
        good state and raise `NonFiniteLossError` naming the loss. The forwards already fed this batch to the
        codebook statistics and the LeCAM averages: that is undone before saving."""
        values = torch.stack([loss.detach().float() for loss in losses.values()])
        bad = self.accelerator.reduce((~torch.isfinite(values)).float(), reduction="sum")
        if not bad.any():
            return
        step = self.progress.global_step
        for name, module in self.forward_state_modules().items():
            module.load_state_dict(self.forward_state_at_step[name])
        self.save_checkpoint()
        name, value = next((name, values[i].item()) for i, name in enumerate(losses) if bad[i])
        raise NonFiniteLossError(
            f"The {name} became {value} at step {step + 1}; the last good state (step {step}) is saved in "
            f"{self.output_dir / f'checkpoint-{step}'}. Lower --learning_rate (--discriminator_learning_rate for the "
            "discriminator), or check the data."
        )

    def discriminator_trains(self) -> bool:
        """Whether this optimizer step trains the discriminator and counts the adversarial term."""
        return self.discriminator is not None and self.progress.global_step >= self.args.discriminator_start_step

    def train_step(self, pixel_values: torch.Tensor, stream_position: dict[str, Any]) -> dict[str, float] | None:
        """One micro-batch (and the data stream's position after it); returns the logs when it ended an optimizer
        step, else None.

        From --discriminator_start_step the tokenizer and the discriminator learn from the same batch, each moved
        only by its own optimizer: the tokenizer's loss sees the discriminator through detached parameters, the
        discriminator's loss sees detached reconstructions. Both losses are checked before either model changes
        (TiTok steps the tokenizer first; the discriminator's loss does not depend on that step: it reads the
        reconstructions made before it)."""
        args, accelerator = self.args, self.accelerator
        adversarial = self.discriminator_trains()
        models = (self.model, self.discriminator) if adversarial else (self.model,)
        discriminator_terms: dict[str, torch.Tensor] = {}
        with accelerator.accumulate(*models):
            output = self.model(pixel_values)
            terms = self.loss_fn(
                pixel_values,
                output,
                discriminator=accelerator.unwrap_model(self.discriminator) if adversarial else None,
                last_layer_weight=decoder_last_layer(accelerator.unwrap_model(self.model)),
            )
            losses = {"loss": terms["loss"]}
            if adversarial:
                discriminator_terms = self.discriminator_loss_fn(
                    self.discriminator, pixel_values, output.reconstruction
                )
                losses["discriminator loss"] = discriminator_terms["discriminator_loss"]
            self.stop_unless_finite(losses)
            accelerator.backward(terms["loss"])
            if adversarial:
                accelerator.backward(discriminator_terms["discriminator_loss"])
            grad_norm = discriminator_grad_norm = None
            if accelerator.sync_gradients:
                # Unscale (fp16) the gradients of both optimizers at once, before the GradScaler's update in the
                # tokenizer's step changes the scale. Then clip each model (DDP or one device: this script does not
                # use FSDP or DeepSpeed, whose clipping differs).
                accelerator.unscale_gradients()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                if adversarial:
                    discriminator_grad_norm = torch.nn.utils.clip_grad_norm_(
                        self.discriminator.parameters(), args.max_grad_norm
                    )
                    self.step_discriminator(discriminator_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            return None
        self.end_optimizer_step(pixel_values.shape[0])
        self.stream_state_at_step = stream_position
        self.forward_state_at_step = self.forward_state()
        logs = {
            name: value.item() for name, value in {**output.quantizer_stats, **terms, **discriminator_terms}.items()
        }
        logs.update(grad_norm=float(grad_norm), lr=self.lr_scheduler.get_last_lr()[0])
        if adversarial:
            logs.update(
                discriminator_grad_norm=float(discriminator_grad_norm),
                discriminator_lr=self.discriminator_scheduler.get_last_lr()[0],
            )
        return logs

    def step_discriminator(self, grad_norm: torch.Tensor) -> None:
        """The discriminator's optimizer and scheduler step, on gradients already unscaled and clipped. It steps the
        raw optimizer: `AcceleratedOptimizer.step` would unscale again after the tokenizer's step has reset the fp16
        GradScaler. Under fp16 an overflow (a non-finite gradient norm) skips the step, as the scaler does for the
        tokenizer, whose step then lowers the scale (the scaler saw both optimizers' gradients)."""
        if torch.isfinite(grad_norm):
            self.discriminator_optimizer.optimizer.step()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        self.discriminator_scheduler.step()

    def validate(self) -> dict[str, float]:
        """Validation metrics (main process; for a model with tail-token dropout also `psnr_k{k}`, the PSNR from the
        first k tokens, at `prefix_lengths`) and a reconstruction sheet (`save_reconstruction_grid`)."""
        metrics: dict[str, float] = {}
        if self.accelerator.is_main_process:
            model = self.evaluation_model()
            metrics = evaluate_reconstruction(model, self.validation)
            if model.config.token_dropout == "tail":  # PSNR from the first k tokens (all k: `psnr` above)
                for k in prefix_lengths(model.config)[:-1]:
                    metrics[f"psnr_k{k}"] = evaluate_reconstruction(model, self.validation, num_tokens=k)["psnr"]
            grid = save_reconstruction_grid(
                model,
                self.processor,
                self.sheet_images,
                self.output_dir / "validation" / f"step-{self.progress.global_step:07d}.png",
            )
            self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=self.progress.global_step)
            for tracker in self.accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image("val/reconstructions", grid, self.progress.global_step, dataformats="HWC")
            logger.info(f"step {self.progress.global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.accelerator.wait_for_everyone()
        return metrics

    def run(self) -> dict[str, float]:
        """Train to `max_train_steps`; returns the final validation metrics (main process)."""
        args, accelerator = self.args, self.accelerator
        if accelerator.is_main_process:
            accelerator.init_trackers("vitvq", config=tracker_config(args))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.first_step = self.progress.global_step
        self.log_start()
        progress_bar = tqdm(
            total=args.max_train_steps,
            initial=self.progress.global_step,
            desc="training",
            disable=not accelerator.is_local_main_process,
        )
        self.set_train_mode()
        metrics: dict[str, float] = {}
        started, images_at_start = time.perf_counter(), self.progress.images_seen
        # DataLoader workers decode and crop batches ahead while the model trains on the current one; on a GPU the
        # batches come in page-locked memory and their copies overlap the work queued before them. Not through
        # `accelerator.prepare`, which would shard each process's stream again (see `_worker_loader` in data.py).
        batches = self.stream.batches(args.train_batch_size, pin_memory=accelerator.device.type == "cuda")
        try:
            while self.progress.global_step < args.max_train_steps:
                batch = next(batches)
                pixel_values = batch.pixel_values.to(accelerator.device, non_blocking=True)
                logs = self.train_step(pixel_values, batch.stream_state)
                if logs is None:
                    continue
                step = self.progress.global_step
                images_per_second = (self.progress.images_seen - images_at_start) / (time.perf_counter() - started)
                progress_bar.update(1)
                progress_bar.set_postfix(
                    loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{images_per_second:.1f}"
                )
                if step % args.logging_steps == 0 or step == args.max_train_steps:
                    self.log_train({**logs, "images_per_second": images_per_second})
                if step % args.checkpointing_steps == 0:
                    self.save_checkpoint()
                if step % args.validation_steps == 0 or step == args.max_train_steps:
                    self.model.eval()
                    metrics = self.validate()
                    self.set_train_mode()
        finally:  # stops the DataLoader workers, also after an error
            batches.close()
        progress_bar.close()
        self.report_skipped()
        return metrics

    # ------------------------------------------------------------------------------------------ messages and export

    def set_train_mode(self) -> None:
        """Train mode for the model, but for the frozen encoder and quantizer of decoder fine-tuning."""
        set_train_mode(
            self.accelerator.unwrap_model(self.model), decoder_only=self.args.finetune_decoder_from is not None
        )

    def log_train(self, logs: dict[str, float]) -> None:
        """Send training scalars and the codebook's health over the recent steps (usage, perplexity, dead codes;
        the code histogram to tensorboard) to the trackers, and append the scalars to `output_dir/train_log.jsonl`."""
        step = self.progress.global_step
        # a frozen quantizer (decoder fine-tuning) counts no code hits: its statistics are the loaded model's
        health = {} if self.args.finetune_decoder_from else self.accelerator.unwrap_model(self.model).codebook_health()
        histogram = health.pop("code_frequency", None)
        logs = {**logs, **{name: value.item() for name, value in health.items()}}
        if "codebook_usage" in logs:
            self.check_codebook_usage(logs["codebook_usage"])
        self.accelerator.log({f"train/{name}": value for name, value in logs.items()}, step=step)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard" and histogram is not None:
                write_code_histogram(tracker.writer, histogram, step)
        if self.accelerator.is_main_process:
            with (self.output_dir / "train_log.jsonl").open("a") as log_file:
                log_file.write(json.dumps({"step": step, **logs}) + "\n")

    def check_codebook_usage(self, usage: float) -> None:
        """Warn when the fraction of codes used over the model's usage window falls below `--codebook_usage_warning`,
        once this run has trained for a whole window: once per stretch of low usage, not at every check."""
        threshold, window = self.args.codebook_usage_warning, self.config.usage_window
        is_low = usage < threshold and self.progress.global_step - self.first_step >= window
        if is_low and not self.usage_is_low:
            logger.warning(
                f"Step {self.progress.global_step}: only {usage:.1%} of the {self.config.codebook_size} codes were "
                f"used in the last {window} steps (--codebook_usage_warning {threshold}): the codebook is collapsing. "
                "--codebook_recipe ema_restart re-seeds unused codes."
            )
        self.usage_is_low = is_low

    def log_start(self) -> None:
        config, args, accelerator = self.config, self.args, self.accelerator
        parameters = sum(p.numel() for p in accelerator.unwrap_model(self.model).parameters())
        effective_batch = args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        source = self.data_args.dataset_name or self.data_args.train_data_dir or "embedded scikit-image sample photos"
        logger.info(
            f"ViT-VQ with {parameters / 1e6:.2f} M parameters: {config.image_size}x{config.image_size} images -> "
            f"{config.num_latent_tokens} tokens of {config.codebook_size} codes ({config.bits_per_image:.0f} bits)\n"
            f"  data: {source}; {len(self.validation) and sum(len(b) for b in self.validation)} validation images\n"
            f"  batch {args.train_batch_size} x {args.gradient_accumulation_steps} accumulation x "
            f"{accelerator.num_processes} process(es) = {effective_batch} images per step, on {accelerator.device} "
            f"({accelerator.distributed_type}, mixed precision {accelerator.mixed_precision})\n"
            f"  {self.stream.num_workers} DataLoader worker(s) per process"
            f"{f', the model on {torch.get_num_threads()} CPU thread(s)' if accelerator.device.type == 'cpu' else ''}\n"
            f"  {args.max_train_steps} steps, checkpoints every {args.checkpointing_steps} in {self.output_dir}\n"
            f"  loss: {describe_loss(args)}",
            main_process_only=True,
        )

    def report_skipped(self) -> None:
        """Log how many distinct training samples failed to decode, on all processes together (each counted once,
        however many epochs met it), as the DataLoader workers reported them in the batches taken so far."""
        counts = torch.tensor([self.stream.skipped_examples], device=self.accelerator.device)
        total = int(self.accelerator.reduce(counts, reduction="sum").item())
        if total:
            names = ", ".join(self.stream.skipped_names[:5])
            examples = f" (e.g. on this process: {names})" if names else ""
            logger.warning(f"Skipped {total} distinct undecodable training samples in all{examples}.")
            self.accelerator.log({"train/skipped_samples": total}, step=self.progress.global_step)

    def export(self, metrics: dict[str, float]) -> Path:
        """Save `final/` (EMA weights when enabled, with `final_raw/` beside it), reload it with `AutoModel`,
        write a reconstruction grid, push to the Hub when asked; returns the `final/` folder."""
        final = self.output_dir / "final"
        if not self.accelerator.is_main_process:
            return final
        for folder, model in self.export_folders().items():
            model.save_pretrained(folder)
            self.processor.save_pretrained(folder)
            write_model_card(
                folder,
                self.config,
                self.args,
                self.data_args,
                self.progress.global_step,
                metrics,
                self.accelerator.num_processes,
            )

        reloaded = AutoModel.from_pretrained(final).eval()
        save_reconstruction_grid(reloaded, self.processor, self.sheet_images, final / "reconstructions.png")
        self.push_final(final)
        return final


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    trainer = Trainer(model_args, data_args, training_args)
    accelerator = trainer.accelerator
    try:
        # on a CPU the model trains on the cores the DataLoader workers leave, unless OMP_NUM_THREADS (which
        # `accelerate launch` sets) says otherwise: with 2 workers on 2 cores, `tiny` trained 1.2-1.5x faster on one
        # thread than on two
        with cpu_threads(accelerator.device, trainer.stream.num_workers):
            metrics = trainer.run()
        final = trainer.export(metrics)
        if accelerator.is_main_process:
            summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(
                f"\nDone: {trainer.progress.global_step} steps. Validation: {summary}.\n"
                f"The tokenizer is in {final} (reconstructions: {final / 'reconstructions.png'}). Load it with\n"
                f"    import hf_vitvq; from transformers import AutoModel, AutoImageProcessor\n"
                f"    model = AutoModel.from_pretrained('{final}')\n"
                f"    processor = AutoImageProcessor.from_pretrained('{final}')\n"
                f"or with trust_remote_code=True where hf_vitvq is not installed."
            )
    finally:
        trainer.finish_pushes()  # also after an error: e.g. the last good state saved at a non-finite loss
        end_training(accelerator)


if __name__ == "__main__":
    main()
