"""Training data: image streams from any `datasets` source, sharded per process and per DataLoader worker, shuffled,
decoded in the workers, resumable exactly.

Exact resume through a shuffle buffer: `IterableDataset.state_dict()` drops the buffered examples, so instead the
stream is made a pure function of (seed, epoch, rank, worker) — each epoch is the stream shuffled with a seed drawn
from (seed, epoch), split between the processes, and `datasets` gives each DataLoader worker the same shards of it —
and the position is, for each worker, the number of raw examples it has consumed in its current epoch. On resume the
stream is rebuilt and each worker skips that many examples without decoding them (images are read undecoded, as bytes
or a file path, and decoded by us, which is also how undecodable samples are caught, counted and skipped). Random crops
and flips are seeded per example from (seed, epoch, rank, worker, position), so they replay exactly too. See
`TrainingImageStream`.

Validation images are read by the reader of `hf-vitvq eval`, `encode` and `pretokenize` (`image_shards`), centre-cropped
as the image processor crops them: `image_shards.validation_batches`.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import PIL.Image
import pyarrow
import torch
from datasets import Features, IterableDataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from hf_vitvq.pixel_conversion import normalize_pixels, to_rgb_array

from .worker_memory import SharedBatchBuffers, freeze_inherited_objects

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Held-out photos of the embedded default (scikit-image's sample photos); the rest are for training.
EMBEDDED_VALIDATION_PHOTOS = ("chelsea", "coffee")
EMBEDDED_FEATURES = Features({"image": ImageFeature(decode=False), "name": datasets.Value("string")})
# Shards whose examples fill a shuffle buffer at once (`datasets`' default `max_buffer_input_shards`): mixes shards
# ordered inside (by class, say) better than one shard at a time, at the cost of a thread hand-off per example.
INTERLEAVED_SHARDS = 10
# Batches each DataLoader worker keeps ready (the DataLoader's `prefetch_factor`).
PREFETCH_BATCHES = 2
# Validation images when `--validation_images` is not set (fewer for small datasets: `default_validation_images`).
DEFAULT_VALIDATION_IMAGES = 32


# ---------------------------------------------------------------------------------------------- sources


def _read_files(paths: list[str]) -> Iterator[dict[str, Any]]:
    """The examples of image files: their path only (the reader opens the file; a path string is also what
    `datasets` encodes as `{"bytes": None, "path": path}` without looking the file up), and the file's name."""
    for path in paths:
        yield {"image": path, "name": Path(path).name}


def _image_paths(folder: str | Path) -> Iterator[Path]:
    """The image files under `folder` (recursively), in the order the file system lists them."""
    return (path for path in Path(folder).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


def first_image_file(folder: str | Path) -> Path | None:
    """One image file under `folder` (the first found: the folder is not listed in full), or None."""
    return next(_image_paths(folder), None)


def image_files(folder: str | Path) -> list[str]:
    """The image files under `folder` (recursively), sorted by path."""
    files = sorted(str(path) for path in _image_paths(folder))
    if not files:
        raise ValueError(f"--train_data_dir {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return files


def file_stream(files: list[str]) -> IterableDataset:
    """The image `files` as a stream with one shard per file, so that each process of a multi-process run reads only
    its own files and the shard order can be shuffled (`load_dataset("imagefolder", streaming=True)` is one shard:
    every rank would read every file)."""
    return IterableDataset.from_generator(_read_files, gen_kwargs={"paths": files}, features=EMBEDDED_FEATURES)


def image_folder_stream(folder: str | Path) -> IterableDataset:
    """Every image file under `folder`: [`file_stream`] of [`image_files`]."""
    return file_stream(image_files(folder))


def default_validation_images(available: int | None) -> int:
    """The validation images when `--validation_images` is not set: 32, or 10% of the `available` examples (at least
    1) when that is fewer; 32 when their number is not known (a stream)."""
    if available is None:
        return DEFAULT_VALIDATION_IMAGES
    return min(DEFAULT_VALIDATION_IMAGES, max(1, available // 10))


def hold_out_count(requested: int | None, source: str, available: int, hint: str = "") -> int:
    """How many of the `available` examples of `source` to hold out for validation: `requested`, or by default
    `default_validation_images(available)`. Raises unless that leaves some to train on."""
    num_validation = default_validation_images(available) if requested is None else requested
    if not 0 < num_validation < available:
        raise ValueError(
            f"--validation_images {num_validation}: {source}; at least one must be held out for validation and one "
            f"left for training{hint}."
        )
    return num_validation


def image_folder_streams(
    folder: str | Path, num_validation: int | None = None
) -> tuple[IterableDataset, IterableDataset, int]:
    """(train stream, validation stream, number of validation files) of the image files under `folder`:
    `num_validation` files (default: `default_validation_images`) spread evenly over the sorted list (a folder sorted
    by class validates on every class) are held out; the others train. Split by file list, not by `take` / `skip` on
    one stream: a skipped stream can no longer shuffle its shard order, and `skip` before the per-process split would
    skip other files on every process."""
    files = image_files(folder)
    num_validation = hold_out_count(num_validation, f"{folder} has {len(files)} image files", len(files))
    held_out = {index * len(files) // num_validation for index in range(num_validation)}
    validation = [path for index, path in enumerate(files) if index in held_out]
    train = [path for index, path in enumerate(files) if index not in held_out]
    return file_stream(train), file_stream(validation), num_validation


@cache
def _embedded_photo_png(name: str, short_side: int) -> bytes:
    from .sample_data import skimage_photos

    [(_, photo)] = skimage_photos((name,))
    scale = short_side / min(photo.size)
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), PIL.Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return buffer.getvalue()


def _embedded_photos(names: list[str], short_side: int) -> Iterator[dict[str, Any]]:
    for name in names:
        yield {"image": {"bytes": _embedded_photo_png(name, short_side), "path": None}, "name": name}


def _embedded_tiles(names: list[str], short_side: int, tile: int) -> Iterator[dict[str, Any]]:
    """Non-overlapping `tile` x `tile` crops of each photo (resized to `short_side`): the validation images."""
    for name in names:
        photo = PIL.Image.open(io.BytesIO(_embedded_photo_png(name, short_side)))
        for top in range(0, photo.height - tile + 1, tile):
            for left in range(0, photo.width - tile + 1, tile):
                buffer = io.BytesIO()
                photo.crop((left, top, left + tile, top + tile)).save(buffer, format="PNG")
                yield {"image": {"bytes": buffer.getvalue(), "path": None}, "name": f"{name}-{top}-{left}"}


def embedded_streams(resolution: int) -> tuple[IterableDataset, IterableDataset]:
    """The default data (no download): scikit-image's colour sample photos. Training: 6 photos (resized so that
    their short side is 4 crops wide, one shard each); validation: tiles of 2 held-out photos at the scale the
    training crops see."""
    from .sample_data import SKIMAGE_PHOTOS

    train_names = [name for name in SKIMAGE_PHOTOS if name not in EMBEDDED_VALIDATION_PHOTOS]
    short_side = 4 * resolution
    train = IterableDataset.from_generator(
        _embedded_photos, gen_kwargs={"names": train_names, "short_side": short_side}, features=EMBEDDED_FEATURES
    )
    validation = IterableDataset.from_generator(
        _embedded_tiles,
        gen_kwargs={"names": list(EMBEDDED_VALIDATION_PHOTOS), "short_side": short_side, "tile": resolution},
        features=EMBEDDED_FEATURES,
    )
    return train, validation


def find_image_column(features: Features | None, requested: str | None) -> str:
    """The column to read images from: `requested` if it exists, else the dataset's only `Image` feature."""
    if features is None:
        if requested is None:
            raise ValueError("The dataset does not declare its features: pass --image_column.")
        return requested
    if requested is not None:
        if requested not in features:
            raise ValueError(f"--image_column {requested!r} is not a column of the dataset: {list(features)}")
        return requested
    image_columns = [name for name, feature in features.items() if isinstance(feature, ImageFeature)]
    if len(image_columns) != 1:
        found = f"{len(image_columns)} Image columns ({image_columns})" if image_columns else "no Image column"
        raise ValueError(f"Found {found} among {list(features)}: pass --image_column NAME.")
    return image_columns[0]


def consecutive_parts(stream: IterableDataset, max_shards: int) -> list[IterableDataset]:
    """The shards of `stream`, in order, as streams of at most `max_shards` consecutive shards. Split in halves,
    recursively: each `shard` call copies the whole file list, so taking the parts one by one would cost more."""
    if stream.n_shards <= max_shards:
        return [stream]
    halves = (stream.shard(num_shards=2, index=index, contiguous=True) for index in range(2))
    return [part for half in halves for part in consecutive_parts(half, max_shards)]


def hold_out_first_shard(stream: IterableDataset, num_validation: int) -> tuple[IterableDataset, IterableDataset]:
    """(train, validation) of a stream in two or more shards: validation is the first `num_validation` examples of
    shard 0, training everything else in the same n shards (shard 0 less those examples). Every process holds out
    the same examples (a `skip` of the whole stream would, after the per-process split, skip each process's own
    first examples), each can still read whole shards of its own, and the shard order can still be shuffled.

    The training stream concatenates parts of at most max(64, n / 64) consecutive shards, a trade-off: each part is
    an `IterableDataset`, which keeps a file descriptor open once torch is imported (one part per shard would exhaust
    the usual limit of 1024 from about a thousand shards on), and `datasets` takes a concatenation apart into single
    shards whenever a process splits or shuffles it, at a cost that grows with the square of each part's size. So
    at most about 200 streams are open at once, and the split costs about 1 s at 4000 shards.
    """
    first_part, *parts = consecutive_parts(stream, max_shards=max(64, -(-stream.n_shards // 64)))
    first, *rest_of_first_part = consecutive_parts(first_part, max_shards=1)
    train = datasets.concatenate_datasets([first.skip(num_validation), *rest_of_first_part, *parts])
    return train, first.take(num_validation)


def as_stream(dataset: datasets.Dataset | IterableDataset) -> IterableDataset:
    """A map-style dataset as a stream, in shards that processes can split; a stream as it is."""
    if isinstance(dataset, datasets.Dataset):
        return dataset.to_iterable_dataset(num_shards=min(64, max(1, len(dataset))))
    return dataset


def load_dataset_split(args: Any, split: str) -> datasets.Dataset | IterableDataset:
    """`split` of `--dataset_name` (with `--dataset_config_name` and `--data_files`), streamed with `--streaming`."""
    return datasets.load_dataset(
        args.dataset_name, args.dataset_config_name, data_files=args.data_files, split=split, streaming=args.streaming
    )


class TrainingData(NamedTuple):
    """What `load_streams` returns: the streams, the column holding the images, how many validation images to read
    from `validation` (its first ones), and how many of `train`'s shards to interleave into a shuffle buffer
    (`TrainingImageStream`'s `interleaved_shards`: 1 for files and the embedded photos, one example per shard)."""

    train: IterableDataset
    validation: IterableDataset
    image_column: str
    validation_images: int
    interleaved_shards: int = INTERLEAVED_SHARDS


def load_streams(data_args: Any, resolution: int, world_size: int = 1) -> TrainingData:
    """The training and validation streams for the data arguments of `train.py`, run on `world_size` processes.

    Validation comes from `--validation_split` when given; otherwise `--validation_images` examples (default:
    `default_validation_images`) are held out of the training data: whole files spread over a `--train_data_dir`,
    the first rows of a map-style dataset, the first examples of the first shard of a streamed dataset
    (`--streaming`; see `hold_out_first_shard`). A stream in one shard holds out its first examples with `take` /
    `skip`, which works on one process only (on more, each process would skip its own first examples and the
    others would train on the held-out ones): there, pass `--validation_split`.
    """
    if data_args.dataset_name is None and data_args.train_data_dir is None:
        train, validation = embedded_streams(resolution)
        num_validation = data_args.validation_images or DEFAULT_VALIDATION_IMAGES
        return TrainingData(train, validation, "image", num_validation, interleaved_shards=1)
    if data_args.train_data_dir is not None:
        train, validation, num_validation = image_folder_streams(data_args.train_data_dir, data_args.validation_images)
        return TrainingData(train, validation, "image", num_validation, interleaved_shards=1)

    train = load_dataset_split(data_args, data_args.train_split)
    image_column = find_image_column(train.features, data_args.image_column)
    num_validation = data_args.validation_images or DEFAULT_VALIDATION_IMAGES
    if data_args.validation_split is not None:
        validation = load_dataset_split(data_args, data_args.validation_split)
    elif isinstance(train, datasets.Dataset):
        source = f"the {data_args.train_split!r} split has {len(train)} rows"
        num_validation = hold_out_count(
            data_args.validation_images, source, len(train), hint=" (or pass --validation_split)"
        )
        validation, train = train.select(range(num_validation)), train.select(range(num_validation, len(train)))
    elif train.n_shards > 1:
        train, validation = hold_out_first_shard(train, num_validation)
    elif world_size > 1:
        raise ValueError(
            f"A streamed dataset in one shard cannot hold out validation images on {world_size} processes (each "
            "would skip its own first examples and train on the held-out ones): pass --validation_split, or "
            "--no_streaming."
        )
    else:
        validation, train = train.take(num_validation), train.skip(num_validation)
    return TrainingData(as_stream(train), as_stream(validation), image_column, num_validation)


# ---------------------------------------------------------------------------------------------- decoding

# Errors PIL raises on files that are not images or do not decode (truncated, zero bytes, pixels out of range).
_DECODING_ERRORS = (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError)
# JPEGs are decoded at reduced scale (`draft_reduction`) only while the crop's source region keeps at least this many
# times the output side, so that the final bicubic resize still downscales by 2x or more. Measured on the 180 shared
# photos (`benchmarks/data_throughput.py`, PSNR of the final crop against the full decode, mean / worst): centre crops
# drafted down to 2x the output side 45.5 / 37.3 dB, closer to the full decode than a Lanczos resize of it is to the
# bicubic one (41.6 / 33.4 dB); drafted down to 1x 35.0 / 25.9 dB, a visible softening.
DRAFT_MIN_OUTPUT_RATIO = 2


def _open_image(value: Any) -> PIL.Image.Image | None:
    """The image of a dataset value (undecoded `{"bytes", "path"}`, raw bytes, or a PIL image, returned as it is),
    opened but not decoded (PIL has read its header only), or None when it is not an image."""
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, dict):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    else:
        source = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else None
    if not source:
        return None
    try:
        return PIL.Image.open(source)
    except _DECODING_ERRORS:
        return None


def _decoded_rgb(image: PIL.Image.Image) -> PIL.Image.Image | None:
    """Decode an opened image (now: a truncated file fails here, not later in the batch) and convert it to RGB with
    the image processor's `to_rgb_array` (16-bit data scaled, transparency composited on white); high-precision pixels
    (16-bit, float) are then rounded to 8 bits, since the streams crop PIL images. None when that fails."""
    try:
        image.load()
        if image.mode == "RGB":  # what `to_rgb_array` would return, without copying the image twice
            return image
        rgb = to_rgb_array(image)
    except _DECODING_ERRORS:
        return None
    return PIL.Image.fromarray(rgb if rgb.dtype == np.uint8 else np.rint(rgb).astype(np.uint8))


def decode_image(value: Any) -> PIL.Image.Image | None:
    """An RGB PIL image from a dataset value (undecoded `{"bytes", "path"}`, a PIL image, or raw bytes), decoded in
    full, or None when it cannot be decoded (truncated file, zero bytes, not an image, pixel values out of range).
    Converted to RGB by the image processor's `to_rgb_array`, then rounded to 8 bits."""
    image = _open_image(value)
    return None if image is None else _decoded_rgb(image)


def draft_reduction(source_side: float, output_side: int) -> int:
    """The scale reduction (1, 2, 4 or 8) at which to decode a JPEG for a crop whose source region's short side is
    `source_side` pixels and whose output is `output_side` pixels: the largest that leaves the region at least
    `DRAFT_MIN_OUTPUT_RATIO` times the output side; 1 (full decode) when even 2 does not."""
    return next((factor for factor in (8, 4, 2) if source_side >= DRAFT_MIN_OUTPUT_RATIO * factor * output_side), 1)


def sample_crop_box(
    size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box `(left, top, right, bottom)` in an image of `size` (width, height): a random area
    (fraction in `scale`, aspect ratio in `ratio`), or the largest centred square when 10 draws do not fit."""
    width, height = size
    area = width * height
    for _ in range(10):  # Python floats: `round` of NumPy scalars costs 10x more
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w, crop_h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
            return left, top, left + crop_w, top + crop_h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode_random_crop(
    value: Any,
    size: int,
    scale: tuple[float, float],
    flip: bool,
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    draft: bool = True,
) -> PIL.Image.Image | None:
    """A random resized crop (`sample_crop_box`, bicubic) of a dataset value, `size` x `size` RGB, mirrored half of
    the time with `flip`; None when the value does not decode. With `draft`, a JPEG file much larger than the crop is
    decoded at 1/2, 1/4 or 1/8 scale (`draft_reduction`; DCT-domain downscaling by `PIL.Image.draft`) and the box is
    scaled to match: the same crop geometry from a fraction of the decoding work. (A PIL image value is already
    decoded, or someone else's to decode: it is cropped at full scale.)"""
    image = _open_image(value)
    if image is None:
        return None
    box = sample_crop_box(image.size, scale, ratio, rng)
    reduction = draft_reduction(min(box[2] - box[0], box[3] - box[1]), size) if draft else 1
    image_scale = 1.0
    if reduction > 1 and image is not value:
        width = image.width
        drafted = image.draft(image.mode, (width // reduction, image.height // reduction))  # None: not a JPEG
        if drafted is not None:
            image_scale = width / drafted[1][2]  # the box of the whole image at the decoded scale
    rgb = _decoded_rgb(image)
    if rgb is None:
        return None
    crop = rgb.resize((size, size), PIL.Image.Resampling.BICUBIC, box=tuple(edge / image_scale for edge in box))
    if flip and rng.random() < 0.5:
        crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def rgb_pixels(image: PIL.Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 pixels of an RGB PIL image: a view of the image's own memory where Pillow exports it (its Arrow
    export, Pillow >= 11.2, for images whose rows lie in one block: 4 bytes per RGB pixel), else a copy."""
    if hasattr(image, "__arrow_c_array__"):
        try:
            pixels = torch.from_dlpack(pyarrow.array(image).values)  # (H * W * 4,), the memory of RGBX pixels
        except ValueError:  # rows in several blocks (large images)
            pixels = None
        if pixels is not None and pixels.numel() == image.height * image.width * 4:
            return pixels.view(image.height, image.width, 4)[..., :3]
    return torch.from_numpy(np.array(image))


def example_name(example: dict[str, Any], image_column: str, fallback: str) -> str:
    """What to call an example in reports: its `name` column, its webdataset `__key__`, the image's file path (an
    undecoded `Image` value), else `fallback`."""
    image = example.get(image_column)
    path = image.get("path") if isinstance(image, dict) else None
    return str(example.get("name") or example.get("__key__") or path or fallback)


def without_image_decoding(dataset: IterableDataset, image_column: str) -> IterableDataset:
    """`dataset` with its `Image` column (if `image_column` is one) left undecoded: the readers decode, and skip
    what fails."""
    features = dataset.features
    if features is not None and image_column in features and isinstance(features[image_column], ImageFeature):
        return dataset.cast_column(image_column, ImageFeature(decode=False))
    return dataset


# ---------------------------------------------------------------------------------------------- DataLoader workers


class _Example(NamedTuple):
    """One image as a reader yields it to the DataLoader, which batches them in the worker (`collate_fn`)."""

    crop: PIL.Image.Image  # a training crop, R x R RGB
    name: str
    worker: int
    position: dict[str, Any]  # the worker's `StreamPosition` right after this example
    skipped: list[str]  # undecodable examples this worker met since its previous image


class _WorkerExamples(torch.utils.data.IterableDataset):
    """The torch dataset a DataLoader runs: in each worker process (in the loading process when there are none), the
    examples of `read(worker_id)`. A `datasets` stream iterated in a worker reads only that worker's shards: `datasets`
    splits them between the workers by itself (shards w, w + W, ... of each epoch's shard order to worker w)."""

    def __init__(self, read: Callable[[int], Iterator[_Example]]) -> None:
        self.read = read

    def __iter__(self) -> Iterator[_Example]:
        worker = torch.utils.data.get_worker_info()
        return self.read(0 if worker is None else worker.id)


def _worker_loader(
    read: Callable[[int], Iterator[_Example]],
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[_Example]], Any],
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader of `read`'s examples in batches made in `num_workers` worker processes (0: this process).

    Not for `accelerator.prepare`: in a multi-process run it shards an iterable dataset again (`datasets`' `shard`, or
    `IterableDatasetShard`, which keeps every `num_processes`-th batch) or dispatches rank 0's batches to all, where
    each process here already reads only its own shards. The training loop moves the batches to its device itself.
    """
    return DataLoader(
        _WorkerExamples(read),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH_BATCHES if num_workers else None,
        worker_init_fn=freeze_inherited_objects,
        # the workers' seeds (unused: the readers seed their own generators) are drawn from this generator instead of
        # the global one, whose state a resumed run restores and must not see advanced
        generator=torch.Generator(),
    )


def _in_turn_from(batches: Iterator[Any], readers: int, first: int) -> Iterator[Any]:
    """The batches of a DataLoader, which takes them from its workers 0, 1, ..., W-1, 0, ... in turn, reordered to
    take them in turn from worker `first` on: each round of `readers` batches rotated by `first`."""
    while True:
        held = list(itertools.islice(batches, first))
        yield from itertools.islice(batches, readers - first)
        yield from held


def _capped_workers(requested: int, dataset: IterableDataset, what: str) -> int:
    """At most one worker per shard of `dataset` (a worker reads whole shards: others would idle), with a warning."""
    num_workers = min(requested, dataset.num_shards)
    if num_workers < requested:
        logger.warning(
            "%s has %d shard(s) and a DataLoader worker reads whole shards: reading it with %d worker(s) instead of "
            "%d (--dataloader_num_workers). Split the data into more files for more.",
            what, dataset.num_shards, num_workers, requested,
        )  # fmt: skip
    return num_workers


# ---------------------------------------------------------------------------------------------- resumable stream


@dataclass
class StreamPosition:
    """Where one reader of a process's stream (a DataLoader worker, or the process itself without workers) is in
    its part of the stream: the epoch, how many raw examples of it were consumed, and the undecodable samples met."""

    epoch: int = 0
    examples_in_epoch: int = 0
    skipped_examples: int = 0  # distinct undecodable samples so far (those of the first epoch: see `_read`)
    skipped_names: list[str] = field(default_factory=list)  # the first few, for the report

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "skipped_names": list(self.skipped_names)}  # once per example: `asdict` costs 10x more


@dataclass
class TrainingBatch:
    """Augmented training images, (B, 3, R, R) float32 pixel values and the names of their examples
    (`example_name`), with where they came from: the DataLoader worker that read them (0 without workers), its
    position right after them, the undecodable samples of its first epoch met on the way, and which of its shared
    batch buffers holds the pixels (`SharedBatchBuffers`; None: none); the training process adds the whole stream's
    state right after them, which a checkpoint taken after training on them must store."""

    pixel_values: torch.Tensor
    names: list[str]
    worker: int
    position: dict[str, Any]
    skipped: list[str]
    buffer: int | None = None
    stream_state: dict[str, Any] | None = None

    def pin_memory(self) -> TrainingBatch:
        """This batch in page-locked memory, for asynchronous copies to a GPU (the DataLoader's `pin_memory`)."""
        return replace(self, pixel_values=self.pixel_values.pin_memory())


def _collate_crops(
    pixel_value_range: tuple[float, float], buffers: SharedBatchBuffers | None, examples: list[_Example]
) -> TrainingBatch:
    """A training batch of crops (in the worker): each crop's pixels (`rgb_pixels`, no copy) normalised to float32
    pixel values in `pixel_value_range` (`normalize_pixels`) straight into its slot of a shared buffer of the
    worker's from `buffers` (a new tensor without)."""
    last = examples[-1]
    shape = (len(examples), 3, last.crop.height, last.crop.width)
    out, buffer = buffers.take(last.worker, shape) if buffers is not None else (torch.empty(shape), None)
    for example, pixel_values in zip(examples, out, strict=True):
        normalize_pixels(rgb_pixels(example.crop).permute(2, 0, 1), pixel_value_range, out=pixel_values)
    return TrainingBatch(
        pixel_values=out,
        names=[example.name for example in examples],
        worker=last.worker,
        position=last.position,
        skipped=[name for example in examples for name in example.skipped],
        buffer=buffer,
    )


class TrainingImageStream:
    """Endless batches of augmented training images for this process, read by DataLoader workers, resumable at any
    batch boundary.

    Exact resume with any number of workers: worker w of W reads its own shards of each epoch (`datasets`' worker
    split of this process's shuffled stream), so its examples are a pure function of (seed, epoch, rank, w), and its
    position is the epoch and how many raw examples of it it consumed; each crop is seeded from (seed, epoch, rank, w,
    index). The DataLoader takes batches from the workers in turn; the stream's state is every worker's position and
    whose turn is next (`state_dict`). A resumed stream restarts each worker at its position, skipping the examples
    it had consumed without decoding them, and takes its first batch from the worker whose turn was next. So the
    batches depend on the number of workers (resume with the number that wrote the state) and, with several, which
    images make up a batch depends on the batch size.

    Args:
        dataset: the full training stream (before sharding and shuffling).
        image_column: column holding images.
        pixel_value_range: the range 0..255 pixels are mapped onto (`config.pixel_value_range`).
        resolution: side of the square crops.
        seed: shuffle and augmentation seed (the same on every process).
        rank, world_size: this process and the number of processes; each reads a disjoint part.
        shuffle_buffer_size: 0 disables shuffling (each worker has a buffer of this size).
        crop_scale, flip: RandomResizedCrop area range and horizontal flips.
        max_consecutive_failures: raise after this many samples in a row of one worker fail to decode (a stream of
            no images at all would otherwise loop forever).
        num_workers: DataLoader worker processes that read, decode, crop and normalise (0: the process that iterates
            `batches`); at most the number of shards of this process's stream, since a worker reads whole shards.
        draft: decode JPEGs much larger than the crop at reduced scale (see `decode_random_crop`).
        interleaved_shards: shards of a worker whose examples fill its shuffle buffer at once (`datasets`'
            `max_buffer_input_shards`). 1 for streams of one example per shard (image files), where the shard order
            already mixes everything and interleaving would only cost (0.1-0.2 ms per example on 2 cores).
    """

    def __init__(
        self,
        dataset: IterableDataset,
        image_column: str,
        pixel_value_range: tuple[float, float],
        resolution: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer_size: int = 1000,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        flip: bool = True,
        max_consecutive_failures: int = 100,
        num_workers: int = 0,
        draft: bool = True,
        interleaved_shards: int = INTERLEAVED_SHARDS,
    ) -> None:
        self.source = without_image_decoding(dataset, image_column)  # we decode, and skip failures
        self.image_column = image_column
        self.pixel_value_range = pixel_value_range
        self.resolution = resolution
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer_size = shuffle_buffer_size
        self.crop_scale = crop_scale
        self.flip = flip
        self.max_consecutive_failures = max_consecutive_failures
        self.draft = draft
        self.interleaved_shards = interleaved_shards
        self.dataset = self.epoch_stream(0)
        self.num_workers = _capped_workers(num_workers, self.dataset, f"The training stream of process {rank}")
        self.positions = [StreamPosition() for _ in range(max(1, self.num_workers))]  # one per worker
        self.next_worker = 0  # the worker whose batch comes next

    def epoch_stream(self, epoch: int) -> IterableDataset:
        """This process's part of the stream in `epoch`: its shard order and shuffle buffer seeded from (seed,
        epoch), the same on every process, then split between the processes. A new stream for each epoch rather than
        `set_epoch`: a `datasets` stream keeps its epoch in shared memory, which would couple the workers' epochs."""
        dataset = self.source
        if self.shuffle_buffer_size > 0:
            epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            dataset = dataset.shuffle(
                seed=epoch_seed, buffer_size=self.shuffle_buffer_size, max_buffer_input_shards=self.interleaved_shards
            )
        if self.world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=self.rank, world_size=self.world_size)
        return dataset

    def batches(self, batch_size: int, pin_memory: bool = False) -> Iterator[TrainingBatch]:
        """Endless batches from the current state on, each made by one worker, the workers in turn. Each carries the
        stream's state right after it (`stream_state`). `pin_memory`: in page-locked memory, for asynchronous copies
        to a GPU. Closing the iterator stops the workers."""
        read = partial(self._read, positions=copy.deepcopy(self.positions))
        # a worker has PREFETCH_BATCHES batches in flight; this generator's caller holds one or two more
        buffers = SharedBatchBuffers(self.num_workers, PREFETCH_BATCHES + 2) if self.num_workers else None
        collate = partial(_collate_crops, self.pixel_value_range, buffers)
        loader = _worker_loader(read, batch_size, self.num_workers, collate, pin_memory)
        for batch in _in_turn_from(iter(loader), len(self.positions), self.next_worker):
            if buffers is not None:
                buffers.release_when_collected(batch.pixel_values, batch.worker, batch.buffer)
            self._record(batch)
            batch.stream_state = self.state_dict()
            yield batch

    def _read(self, worker: int, positions: list[StreamPosition]) -> Iterator[_Example]:
        """The crops of `worker`'s part of the stream from `positions[worker]` on, epoch after epoch (in the worker).

        An undecodable sample is skipped; it is counted and named in the first epoch only, in which the workers of
        all processes together read every sample once (decoding is deterministic: later epochs fail on the same)."""
        position = positions[worker]
        failures: list[str] = []  # the undecodable samples since the last decodable one
        skipped: list[str] = []  # first-epoch undecodable samples since the last yielded crop
        while True:
            read_any = False
            for example in itertools.islice(iter(self.epoch_stream(position.epoch)), position.examples_in_epoch, None):
                read_any = True
                epoch, index = position.epoch, position.examples_in_epoch
                position.examples_in_epoch += 1
                name = example_name(example, self.image_column, str(index))
                rng = np.random.default_rng([self.seed, epoch, self.rank, worker, index])
                crop = decode_random_crop(example[self.image_column], self.resolution, self.crop_scale, self.flip,
                                          rng, draft=self.draft)  # fmt: skip
                if crop is not None:
                    failures = []
                    yield _Example(crop, name, worker, position.to_dict(), skipped)
                    skipped = []
                    continue
                failures.append(name)
                if len(failures) >= self.max_consecutive_failures:
                    reader = f", DataLoader worker {worker}" if self.num_workers else ""
                    raise ValueError(
                        f"{len(failures)} training samples in a row could not be decoded on process {self.rank}"
                        f"{reader} (e.g. {', '.join(failures[:5])}): check the data and --image_column, or raise "
                        "--max_consecutive_decode_failures."
                    )
                if epoch == 0:
                    position.skipped_examples += 1
                    if len(position.skipped_names) < 20:
                        position.skipped_names.append(name)
                    skipped.append(name)
            if not read_any and position.examples_in_epoch == 0:
                reader = f" (DataLoader worker {worker}, epoch {position.epoch})" if self.num_workers else ""
                raise ValueError(
                    f"The training stream of process {self.rank}{reader} is empty: its shards hold no examples. Where "
                    "validation images are held out of the first shard, that shard trains only on what lies beyond "
                    "them: pass --validation_split or fewer --validation_images, or run on fewer processes or "
                    "DataLoader workers."
                )
            position.epoch += 1
            position.examples_in_epoch = 0

    def _record(self, batch: TrainingBatch) -> None:
        """Take the state after `batch` (in the training process), and warn about the undecodable samples it met."""
        self.positions[batch.worker] = StreamPosition(**batch.position)
        self.next_worker = (batch.worker + 1) % len(self.positions)
        total = self.skipped_examples
        for count, name in enumerate(batch.skipped, start=total - len(batch.skipped) + 1):
            logger.warning("Skipped an undecodable sample (%s); %d so far.", name, count)

    @property
    def skipped_examples(self) -> int:
        """Distinct undecodable samples in the batches taken so far, all workers together."""
        return sum(position.skipped_examples for position in self.positions)

    @property
    def skipped_names(self) -> list[str]:
        """The first few of them, worker after worker."""
        return [name for position in self.positions for name in position.skipped_names]

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "next_worker": self.next_worker,
            "workers": [position.to_dict() for position in self.positions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "workers" not in state:
            raise ValueError(
                f"The data stream's state {sorted(state)} was written before the stream was read by DataLoader "
                "workers, by a version that this one cannot resume: resume with that version, or start from scratch."
            )
        written_by = state["num_workers"]
        if written_by != self.num_workers:
            raise ValueError(
                f"The data stream's state was written by {written_by} DataLoader worker(s) per process and this run "
                f"reads the stream with {self.num_workers}: each worker resumes its own part of it, so resume with "
                f"--dataloader_num_workers {written_by}."
            )
        self.positions = [StreamPosition(**position) for position in state["workers"]]
        self.next_worker = state["next_worker"]
