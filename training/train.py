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

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm
from transformers import AutoModel, get_scheduler

from hf_vitvq import ViTVQImageProcessor, ViTVQModel
from hf_vitvq.training import checkpointing
from hf_vitvq.training.arguments import DataArguments, ModelArguments, TokenizerTrainingArguments, parse_args
from hf_vitvq.training.data import TrainingImageStream, load_streams, prefetch, validation_batches
from hf_vitvq.training.evaluation import evaluate_reconstruction, save_reconstruction_grid
from hf_vitvq.training.losses import LossWeights, TokenizerLoss
from hf_vitvq.training.model_card import write_model_card
from hf_vitvq.training.trainer_utils import (
    NonFiniteLossError,
    TrainingProgress,
    build_config,
    ema_of_floats,
    parameter_groups,
    resolve_report_to,
    tracker_config,
    write_code_histogram,
)

logger = get_logger(__name__)


class Trainer:
    """The training loop and its checkpoints; `run()` trains to `max_train_steps`."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: TokenizerTrainingArguments) -> None:
        self.args = args
        self.data_args = data_args
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=resolve_report_to(args.report_to),
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
        )
        set_seed(args.seed)
        self.config = build_config(model_args, data_args.resolution)
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
        )
        self.validation = []
        if self.accelerator.is_main_process:
            self.validation = validation_batches(
                data.validation, data.image_column, self.processor, data.validation_images, args.train_batch_size
            )

        model = ViTVQModel(self.config)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(
            parameter_groups(model, args.adam_weight_decay),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
        )
        # Not passed to `prepare`: stepped once per optimizer step on every process, whatever their number.
        self.lr_scheduler = get_scheduler(
            args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = None
        if args.use_ema:
            self.ema = AveragedModel(model, multi_avg_fn=ema_of_floats(args.ema_decay), use_buffers=True)
            self.accelerator.register_for_checkpointing(self.ema)
        self.progress = TrainingProgress()
        self.accelerator.register_for_checkpointing(self.lr_scheduler, self.progress)
        self.loss_fn = TokenizerLoss(
            LossWeights(args.reconstruction_l1_weight, args.reconstruction_l2_weight, args.quantizer_loss_weight)
        )
        self.stream_state_at_step = self.stream.state_dict()
        self.quantizer_state_at_step = self.quantizer_state()
        self.first_step = 0  # where this run started (after resuming)
        self.usage_is_low = False  # whether the last check found the codebook usage under --codebook_usage_warning
        self.checkpoint_pusher = None
        if args.push_to_hub and args.hub_push_checkpoints and self.accelerator.is_main_process:
            from hf_vitvq.training.hub import CheckpointPusher

            self.checkpoint_pusher = CheckpointPusher(
                args.hub_model_id, args.hub_token, self.output_dir, keep_last=args.checkpoints_total_limit
            )

    def quantizer_state(self) -> dict[str, torch.Tensor]:
        """A copy of the quantizer's state (codebook, EMA and usage statistics), which its forward changes: kept
        at each optimizer step so that a step whose loss is not finite can be undone before the state is saved."""
        quantizer = self.accelerator.unwrap_model(self.model).quantize
        return {name: tensor.clone() for name, tensor in quantizer.state_dict().items()}

    # ------------------------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write `checkpoint-STEP` under a temporary name and, when every process is done, its manifest of checksums
        (main process); then rename it and prune."""
        step = self.progress.global_step
        accelerator = self.accelerator
        tmp = checkpointing.incomplete_dir(self.output_dir, step)
        accelerator.save_state(str(tmp))
        stream_file = tmp / f"data_state_rank{accelerator.process_index}.json"
        stream_file.write_text(json.dumps({**self.stream_state_at_step, "world_size": accelerator.num_processes}))
        accelerator.wait_for_everyone()
        final = tmp.with_name(f"checkpoint-{step}")
        if accelerator.is_main_process:
            checkpointing.write_manifest(tmp)  # every process's files are complete: hash them before the rename
            pusher = self.checkpoint_pusher
            if pusher is not None:  # re-saving a step (a non-finite loss right after a checkpoint): upload over first
                pusher.wait([final])
            final = checkpointing.publish(self.output_dir, step)
            logger.info(f"Saved {final}")
            if pusher is not None:
                pusher.push(final)  # before pruning: a queued upload this one supersedes can be deleted at once
            self.prune_checkpoints()
        accelerator.wait_for_everyone()
        return final

    def prune_checkpoints(self) -> None:
        """Delete the oldest checkpoints beyond `--checkpoints_total_limit` (main process), except those an upload is
        reading: a later call deletes them, so that no process ever waits on the network here."""
        surplus = checkpointing.surplus_checkpoints(self.output_dir, self.args.checkpoints_total_limit)
        if self.checkpoint_pusher is not None:
            surplus = self.checkpoint_pusher.removable(surplus)
        checkpointing.remove_checkpoints(surplus)
        for removed in surplus:
            logger.info(f"Removed old checkpoint {removed}")

    def choose_checkpoint(self, requested: str) -> tuple[str | None, str | None]:
        """(the checkpoint to resume from, or None to start from scratch; an error that stops the run, or None) for
        `--resume_from_checkpoint requested`, checked against its manifest: a named checkpoint must match it, `latest`
        is the newest checkpoint that does, with a warning for each newer one that does not. Main process only: it
        deletes half-written folders and hashes the files."""
        for stale in checkpointing.remove_incomplete(self.output_dir):
            logger.warning(f"Removed incomplete checkpoint {stale} (the previous run stopped while writing it)")
        if requested == "latest":
            path, damaged = checkpointing.latest_intact_checkpoint(self.output_dir)
            for problem in damaged.values():
                logger.warning(f"{problem} Resuming from an older checkpoint instead.")
            if path is None and damaged:
                return None, (
                    f"--resume_from_checkpoint latest: no intact checkpoint in {self.output_dir} (see the warnings "
                    "above). Delete the damaged ones, or leave out --resume_from_checkpoint, to start from scratch."
                )
        else:
            path = Path(requested)
            try:
                checkpointing.verify_checkpoint(path)
            except checkpointing.CheckpointError as error:
                return None, f"--resume_from_checkpoint {requested}: {error}"
        if path is not None and not (path / checkpointing.MANIFEST_NAME).is_file():
            logger.warning(
                f"{path} has no {checkpointing.MANIFEST_NAME} (it was written by an older version): its files could "
                "not be verified."
            )
        return (None if path is None else str(path)), None

    def resume(self) -> None:
        """Load `--resume_from_checkpoint` (a path, or `latest` in `output_dir`: see `choose_checkpoint`), and drop
        the entries of `train_log.jsonl` after its step."""
        requested = self.args.resume_from_checkpoint
        if requested is None:
            return
        choice: list[str | None] = [None, None]
        if self.accelerator.is_main_process:
            choice = list(self.choose_checkpoint(requested))
        path, error = broadcast_object_list(choice)  # every process resumes from the same one, or stops
        if error is not None:
            raise checkpointing.CheckpointError(error)
        if path is None:
            logger.info(f"No checkpoint in {self.output_dir}: starting from scratch.")
            return
        path = Path(path)
        num_processes = self.accelerator.num_processes
        stream_file = path / f"data_state_rank{self.accelerator.process_index}.json"
        stream_state = json.loads(stream_file.read_text()) if stream_file.is_file() else {}
        written_by = stream_state.pop("world_size", num_processes if stream_state else None)
        if written_by != num_processes:
            raise ValueError(
                f"{path} was written by {written_by or 'fewer'} process(es), this run has {num_processes}: each "
                "process resumes its own part of the data stream, so resume with the number that wrote it."
            )
        try:
            self.accelerator.load_state(str(path))
        except Exception as error:  # e.g. a truncated file in a checkpoint without a manifest
            raise checkpointing.CheckpointError(f"Could not load checkpoint {path}: {error}") from error
        self.stream.load_state_dict(stream_state)
        self.stream_state_at_step = self.stream.state_dict()
        self.quantizer_state_at_step = self.quantizer_state()
        step, log_path = self.progress.global_step, self.output_dir / "train_log.jsonl"
        if self.accelerator.is_main_process and (dropped := checkpointing.drop_log_entries_after(log_path, step)):
            logger.info(f"Dropped {dropped} lines of later steps from {log_path}")
        self.accelerator.wait_for_everyone()
        logger.info(f"Resumed from {path} at step {step}")

    # ------------------------------------------------------------------------------------------ steps

    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        """True when the loss is finite on every process."""
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        return self.accelerator.reduce(bad, reduction="sum").item() == 0

    def train_step(self, pixel_values: torch.Tensor, stream_position: dict[str, Any]) -> dict[str, float] | None:
        """One micro-batch (and the data stream's position after it); returns the logs when it ended an optimizer
        step, else None."""
        args, accelerator = self.args, self.accelerator
        with accelerator.accumulate(self.model):
            output = self.model(pixel_values)
            terms = self.loss_fn(pixel_values, output)
            if not self._loss_is_finite(terms["loss"].detach()):
                step = self.progress.global_step
                # the forward already fed this batch to the codebook statistics: undo that before saving
                self.accelerator.unwrap_model(self.model).quantize.load_state_dict(self.quantizer_state_at_step)
                self.save_checkpoint()
                raise NonFiniteLossError(
                    f"The loss became {terms['loss'].item()} at step {step + 1}; the last good state (step {step}) "
                    f"is saved in {self.output_dir / f'checkpoint-{step}'}. Lower --learning_rate, or check the data."
                )
            accelerator.backward(terms["loss"])
            grad_norm = None
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            return None
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(accelerator.unwrap_model(self.model))
        self.progress.global_step += 1
        self.progress.images_seen += (
            pixel_values.shape[0] * accelerator.num_processes * args.gradient_accumulation_steps
        )
        self.stream_state_at_step = stream_position
        self.quantizer_state_at_step = self.quantizer_state()
        logs = {name: value.item() for name, value in {**output.quantizer_stats, **terms}.items()}
        logs.update(grad_norm=float(grad_norm), lr=self.lr_scheduler.get_last_lr()[0])
        return logs

    def evaluation_model(self) -> ViTVQModel:
        """The weights to evaluate and export: the EMA when enabled, else the raw model."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)

    def validate(self) -> dict[str, float]:
        """Validation metrics (main process) and a grid of originals above reconstructions."""
        metrics: dict[str, float] = {}
        if self.accelerator.is_main_process:
            model = self.evaluation_model()
            metrics = evaluate_reconstruction(model, self.validation)
            grid = save_reconstruction_grid(
                model,
                self.processor,
                self.validation[0],
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
        self.model.train()
        metrics: dict[str, float] = {}
        started, images_at_start = time.perf_counter(), self.progress.images_seen
        # Batches are decoded in threads and prepared ahead while the model trains on the current one.
        batches = prefetch(self.stream.batches(args.train_batch_size, self.data_args.dataloader_num_workers))
        try:
            while self.progress.global_step < args.max_train_steps:
                batch = next(batches)
                logs = self.train_step(batch.pixel_values.to(accelerator.device), batch.position)
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
                    self.model.train()
        finally:  # stops the prefetching thread, also after an error
            batches.close()
        progress_bar.close()
        self.report_skipped()
        return metrics

    # ------------------------------------------------------------------------------------------ messages and export

    def log_train(self, logs: dict[str, float]) -> None:
        """Send training scalars and the codebook's health over the recent steps (usage, perplexity, dead codes;
        the code histogram to tensorboard) to the trackers, and append the scalars to `output_dir/train_log.jsonl`."""
        step = self.progress.global_step
        health = self.accelerator.unwrap_model(self.model).codebook_health()
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
            f"  {args.max_train_steps} steps, checkpoints every {args.checkpointing_steps} in {self.output_dir}",
            main_process_only=True,
        )

    def report_skipped(self) -> None:
        """Log how many distinct training samples failed to decode, on all processes together (each counted once,
        however many epochs met it, and those of the batches read ahead of training too)."""
        position = self.stream.position  # what was read, prefetched batches included
        counts = torch.tensor([position.skipped_examples], device=self.accelerator.device)
        total = int(self.accelerator.reduce(counts, reduction="sum").item())
        if total:
            names = ", ".join(position.skipped_names[:5])
            examples = f" (e.g. on this process: {names})" if names else ""
            logger.warning(f"Skipped {total} distinct undecodable training samples in all{examples}.")
            self.accelerator.log({"train/skipped_samples": total}, step=self.progress.global_step)

    def finish_pushes(self) -> None:
        """Wait for the checkpoint uploads still under way (main process), delete the checkpoints kept for them, and
        name those that failed. Later calls do nothing."""
        pusher, self.checkpoint_pusher = self.checkpoint_pusher, None
        if pusher is None:
            return
        if pending := pusher.pending():
            logger.info(f"Waiting for {len(pending)} checkpoint upload(s) to the Hub to finish")
        pusher.wait()
        self.prune_checkpoints()
        # the checkpoints just deleted on disk may still be in the repo
        pusher.prune().exception()  # waits for it; a failure is logged
        if pusher.failed:
            names = ", ".join(
                f"{path.name} ({'on disk' if path.is_dir() else 'deleted since'})" for path in pusher.failed
            )
            logger.warning(f"These checkpoints were not pushed to the Hub: {names}")

    def export(self, metrics: dict[str, float]) -> Path:
        """Save `final/` (EMA weights when enabled, with `final_raw/` beside it), reload it with `AutoModel`,
        write a reconstruction grid, push to the Hub when asked; returns the `final/` folder."""
        final = self.output_dir / "final"
        if not self.accelerator.is_main_process:
            return final
        folders = {final: self.evaluation_model()}
        if self.ema is not None:
            folders[self.output_dir / "final_raw"] = self.accelerator.unwrap_model(self.model)
        for folder, model in folders.items():
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
        save_reconstruction_grid(reloaded, self.processor, self.validation[0], final / "reconstructions.png")
        if self.args.push_to_hub:
            self.finish_pushes()  # the final model's commit comes after the checkpoints'
            from hf_vitvq.training.hub import push_folder

            url = push_folder(final, self.args.hub_model_id, None, self.args.hub_token)
            logger.info(f"Pushed {final} to {url}")
        return final


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    trainer = Trainer(model_args, data_args, training_args)
    accelerator = trainer.accelerator
    try:
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
        # Ending the process group explicitly avoids gloo's sporadic abort at interpreter exit.
        accelerator.free_memory()
        gc.collect()
        accelerator.end_training()


if __name__ == "__main__":
    main()
