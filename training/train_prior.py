"""Train a prior over pre-tokenized images with Accelerate (one CPU, one GPU, or many): a MaskGIT prior
(`ViTVQMaskGITModel`, as TiTok's generators) or an autoregressive one, a stock transformers causal LM
(`LlamaForCausalLM` by default, any `AutoModelForCausalLM` model type with `--ar_model_type`) over the codes plus
class and null tokens (`hf_vitvq.ar_prior`).

    accelerate launch training/train_prior.py --config training/configs/prior_demo_maskgit.yaml \\
        --train_data_dir outputs/prior_demo/tokens --tokenizer outputs/prior_demo/tokenizer/final
    accelerate launch --multi_gpu --num_processes 8 training/train_prior.py --config training/configs/prior_L-32.yaml \\
        --train_data_dir tokens/imagenet --tokenizer outputs/l32/final --output_dir outputs/l32_prior

Data: `hf-vitvq pretokenize`'s parquet shards (`--train_data_dir`), or anything `datasets.load_dataset` reads with a
column of token ids (`--dataset_name`, `--token_column`); labels from `--label_column` (default `label`, when present)
make the prior class-conditional. Validation reports bits per token on held-out sequences (for MaskGIT an upper bound,
see `hf_vitvq.training.prior_evaluation`) next to the unigram and uniform baselines, and, with `--tokenizer`, writes a
grid of samples. Resumes exactly with `--resume_from_checkpoint latest`. The result, `OUTPUT_DIR/final`, loads with
`hf_vitvq.generation_pipeline.load_prior` (or `AutoModel` / `AutoModelForCausalLM`); `hf-vitvq sample` draws images.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQMaskGITConfig, ViTVQMaskGITModel, ViTVQModel
from hf_vitvq.ar_prior import ARPriorVocabulary, ar_prior_config, set_generation_defaults
from hf_vitvq.configuration_vitvq_maskgit import prior_sequence_shape
from hf_vitvq.generation_pipeline import ViTVQGenerationPipeline, image_grid, load_prior
from hf_vitvq.training.arguments import default_warmup_steps, parse_config_and_flags
from hf_vitvq.training.hub import CheckpointPusher
from hf_vitvq.training.prior_data import SequenceBatches, TokenData, load_token_data, pretokenize_info
from hf_vitvq.training.prior_evaluation import (
    class_unigram_bits_per_token,
    prior_bits_per_token,
    uniform_bits_per_token,
    unigram_bits_per_token,
)
from hf_vitvq.training.trainer_utils import (
    NonFiniteLossError,
    TrainingRun,
    end_training,
    prepare_optimization,
    tracker_config,
    training_accelerator,
)

logger = get_logger(__name__)

PRIORS = ("maskgit", "ar")
# Transformer sizes by `--model_config` name: width, blocks, heads. "tiny" is the CPU demo's; "titok" TiTok's L-32 and
# B-64 generators (arXiv 2406.07550; configs/infer/TiTok/titok_l32.yaml).
PRIOR_SIZES: dict[str, tuple[int, int, int]] = {"tiny": (128, 4, 4), "small": (512, 8, 8), "titok": (768, 24, 16)}


@dataclass
class PriorModelArguments:
    prior: str = field(default="maskgit", metadata={"help": "maskgit (ViTVQMaskGITModel) or ar (a stock causal LM)."})
    model_config: str = field(
        default="tiny",
        metadata={"help": f"Sizes {list(PRIOR_SIZES)}, or a config JSON of the prior (its sizes and options)."},
    )
    model_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'JSON of config fields: ViTVQMaskGITConfig\'s for maskgit (e.g. \'{"mask_schedule": "cosine"}\'), '
            "the causal LM config's for ar (e.g. '{\"num_key_value_heads\": 2}')."
        },
    )
    ar_model_type: str = field(default="llama", metadata={"help": "ar: any AutoModelForCausalLM model type."})
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "The tokenizer folder (or Hub id) the tokens come from: sets the codebook size and checks the "
            "sequence length, and enables sample grids."
        },
    )
    codebook_size: int | None = field(
        default=None,
        metadata={
            "help": "Codes of the tokenizer, when neither --tokenizer nor the data's pretokenize_info.json tell."
        },
    )


@dataclass
class TokenDataArguments:
    train_data_dir: str | None = field(
        default=None, metadata={"help": "A folder of parquet shards of token ids, as `hf-vitvq pretokenize` writes."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Anything `datasets.load_dataset` reads."})
    dataset_config_name: str | None = field(default=None)
    data_files: str | None = field(default=None, metadata={"help": "Glob of data files."})
    token_column: str = field(default="token_ids", metadata={"help": "Column of token-id lists (nested: flattened)."})
    label_column: str = field(
        default="label", metadata={"help": "Column of class labels, used when present; 'none': unconditional prior."}
    )
    num_classes: int | None = field(
        default=None, metadata={"help": "Classes; default: the ClassLabel feature's, else the largest label + 1."}
    )
    train_split: str = field(default="train")
    validation_split: str | None = field(
        default=None, metadata={"help": "Default: 'validation' when the data have it, else held-out training rows."}
    )
    validation_sequences: int | None = field(
        default=None,
        metadata={"help": "Training rows held out (the last ones) without a validation split; default 10%%, <= 1000."},
    )


@dataclass
class PriorTrainingArguments:
    output_dir: str = field(default="outputs/prior")
    seed: int = field(default=0)
    train_batch_size: int = field(default=64, metadata={"help": "Sequences per device per step."})
    gradient_accumulation_steps: int = field(default=1)
    max_train_steps: int = field(default=1000)
    learning_rate: float = field(default=2e-4, metadata={"help": "TiTok's generator: 2e-4."})
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.96)
    adam_weight_decay: float = field(default=0.03, metadata={"help": "Applied to weight matrices only."})
    adam_epsilon: float = field(default=1e-8)
    max_grad_norm: float = field(default=1.0)
    lr_scheduler: str = field(default="cosine", metadata={"help": "Any `transformers.get_scheduler` name."})
    lr_warmup_steps: int | None = field(
        default=None, metadata={"help": "Default: 10%% of --max_train_steps, at most 500."}
    )
    class_label_dropout: float = field(
        default=0.1,
        metadata={"help": "ar: probability that a label becomes the null token (maskgit: its config field)."},
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16."})
    use_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the weights; `final/` then holds it."})
    ema_decay: float = field(default=0.999)
    checkpointing_steps: int = field(default=500)
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint path."})
    validation_steps: int = field(default=500)
    logging_steps: int = field(default=10)
    num_validation_samples: int = field(default=16, metadata={"help": "Images in the sample grids (--tokenizer)."})
    sample_num_steps: int = field(default=8, metadata={"help": "maskgit: decoding steps of the sample grids."})
    sample_guidance_scale: float = field(default=1.0, metadata={"help": "Guidance of the sample grids (1: none)."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Temperature of the sample grids."})
    report_to: str = field(default="auto", metadata={"help": "auto (tensorboard when installed), none, all, ..."})
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)
    hub_token: str | None = field(default=None)
    hub_push_checkpoints: bool = field(
        default=False, metadata={"help": "Also push each checkpoint, in the background."}
    )

    def __post_init__(self) -> None:
        if self.lr_warmup_steps is None:
            self.lr_warmup_steps = default_warmup_steps(self.max_train_steps)


ARGUMENT_CLASSES = (PriorModelArguments, TokenDataArguments, PriorTrainingArguments)


def parse_args(
    argv: list[str] | None = None,
) -> tuple[PriorModelArguments, TokenDataArguments, PriorTrainingArguments]:
    """Parse `--config FILE` (optional) and command-line flags, the command line winning, then check them."""
    model_args, data_args, training_args = parse_config_and_flags(ARGUMENT_CLASSES, argv)
    check_args(model_args, data_args, training_args)
    return model_args, data_args, training_args


def check_args(model_args: PriorModelArguments, data_args: TokenDataArguments, args: PriorTrainingArguments) -> None:
    """Raise a ValueError saying what to pass, before anything expensive starts."""
    if model_args.prior not in PRIORS:
        raise ValueError(f"--prior must be one of {PRIORS}, got {model_args.prior!r}.")
    if (data_args.train_data_dir is None) == (data_args.dataset_name is None):
        raise ValueError("Pass either --train_data_dir (pre-tokenized parquet shards) or --dataset_name, not both.")
    if data_args.train_data_dir is not None and not Path(data_args.train_data_dir).is_dir():
        raise ValueError(f"--train_data_dir {data_args.train_data_dir}: no such folder.")
    if model_args.model_config not in PRIOR_SIZES and not Path(model_args.model_config).is_file():
        raise ValueError(
            f"--model_config {model_args.model_config!r} is neither one of {list(PRIOR_SIZES)} nor a file."
        )
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be > 0, got {args.learning_rate}.")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME.")
    if args.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {args.mixed_precision!r}.")
    for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                 "validation_steps", "logging_steps", "num_validation_samples"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if not 0 <= args.class_label_dropout < 1:
        raise ValueError(f"--class_label_dropout must be in [0, 1), got {args.class_label_dropout}.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError("--checkpoints_total_limit must be >= 1 (or left unset to keep every checkpoint).")
    if not 0 < args.ema_decay < 1:
        raise ValueError(f"--ema_decay must be in (0, 1), got {args.ema_decay}.")
    if model_args.model_overrides is not None:
        try:
            overrides = json.loads(model_args.model_overrides)
        except json.JSONDecodeError as error:
            raise ValueError(f"--model_overrides must be a JSON object: {error}") from error
        if not isinstance(overrides, dict):
            raise ValueError("--model_overrides must be a JSON object of config fields.")


# ---------------------------------------------------------------------------------------------- the model


def check_field_names(config_class: type[PretrainedConfig], names: list[str]) -> None:
    """Raise a ValueError naming the `--model_overrides` that are not fields of `config_class`, with close matches."""
    known = [field.name for field in dataclasses.fields(config_class)]
    problems = [
        f"'{name}'"
        + (f" (did you mean {matches[0]!r}?)" if (matches := difflib.get_close_matches(name, known, 1)) else "")
        for name in names
        if name not in known
    ]
    if problems:
        raise ValueError(f"--model_overrides: {', '.join(problems)} not field(s) of {config_class.__name__}.")


def codebook_size_of(model_args: PriorModelArguments, data_args: TokenDataArguments, data: TokenData) -> int:
    """The number of codes, from `--tokenizer` (which must also produce the data's sequence length), `--codebook_size`
    or the data's `pretokenize_info.json`, in that order; every id of the data must be below it."""
    sequence_length = data.train.sequence_length
    if model_args.tokenizer is not None:
        codebook_size, expected_length = prior_sequence_shape(ViTVQConfig.from_pretrained(model_args.tokenizer))
        if expected_length != sequence_length:
            raise ValueError(
                f"The tokenizer {model_args.tokenizer} encodes an image into {expected_length} ids, the data hold "
                f"sequences of {sequence_length}: the tokens come from another tokenizer."
            )
    elif model_args.codebook_size is not None:
        codebook_size = model_args.codebook_size
    elif (info := pretokenize_info(data_args.train_data_dir)).get("codebook_size") is not None:
        codebook_size = int(info["codebook_size"])
    else:
        raise ValueError(
            "The codebook size is unknown: pass --tokenizer (the tokenizer folder) or --codebook_size, or train on "
            "a folder with the pretokenize_info.json that `hf-vitvq pretokenize` writes."
        )
    largest = int(max(data.train.token_ids.max(), data.validation.token_ids.max()))
    if largest >= codebook_size:
        raise ValueError(f"The data hold token id {largest}, outside the codebook of {codebook_size} codes.")
    return codebook_size


def build_prior(model_args: PriorModelArguments, codebook_size: int, sequence_length: int, num_classes: int) -> Any:
    """The untrained prior: sizes from `--model_config` (a name of `PRIOR_SIZES` or a config JSON), then
    `--model_overrides`; codebook, sequence length and classes from the data."""
    overrides = json.loads(model_args.model_overrides) if model_args.model_overrides else {}
    if model_args.model_config in PRIOR_SIZES:
        width, layers, heads = PRIOR_SIZES[model_args.model_config]
        base = {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads}
        if model_args.prior == "ar":  # Llama's SwiGLU MLP: 8/3 of the width (as wide in parameters as a 4x GELU MLP)
            base["intermediate_size"] = 8 * ((8 * width // 3 + 7) // 8)
    else:
        base = json.loads(Path(model_args.model_config).read_text())
        for name in ("auto_map", "architectures", "transformers_version", "model_type"):
            base.pop(name, None)
    if model_args.prior == "maskgit":
        check_field_names(ViTVQMaskGITConfig, list(overrides))
        config = ViTVQMaskGITConfig(
            **{**base, **overrides},
            codebook_size=codebook_size,
            num_latent_tokens=sequence_length,
            num_classes=num_classes,
        )
        return ViTVQMaskGITModel(config)
    check_field_names(type(AutoConfig.for_model(model_args.ar_model_type)), list(overrides))
    vocabulary = ARPriorVocabulary(codebook_size, sequence_length, num_classes)
    config = ar_prior_config(vocabulary, model_args.ar_model_type, **{**base, **overrides})
    model = AutoModelForCausalLM.from_config(config)
    set_generation_defaults(model)
    return model


# ---------------------------------------------------------------------------------------------- training


class PriorTrainer(TrainingRun):
    """The training loop and its checkpoints; `run()` trains to `max_train_steps`."""

    def __init__(
        self, model_args: PriorModelArguments, data_args: TokenDataArguments, args: PriorTrainingArguments
    ) -> None:
        self.model_args, self.data_args, self.args = model_args, data_args, args
        self.output_dir = Path(args.output_dir)
        self.accelerator = training_accelerator(args)
        self.data = load_token_data(data_args)
        self.codebook_size = codebook_size_of(model_args, data_args, self.data)
        model = build_prior(model_args, self.codebook_size, self.data.train.sequence_length, self.data.num_classes)
        self.vocabulary = None if model_args.prior == "maskgit" else ARPriorVocabulary.from_config(model.config)
        optimization = prepare_optimization(self.accelerator, model, args)
        self.model, self.optimizer = optimization.model, optimization.optimizer
        self.lr_scheduler, self.ema = optimization.lr_scheduler, optimization.ema
        self.progress = optimization.progress
        self.batches = SequenceBatches(
            len(self.data.train),
            args.train_batch_size,
            args.seed,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )
        self.accelerator.register_for_checkpointing(self.batches)
        self.pipeline_parts = None
        if model_args.tokenizer is not None and self.accelerator.is_main_process:
            tokenizer = ViTVQModel.from_pretrained(model_args.tokenizer).to(self.accelerator.device).eval()
            self.pipeline_parts = (tokenizer, ViTVQImageProcessor.from_pretrained(model_args.tokenizer))
        self.checkpoint_pusher = CheckpointPusher.for_run(args, self.accelerator.is_main_process)

    # ------------------------------------------------------------------------------------------ steps

    def loss(self, token_ids: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The training loss of a batch: MaskGIT's masked-token loss (the model masks, drops labels and smooths), or
        the causal LM's next-token loss over `[condition token, codes]`, with labels dropped to the null token at
        `--class_label_dropout`."""
        if self.vocabulary is None:
            input_ids = self.accelerator.unwrap_model(self.model).mask_tokens(token_ids)
            return self.model(input_ids, class_labels, labels=token_ids).loss
        if class_labels is not None and self.args.class_label_dropout > 0:
            dropped = torch.rand(class_labels.shape, device=class_labels.device) < self.args.class_label_dropout
            class_labels = class_labels.masked_fill(dropped, self.vocabulary.num_classes)
        input_ids = self.vocabulary.input_ids(token_ids, class_labels)
        return self.model(input_ids=input_ids, labels=input_ids).loss

    def train_step(self) -> dict[str, float] | None:
        """One micro-batch; returns the logs when it ended an optimizer step, else None."""
        args, accelerator = self.args, self.accelerator
        rows = self.batches.next_indices()
        batch = self.data.train.select(rows)
        token_ids = batch.token_ids.to(accelerator.device)
        class_labels = None if batch.class_labels is None else batch.class_labels.to(accelerator.device)
        with accelerator.accumulate(self.model):
            loss = self.loss(token_ids, class_labels)
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
            if accelerator.reduce(bad, reduction="sum").item():
                step = self.progress.global_step
                self.save_checkpoint()
                raise NonFiniteLossError(
                    f"The loss became {loss.item()} at step {step + 1}; the last good state (step {step}) is saved in "
                    f"{self.output_dir / f'checkpoint-{step}'}. Lower --learning_rate, or check the data."
                )
            accelerator.backward(loss)
            grad_norm = None
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            return None
        self.end_optimizer_step(len(rows))
        return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": self.lr_scheduler.get_last_lr()[0]}

    def baselines(self) -> dict[str, float]:
        """Bits per validation token of the uniform and unigram (training code frequencies, also per class for
        labelled data) baselines."""
        train, validation, size = self.data.train, self.data.validation, self.codebook_size
        baselines = {
            "uniform_bits_per_token": uniform_bits_per_token(size),
            "unigram_bits_per_token": unigram_bits_per_token(train.token_ids, validation.token_ids, size),
        }
        if self.data.num_classes:
            baselines["class_unigram_bits_per_token"] = class_unigram_bits_per_token(train, validation, size)
        return baselines

    def validate(self) -> dict[str, float]:
        """Bits per validation token (main process) and, with `--tokenizer`, a grid of samples."""
        metrics: dict[str, float] = {}
        step = self.progress.global_step
        if self.accelerator.is_main_process:
            model = self.evaluation_model()
            metrics = {"bits_per_token": prior_bits_per_token(model, self.data.validation), **self.baselines()}
            if self.pipeline_parts is not None:
                self.sample_grid(model, self.output_dir / "validation" / f"step-{step:07d}.png")
            self.accelerator.log({f"val/{name}": value for name, value in metrics.items()}, step=step)
            logger.info(f"step {step}: " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
        self.accelerator.wait_for_everyone()
        return metrics

    def sample_grid(self, model: Any, path: Path) -> Path:
        """Sample `--num_validation_samples` images (classes 0, 1, ... in turn for a class-conditional prior) with the
        `--sample_*` settings and a fixed seed, and write their grid to `path`."""
        was_training = model.training
        pipeline = ViTVQGenerationPipeline(model, *self.pipeline_parts)
        count, num_classes = self.args.num_validation_samples, self.data.num_classes
        labels = [index % num_classes for index in range(count)] if num_classes else None
        sampling = {"num_steps": self.args.sample_num_steps} if self.vocabulary is None else {}
        images = pipeline(
            labels,
            None if labels else count,
            guidance_scale=self.args.sample_guidance_scale,
            temperature=self.args.sample_temperature,
            generator=torch.Generator(model.device).manual_seed(self.args.seed),
            **sampling,
        )
        model.train(was_training)
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images, columns=num_classes or None).save(path)
        return path

    def run(self) -> dict[str, float]:
        """Train to `max_train_steps`; returns the final validation metrics (main process)."""
        args, accelerator = self.args, self.accelerator
        if accelerator.is_main_process:
            accelerator.init_trackers("vitvq_prior", config=tracker_config(args))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.log_start()
        progress_bar = tqdm(
            total=args.max_train_steps,
            initial=self.progress.global_step,
            desc="training",
            disable=not accelerator.is_local_main_process,
        )
        self.model.train()
        metrics: dict[str, float] = {}
        started, seen_at_start = time.perf_counter(), self.progress.images_seen
        while self.progress.global_step < args.max_train_steps:
            logs = self.train_step()
            if logs is None:
                continue
            step = self.progress.global_step
            logs["sequences_per_second"] = (self.progress.images_seen - seen_at_start) / (time.perf_counter() - started)
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
            if step % args.logging_steps == 0 or step == args.max_train_steps:
                self.log_train(logs)
            if step % args.checkpointing_steps == 0:
                self.save_checkpoint()
            if step % args.validation_steps == 0 or step == args.max_train_steps:
                metrics = self.validate()
        progress_bar.close()
        return metrics

    def log_train(self, logs: dict[str, float]) -> None:
        """Send the training scalars to the trackers and append them to `output_dir/train_log.jsonl`."""
        step = self.progress.global_step
        self.accelerator.log({f"train/{name}": value for name, value in logs.items()}, step=step)
        if self.accelerator.is_main_process:
            with (self.output_dir / "train_log.jsonl").open("a") as log_file:
                log_file.write(json.dumps({"step": step, **logs}) + "\n")

    def log_start(self) -> None:
        args, accelerator, data = self.args, self.accelerator, self.data
        model = accelerator.unwrap_model(self.model)
        parameters = sum(p.numel() for p in model.parameters())
        classes = f"{data.num_classes} classes" if data.num_classes else "no labels (unconditional)"
        logger.info(
            f"{type(model).__name__} prior ({self.model_args.prior}) with {parameters / 1e6:.2f} M parameters over "
            f"{data.train.sequence_length} tokens of {self.codebook_size} codes, {classes}\n"
            f"  data: {data.source}: {len(data.train)} training and {len(data.validation)} validation sequences\n"
            f"  batch {args.train_batch_size} x {args.gradient_accumulation_steps} accumulation x "
            f"{accelerator.num_processes} process(es), on {accelerator.device}; {args.max_train_steps} steps, "
            f"checkpoints every {args.checkpointing_steps} in {self.output_dir}",
            main_process_only=True,
        )

    # ------------------------------------------------------------------------------------------ export

    def export(self, metrics: dict[str, float]) -> Path:
        """Save `final/` (EMA weights when enabled, `final_raw/` beside it) with a model card, reload it, write a grid
        of samples with `--tokenizer`, push to the Hub when asked; returns the `final/` folder."""
        final = self.output_dir / "final"
        if not self.accelerator.is_main_process:
            return final
        for folder, model in self.export_folders().items():
            model.save_pretrained(folder)
            (folder / "README.md").write_text(self.model_card(model, metrics))
        reloaded = load_prior(final, self.accelerator.device)
        if self.pipeline_parts is not None:
            self.sample_grid(reloaded, final / "samples.png")
        self.push_final(final)
        return final

    def model_card(self, model: Any, metrics: dict[str, float]) -> str:
        """README.md of an exported prior: what it is, how to sample, how it was trained, its validation numbers."""
        args, data = self.args, self.data
        rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items())
        kind = (
            "A MaskGIT (ViTVQMaskGITModel)"
            if self.vocabulary is None
            else f"An autoregressive ({type(model).__name__})"
        )
        tokenizer = self.model_args.tokenizer or "TOKENIZER"
        return (
            "---\nlibrary_name: transformers\ntags:\n- hf-vitvq\n- image-generation\n"
            f"- {self.model_args.prior}\n---\n\n"
            f"# {args.hub_model_id or self.output_dir.name}\n\n"
            f"{kind} prior over the {data.train.sequence_length} token ids ({self.codebook_size} codes) of the "
            f"ViT-VQ tokenizer `{tokenizer}`, {f'{data.num_classes} classes' if data.num_classes else 'unconditional'}"
            f", trained with hf-vitvq's `training/train_prior.py` on {data.source} ({len(data.train)} sequences).\n\n"
            "```bash\n"
            f"hf-vitvq sample {args.hub_model_id or 'THIS_FOLDER'} {tokenizer} -o samples\n"
            "```\n\n"
            f"| setting | value |\n|---|---|\n| steps | {self.progress.global_step} |\n"
            f"| batch | {args.train_batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes} |\n"
            f"| learning rate | {args.learning_rate} ({args.lr_scheduler}, {args.lr_warmup_steps} warm-up) |\n"
            f"| EMA | {args.ema_decay if args.use_ema else 'no'} |\n\n"
            "Validation (bits per token; MaskGIT: an upper bound, see `hf_vitvq.training.prior_evaluation`):\n\n"
            + (f"| metric | value |\n|---|---|\n{rows}\n" if rows else "No validation was run.\n")
            + f"\n```json\n{model.config.to_json_string(use_diff=False).strip()}\n```\n"
        )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    trainer = PriorTrainer(model_args, data_args, training_args)
    accelerator = trainer.accelerator
    try:
        metrics = trainer.run()
        final = trainer.export(metrics)
        if accelerator.is_main_process:
            summary = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
            print(f"\nDone: {trainer.progress.global_step} steps. Validation: {summary}.\nThe prior is in {final}.")
    finally:
        trainer.finish_pushes()
        end_training(accelerator)


if __name__ == "__main__":
    main()
