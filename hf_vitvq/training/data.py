"""Training data: image streams from any `datasets` source, sharded per process, shuffled, resumable exactly.

Exact resume through a shuffle buffer: `IterableDataset.state_dict()` drops the buffered examples, so instead the
stream is made a pure function of (seed, epoch, rank) — `shuffle(seed)` plus `set_epoch(epoch)` reproduce the
same order — and the position is the number of raw examples this rank has consumed in the current epoch. On
resume the stream is rebuilt and that many examples are skipped without decoding them (images are read as
undecoded bytes and decoded by us, which is also how undecodable samples are caught, counted and skipped).
Random crops and flips are seeded per example from (seed, epoch, rank, position), so they replay exactly too.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import PIL.Image
import torch
from datasets import Features, IterableDataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node

from hf_vitvq import ViTVQImageProcessor
from hf_vitvq.image_processing_vitvq import normalize_pixels, to_rgb_array

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Held-out photos of the embedded default (scikit-image's sample photos); the rest are for training.
EMBEDDED_VALIDATION_PHOTOS = ("chelsea", "coffee")
EMBEDDED_FEATURES = Features({"image": ImageFeature(decode=False), "name": datasets.Value("string")})
# Validation images when `--validation_images` is not set (fewer for small datasets: `default_validation_images`).
DEFAULT_VALIDATION_IMAGES = 32


# ---------------------------------------------------------------------------------------------- sources


def _read_files(paths: list[str]) -> Iterator[dict[str, Any]]:
    for path in paths:
        yield {"image": {"bytes": Path(path).read_bytes(), "path": path}, "name": Path(path).name}


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


class TrainingData(NamedTuple):
    """What `load_streams` returns: the streams, the column holding the images, and how many validation images to
    read from `validation` (its first ones)."""

    train: IterableDataset
    validation: IterableDataset
    image_column: str
    validation_images: int


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
        return TrainingData(train, validation, "image", data_args.validation_images or DEFAULT_VALIDATION_IMAGES)
    if data_args.train_data_dir is not None:
        train, validation, num_validation = image_folder_streams(data_args.train_data_dir, data_args.validation_images)
        return TrainingData(train, validation, "image", num_validation)

    def load(split: str) -> datasets.Dataset | IterableDataset:
        return datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            data_files=data_args.data_files,
            split=split,
            streaming=data_args.streaming,
        )

    train = load(data_args.train_split)
    image_column = find_image_column(train.features, data_args.image_column)
    num_validation = data_args.validation_images or DEFAULT_VALIDATION_IMAGES
    if data_args.validation_split is not None:
        validation = load(data_args.validation_split)
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


def decode_image(value: Any) -> PIL.Image.Image | None:
    """An RGB PIL image from a dataset value (undecoded `{"bytes", "path"}`, a PIL image, or raw bytes), or None
    when it cannot be decoded (truncated file, zero bytes, not an image, pixel values out of range). Converted to RGB
    by the image processor's `to_rgb_array` (16-bit data scaled, transparency composited on white); high-precision
    pixels (16-bit, float) are then rounded to 8 bits, since the training stream crops PIL images."""
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, (bytes, bytearray)):
            image = PIL.Image.open(io.BytesIO(value))
        elif isinstance(value, dict) and value.get("bytes"):
            image = PIL.Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = PIL.Image.open(value["path"])
        else:
            return None
        image.load()  # decode now: a truncated file fails here, not later in the batch
        rgb = to_rgb_array(image)
        return PIL.Image.fromarray(rgb if rgb.dtype == np.uint8 else np.rint(rgb).astype(np.uint8))
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        return None


def random_resized_crop(
    image: PIL.Image.Image,
    size: int,
    scale: tuple[float, float],
    flip: bool,
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> PIL.Image.Image:
    """Crop a random area (fraction in `scale`, aspect ratio in `ratio`) and resize it to `size` x `size`; with
    `flip`, mirror it half of the time. Falls back to the largest centred square when no sample fits."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        crop_w, crop_h = round(np.sqrt(target_area * aspect)), round(np.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
            break
    else:
        crop_w = crop_h = min(width, height)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
    crop = image.resize((size, size), PIL.Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if flip and rng.random() < 0.5:
        crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


# ---------------------------------------------------------------------------------------------- resumable stream


@dataclass
class StreamPosition:
    """Where one process is in its stream: the epoch and how many raw examples of it were consumed."""

    epoch: int = 0
    examples_in_epoch: int = 0
    skipped_examples: int = 0  # distinct undecodable samples so far (those of the first epoch: see `_record_skip`)
    skipped_names: list[str] = field(default_factory=list)  # the first few, for the report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingBatch:
    """Augmented pixel values (B, 3, R, R), the names of their examples, and the stream position after them."""

    pixel_values: torch.Tensor
    names: list[str]
    position: dict[str, Any]


def prefetch(iterator: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run `iterator` in a background thread, `depth` items ahead; its exceptions are raised here. Closing the
    returned generator stops the thread."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer
            put(error)
        put(done)

    threading.Thread(target=produce, daemon=True, name="prefetch").start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class TrainingImageStream:
    """Endless batches of augmented training images for this process, resumable at any batch boundary.

    Args:
        dataset: the full training stream (before sharding and shuffling).
        image_column: column holding images.
        pixel_value_range: the range 0..255 pixels are mapped onto (`config.pixel_value_range`).
        resolution: side of the square crops.
        seed: shuffle and augmentation seed (the same on every process).
        rank, world_size: this process and the number of processes; each reads a disjoint part.
        shuffle_buffer_size: 0 disables shuffling.
        crop_scale, flip: RandomResizedCrop area range and horizontal flips.
        max_consecutive_failures: raise after this many samples in a row fail to decode (a stream of no images at
            all would otherwise loop forever).
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
    ) -> None:
        features = dataset.features
        if features is not None and image_column in features and isinstance(features[image_column], ImageFeature):
            dataset = dataset.cast_column(image_column, ImageFeature(decode=False))  # we decode, and skip failures
        if shuffle_buffer_size > 0:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size) if world_size > 1 else dataset
        self.image_column = image_column
        self.pixel_value_range = pixel_value_range
        self.resolution = resolution
        self.seed = seed
        self.rank = rank
        self.crop_scale = crop_scale
        self.flip = flip
        self.max_consecutive_failures = max_consecutive_failures
        self.failures_in_a_row = 0  # undecodable samples since the last decodable one
        self.first_failures: list[str] = []  # the names of the first few of them
        self.position = StreamPosition()

    def _examples(self) -> Iterator[tuple[Any, str, int, int]]:
        """(image value, name, epoch, index in epoch) from the current position on, epoch after epoch."""
        while True:
            self.dataset.set_epoch(self.position.epoch)
            examples = itertools.islice(iter(self.dataset), self.position.examples_in_epoch, None)
            produced = False
            for example in examples:
                produced = True
                epoch, index = self.position.epoch, self.position.examples_in_epoch
                self.position.examples_in_epoch += 1
                name = example.get("name") or example.get("__key__") or index  # webdataset samples have keys
                yield example[self.image_column], str(name), epoch, index
            if not produced and self.position.examples_in_epoch == 0:
                raise ValueError(
                    f"The training stream of process {self.rank} is empty: its shards hold no examples. Where "
                    "validation images are held out of the first shard, that shard trains only on what lies beyond "
                    "them: pass --validation_split or fewer --validation_images, or run on fewer processes."
                )
            self.position.epoch += 1
            self.position.examples_in_epoch = 0

    def _decode_and_augment(self, example: tuple[Any, str, int, int]) -> PIL.Image.Image | None:
        """The augmented crop of one raw example, or None if it does not decode. A pure function of the example
        and its place in the stream (the crop is seeded from it), so it may run in any thread."""
        value, _, epoch, index = example
        image = decode_image(value)
        if image is None:
            return None
        rng = np.random.default_rng([self.seed, epoch, self.rank, index])
        return random_resized_crop(image, self.resolution, self.crop_scale, self.flip, rng)

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[TrainingBatch]:
        """Endless batches; `num_workers` threads decode and crop (0: this thread). Each batch carries the stream
        position right after it, which is what a checkpoint taken after training on it must store."""
        examples = self._examples()
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            prepare = pool.map if num_workers > 0 else map
            while True:
                crops, names = [], []
                while len(crops) < batch_size:
                    # each raw example gives at most one crop: reading `missing` of them never overshoots
                    raw = [next(examples) for _ in range(batch_size - len(crops))]
                    for example, crop in zip(raw, prepare(self._decode_and_augment, raw), strict=True):
                        if crop is None:
                            self._record_skip(example[1], epoch=example[2])
                        else:
                            self.failures_in_a_row, self.first_failures = 0, []
                            crops.append(crop)
                            names.append(example[1])
                # (B, R, R, 3) uint8 -> (B, 3, R, R) float32 in pixel_value_range
                pixels = torch.from_numpy(np.stack([np.asarray(crop) for crop in crops])).permute(0, 3, 1, 2)
                pixel_values = normalize_pixels(pixels.contiguous(), self.pixel_value_range)
                yield TrainingBatch(pixel_values, names, copy.deepcopy(self.position.to_dict()))

    def _record_skip(self, name: str, epoch: int) -> None:
        """Count an undecodable sample of `epoch`, warn about it, and raise once `max_consecutive_failures` samples
        in a row failed. Each sample is counted and named once: in the first epoch, in which the processes together read
        every sample once (decoding is deterministic: the later epochs fail on the same samples)."""
        self.failures_in_a_row += 1
        if len(self.first_failures) < 5:
            self.first_failures.append(name)
        if self.failures_in_a_row >= self.max_consecutive_failures:
            raise ValueError(
                f"{self.failures_in_a_row} training samples in a row could not be decoded on process {self.rank} "
                f"(e.g. {', '.join(self.first_failures)}): check the data and --image_column, or raise "
                "--max_consecutive_decode_failures."
            )
        if epoch > 0:
            return
        self.position.skipped_examples += 1
        if len(self.position.skipped_names) < 20:
            self.position.skipped_names.append(name)
        logger.warning("Skipped an undecodable sample (%s); %d so far.", name, self.position.skipped_examples)

    def state_dict(self) -> dict[str, Any]:
        return self.position.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = StreamPosition(**state)


def validation_batches(
    dataset: IterableDataset, image_column: str, processor: ViTVQImageProcessor, limit: int, batch_size: int
) -> list[torch.Tensor]:
    """The first `limit` decodable validation images, resized and centre-cropped by `processor`, in batches."""
    features = dataset.features
    if features is not None and image_column in features and isinstance(features[image_column], ImageFeature):
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    images = []
    for example in dataset:
        image = decode_image(example[image_column])
        if image is not None:
            images.append(image)
        if len(images) == limit:
            break
    if not images:
        raise ValueError("The validation set has no decodable image.")
    if len(images) < limit:
        logger.warning("Validating on %d images: the validation set has no more decodable ones (asked: %d).",
                       len(images), limit)  # fmt: skip
    return [
        processor(images[start : start + batch_size], return_tensors="pt").pixel_values
        for start in range(0, len(images), batch_size)
    ]
