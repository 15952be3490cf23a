"""The reader of images for everything but training: validation during training ([`validation_batches`]),
`hf-vitvq eval`, `encode`, `reconstruct` and `pretokenize`. Images are read in shards, decoded and centre-cropped in
`DataLoader` worker processes (or in the reading process) while the model works on the previous batches.

A source (image files, a map-style `datasets.Dataset`, a streamed `datasets.IterableDataset`) is cut into shards
([`FileShard`], [`RowShard`], [`StreamShard`]); one worker reads a shard whole, in order, and its batches never mix
shards, the last one saying so ([`ShardBatch.last`]): the consumer can then write one output per shard, and the
output of a shard depends on nothing but the shard (not on the number of processes or workers, nor on what ran
before), which makes `pretokenize` resumable shard by shard. Processes split a source by shards too (every n-th
shard each: `pretokenize`, `eval`). (A `datasets.IterableDataset` handed to a `DataLoader` splits its shards over the
workers the same way, but its batches do not say where one shard ends.)

Crops are the image processor's own: [`ViTVQImageProcessor.resize`] (bicubic, short side to the model's image size)
and [`ViTVQImageProcessor.center_crop`] on the decoded 8-bit image, and pixel values come from a table of what the
processor maps each 8-bit value to ([`pixel_value_table`]), so the model sees bit for bit what
`model.encode(processor(image).pixel_values)` sees. Workers send uint8 crops (4x fewer bytes than float32); the table
lookup runs on the model's device. Images are decoded in full: `PIL.Image.draft` (DCT-domain downscaling of large
JPEGs) under the training stream's rule (`data.draft_reduction`) decoded the 32x32 crops of `../shared/data/photos`
2.6-3.5x faster but moved pixels by up to 14 levels (38 dB PSNR at worst), which breaks that equality
(benchmarks/RESULTS.md, `pretokenize_throughput.py --draft_check`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets
import numpy as np
import PIL.Image
import torch
from transformers.image_utils import SizeDict

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.precision import NATIVE_BF16_CPU_FLAGS, has_native_bf16, inference_autocast
from hf_vitvq.token_files import token_shape

from .data import (
    IMAGE_SUFFIXES,
    PREFETCH_BATCHES,
    decode_image,
    find_image_column,
    image_files,
    load_dataset_split,
    without_image_decoding,
)
from .worker_memory import freeze_inherited_objects

logger = logging.getLogger(__name__)

# The views of each image that `--augment` encodes, in order. `ten_crop` follows LlamaGen's and TiTok's
# pre-tokenizers: resize the short side to int(1.1 * size), centre-crop that square, then torchvision's TenCrop
# (the four corners and the centre, then the same five mirrored).
FIVE_CROPS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "none": ("center",),
    "flip": ("center", "center_flipped"),
    "ten_crop": FIVE_CROPS + tuple(f"{name}_flipped" for name in FIVE_CROPS),
}
TEN_CROP_SCALE = 1.1
MIXED_PRECISION_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- models


def load_tokenizer(
    name_or_path: str, device: torch.device | str = "cpu", allow_preset: bool = False
) -> tuple[ViTVQModel, ViTVQImageProcessor]:
    """A trained model (a folder saved with `save_pretrained`, or a Hub id) in eval mode on `device`, and its image
    processor (`ViTVQImageProcessor.for_config` when the folder has none). A preset name gives an untrained model
    with `allow_preset`, else a `ValueError`: its weights are random, different in every run, so its token ids mean
    nothing elsewhere."""
    if name_or_path in ViTVQConfig.presets():
        if allow_preset:
            model = ViTVQModel(ViTVQConfig.from_preset(name_or_path)).to(device).eval()
            return model, ViTVQImageProcessor.for_config(model.config)
        raise ValueError(
            f"{name_or_path!r} is a preset, whose weights are random (and different in every run): pass a folder "
            "saved with save_pretrained or a Hub model id."
        )
    model = ViTVQModel.from_pretrained(name_or_path).to(device).eval()
    try:
        processor = ViTVQImageProcessor.from_pretrained(name_or_path)
    except OSError:  # saved without its processor (model.save_pretrained alone)
        logger.info("%s has no preprocessor_config.json: using ViTVQImageProcessor.for_config.", name_or_path)
        processor = ViTVQImageProcessor.for_config(model.config)
    return model, processor


def check_discrete(config: ViTVQConfig) -> None:
    """Raise a `ValueError` for a model without token ids (`quantizer_type="kl"`: continuous latents)."""
    if config.quantizer_type == "kl":
        raise ValueError(
            "The model has a 'kl' quantizer: its tokens are continuous latents, not ids, so there are no token ids "
            "to write. Use `hf-vitvq reconstruct`, or model.encode in Python."
        )


def inference_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of `--mixed_precision` (`no`, `bf16`, `fp16`) on `device`. Raises a `ValueError` for bf16
    where it is not native (see `hf_vitvq.precision`: emulated bf16 ran 50-100x slower than float32) and for fp16
    off CUDA."""
    if mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ValueError(f"--mixed_precision must be one of {list(MIXED_PRECISION_DTYPES)}, got {mixed_precision!r}.")
    if mixed_precision == "bf16" and not has_native_bf16(device):
        raise ValueError(
            f"--mixed_precision bf16 needs a CUDA GPU with bf16 or a CPU with native bf16 "
            f"({' / '.join(NATIVE_BF16_CPU_FLAGS)}); {device} has none (emulated bf16 is 50-100x slower than "
            "float32): use --mixed_precision no."
        )
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--mixed_precision fp16 needs a CUDA GPU, not {device}: use --mixed_precision no.")
    return MIXED_PRECISION_DTYPES[mixed_precision]


def cores_per_process() -> int:
    """The CPU cores this process may use, shared with the other local processes of a multi-process launch."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_num_workers(device: torch.device) -> int:
    """Decoding workers when `--dataloader_num_workers` is not set: with the model on the CPU, half the cores (the
    model gets the others: see `cpu_threads`); else the cores, at most 8."""
    cores = cores_per_process()
    return max(1, cores // 2) if device.type == "cpu" else max(1, min(8, cores))


@contextlib.contextmanager
def cpu_threads(device: torch.device, num_workers: int) -> Iterator[None]:
    """With the model on the CPU and `num_workers` decoding workers, run the model on the cores the workers leave
    (at least one thread), unless `OMP_NUM_THREADS` says otherwise; torch's thread count is restored afterwards.
    Oversubscribed, the model's threads wait for each other: on 2 busy cores, `tiny` encoded 5-50x slower with 2
    threads than with 1. (A large model keeps its workers mostly idle: `OMP_NUM_THREADS=2` then gives S-128 both
    cores of a 2-core machine.)"""
    previous = torch.get_num_threads()
    if device.type == "cpu" and num_workers > 0 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, cores_per_process() - num_workers))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------- crops


def pixel_value_table(processor: ViTVQImageProcessor) -> torch.Tensor:
    """(3, 256) float32: the pixel value `processor` gives each 8-bit value of each channel (its rescaling and
    normalisation, computed by the processor itself)."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3): one row of all values
    values = processor(ramp, do_resize=False, do_center_crop=False, return_tensors="pt").pixel_values  # (1, 3, 1, 256)
    return values[0, :, 0, :].float().contiguous()


def to_pixel_values(crops: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 crops -> (B, 3, H, W) float32 pixel values, `table[c, crops[:, c]]` for each channel c (on
    the device of `crops`; `table` comes from [`pixel_value_table`])."""
    table = table.to(crops.device)
    offsets = torch.arange(3, device=crops.device).view(1, 3, 1, 1) * 256  # row c of the flattened table
    return table.flatten()[crops.long() + offsets]


def resized_center_crop(image: np.ndarray, processor: ViTVQImageProcessor, size: int) -> np.ndarray:
    """(3, H, W) uint8 -> (3, size, size) uint8: `processor`'s resize of the short side to `size` (its resampling
    filter) and its centre crop, as `processor(image)` does them."""
    resized = processor.resize(image, SizeDict(shortest_edge=size), resample=processor.resample)
    return processor.center_crop(resized, SizeDict(height=size, width=size))


def five_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    """torchvision's `FiveCrop(size)` of a (3, H, W) image: top left, top right, bottom left, bottom right, centre."""
    height, width = image.shape[1:]
    top, left = int(round((height - size) / 2)), int(round((width - size) / 2))
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top, left)]
    return [image[:, y : y + size, x : x + size] for y, x in corners]


def crop_views(image: PIL.Image.Image, processor: ViTVQImageProcessor, size: int, augment: str) -> np.ndarray:
    """The (V, 3, size, size) uint8 views of an RGB image that `augment` names (see `AUGMENTATIONS`)."""
    array = np.moveaxis(np.asarray(image), -1, 0)  # (H, W, 3) -> (3, H, W)
    if augment == "ten_crop":
        large = int(TEN_CROP_SCALE * size)
        crops = five_crops(resized_center_crop(array, processor, large), size)
        views = crops + [crop[:, :, ::-1] for crop in crops]
    else:
        center = resized_center_crop(array, processor, size)
        views = [center, center[:, :, ::-1]] if augment == "flip" else [center]
    return np.stack(views)


# ---------------------------------------------------------------------------------------------- shards


@dataclass
class Example:
    """One example of a shard: its key, its undecoded image and its label (None without labels)."""

    key: str
    image: Any
    label: Any = None


class ImageShard(Protocol):
    """A part of a source that one worker reads whole: `index` names its output, `examples()` reads it in order,
    `num_examples` is its length where known without reading it (None for streams)."""

    index: int

    @property
    def num_examples(self) -> int | None: ...

    def examples(self) -> Iterator[Example]: ...


@dataclass
class FileShard:
    """Image files; keys are given (e.g. paths relative to a folder), labels optional."""

    index: int
    paths: list[str]
    keys: list[str]
    labels: list[int] | None = None

    @property
    def num_examples(self) -> int:
        return len(self.paths)

    def examples(self) -> Iterator[Example]:
        labels = self.labels or [None] * len(self.paths)
        for path, key, label in zip(self.paths, self.keys, labels, strict=True):
            yield Example(key, {"path": path, "bytes": None}, label)


@dataclass
class RowShard:
    """Rows `[start, stop)` of a map-style dataset; the key of a row is its index in the dataset."""

    index: int
    dataset: datasets.Dataset
    start: int
    stop: int
    image_column: str
    label_column: str | None = None

    @property
    def num_examples(self) -> int:
        return self.stop - self.start

    def examples(self) -> Iterator[Example]:
        rows = self.dataset.select(range(self.start, self.stop))
        for offset, row in enumerate(rows):
            label = row[self.label_column] if self.label_column else None
            yield Example(str(self.start + offset), row[self.image_column], label)


@dataclass
class StreamShard:
    """Shard `index` of the `num_shards` shards of a stream (`num_shards=1`: the whole stream). The key of an example
    is its value in `key_column` when given and set, else its `__key__` (webdataset) when it has one, else its
    position: in the stream (one shard) or `"{index}-{n}"`."""

    index: int
    stream: datasets.IterableDataset
    num_shards: int
    image_column: str
    label_column: str | None = None
    key_column: str | None = None

    @property
    def num_examples(self) -> None:
        return None

    def examples(self) -> Iterator[Example]:
        stream = self.stream
        if self.num_shards > 1:  # taken here, in the worker: each `shard` call copies the stream's whole file list
            stream = stream.shard(num_shards=self.num_shards, index=self.index, contiguous=True)
        # `iter` reads the whole shard; `for row in stream` in a DataLoader worker would split it between the workers
        rows = (dict(zip(batch, values, strict=True)) for batch in stream.iter(batch_size=64) for values in
                zip(*batch.values(), strict=True))  # fmt: skip
        for position, row in enumerate(rows):
            named = row.get(self.key_column) if self.key_column else None
            key = named or row.get("__key__") or (str(position) if self.num_shards == 1 else f"{self.index}-{position}")
            label = row[self.label_column] if self.label_column else None
            yield Example(key, row[self.image_column], label)


def file_shards(
    paths: Sequence[str], keys: Sequence[str], shard_size: int, labels: Sequence[int] | None = None
) -> list[FileShard]:
    """`paths` (with their `keys` and `labels`) in shards of `shard_size` consecutive files."""
    return [
        FileShard(
            index,
            list(paths[start : start + shard_size]),
            list(keys[start : start + shard_size]),
            None if labels is None else list(labels[start : start + shard_size]),
        )
        for index, start in enumerate(range(0, len(paths), shard_size))
    ]


def load_image_dataset(args: Any) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """The `--split` of `--dataset_name` (with `--dataset_config_name` and `--data_files`), streamed unless
    `--no_streaming` (`args.streaming`), and its image column (`--image_column`, else the one `Image` feature)."""
    dataset = load_dataset_split(args, args.split)
    return dataset, find_image_column(dataset.features, args.image_column)


def dataset_shards(
    dataset: datasets.Dataset | datasets.IterableDataset,
    image_column: str,
    label_column: str | None,
    shard_size: int,
    max_samples: int | None = None,
    key_column: str | None = None,
) -> list[ImageShard]:
    """The shards of a dataset: a map-style dataset in shards of `shard_size` rows; a stream in its own shards (one per
    file, `shard_size` does not apply), or whole when it has one shard or `max_samples` is set (its first
    `max_samples` examples). `key_column`: a column that names the examples of a stream (see [`StreamShard`])."""
    dataset = without_image_decoding(dataset, image_column)  # the workers decode, and skip what fails
    if isinstance(dataset, datasets.Dataset):
        num_rows = len(dataset) if max_samples is None else min(len(dataset), max_samples)
        return [
            RowShard(index, dataset, start, min(start + shard_size, num_rows), image_column, label_column)
            for index, start in enumerate(range(0, num_rows, shard_size))
        ]
    if max_samples is not None:
        return [StreamShard(0, dataset.take(max_samples), 1, image_column, label_column, key_column)]
    num_shards = dataset.n_shards
    return [
        StreamShard(index, dataset, num_shards, image_column, label_column, key_column) for index in range(num_shards)
    ]


def collect_image_files(inputs: Sequence[str]) -> list[str]:
    """The image files that `inputs` name, in order, each once: files as given, folders searched recursively for
    image files (sorted), glob patterns (`**` recursive) expanded and sorted. Raises a `FileNotFoundError` for an
    input that names nothing and a `ValueError` for a folder without images."""
    files: dict[str, None] = {}  # ordered, without repeats (a file given and inside a folder given)
    for item in inputs:
        if Path(item).is_dir():
            try:
                found = image_files(item)
            except ValueError as error:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise ValueError(f"{item}: the folder holds no image files ({suffixes}).") from error
        elif Path(item).is_file():
            found = [item]
        elif glob.has_magic(item) and (matches := sorted(glob.glob(item, recursive=True))):
            found = [match for match in matches if Path(match).is_file()]
        elif glob.has_magic(item):
            raise FileNotFoundError(f"{item}: the pattern matches no file.")
        else:
            raise FileNotFoundError(f"{item}: no such file or folder.")
        files.update(dict.fromkeys(found))
    return list(files)


# ---------------------------------------------------------------------------------------------- batches


@dataclass
class ShardBatch:
    """Up to `batch_size` decodable images of one shard, in order: their keys, labels (None without labels) and the
    (len(keys) * V, 3, S, S) uint8 crops, the V views of each image consecutive; `skipped` lists the keys of the
    undecodable examples met since the previous batch; `last` marks the shard's last batch (possibly empty)."""

    shard: int
    keys: list[str]
    labels: list[Any] | None
    crops: torch.Tensor
    skipped: list[str]
    last: bool

    def pin_memory(self) -> ShardBatch:
        """Called by a `DataLoader` with `pin_memory=True`."""
        self.crops = self.crops.pin_memory()
        return self


class ShardBatchDataset(torch.utils.data.IterableDataset):
    """[`ShardBatch`]es of `shards`, each worker of a `DataLoader` reading every `num_workers`-th shard (all of them
    without workers). `augment` is a key of `AUGMENTATIONS`; crops are `image_size` squares made with `processor`."""

    def __init__(
        self,
        shards: Sequence[ImageShard],
        processor: ViTVQImageProcessor,
        image_size: int,
        augment: str = "none",
        batch_size: int = 32,
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {list(AUGMENTATIONS)}, got {augment!r}.")
        self.shards = list(shards)
        self.processor = processor
        self.image_size = image_size
        self.augment = augment
        self.batch_size = batch_size

    @property
    def num_examples(self) -> int | None:
        """The examples of all the shards (undecodable ones included), or None when a shard cannot say (a stream)."""
        sizes = [shard.num_examples for shard in self.shards]
        return None if None in sizes else sum(sizes)

    def __iter__(self) -> Iterator[ShardBatch]:
        worker = torch.utils.data.get_worker_info()
        shards = self.shards if worker is None else self.shards[worker.id :: worker.num_workers]
        for shard in shards:
            yield from self.shard_batches(shard)

    def shard_batches(self, shard: ImageShard) -> Iterator[ShardBatch]:
        keys, labels, views, skipped = [], [], [], []
        for example in shard.examples():
            image = decode_image(example.image)
            if image is None:
                skipped.append(example.key)
                continue
            keys.append(example.key)
            labels.append(example.label)
            views.append(crop_views(image, self.processor, self.image_size, self.augment))
            if len(keys) == self.batch_size:
                yield self._batch(shard.index, keys, labels, views, skipped, last=False)
                keys, labels, views, skipped = [], [], [], []
        yield self._batch(shard.index, keys, labels, views, skipped, last=True)

    def _batch(
        self, shard: int, keys: list[str], labels: list[Any], views: list[np.ndarray], skipped: list[str], last: bool
    ) -> ShardBatch:
        size = self.image_size
        # V views per image: N x (V, 3, S, S) -> (N * V, 3, S, S)
        crops = np.concatenate(views) if views else np.zeros((0, 3, size, size), np.uint8)
        has_labels = any(label is not None for label in labels)
        return ShardBatch(shard, keys, labels if has_labels else None, torch.from_numpy(crops), skipped, last)


def shard_batch_loader(dataset: ShardBatchDataset, num_workers: int, pin_memory: bool = False) -> Any:
    """A `DataLoader` over `dataset`'s batches (made whole by the workers: no collation), `num_workers` worker
    processes each keeping `PREFETCH_BATCHES` batches ready (0: read in this process, no overlap with the model)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=freeze_inherited_objects,
    )


def inference_loader(
    dataset: ShardBatchDataset, requested_workers: int | None, device: torch.device
) -> torch.utils.data.DataLoader:
    """The [`shard_batch_loader`] of the inference commands (encode, reconstruct, eval, pretokenize) for a model on
    `device`: `requested_workers` (None: `default_num_workers(device)`), at most one per shard (a worker reads whole
    shards), batches in page-locked memory for a GPU. Its `num_workers` is the number it runs."""
    num_workers = default_num_workers(device) if requested_workers is None else requested_workers
    return shard_batch_loader(dataset, min(num_workers, len(dataset.shards)), pin_memory=device.type == "cuda")


def encode_batches(
    model: ViTVQModel, batches: Any, table: torch.Tensor, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[ShardBatch, torch.Tensor]]:
    """(batch, token ids on the CPU) for each [`ShardBatch`] of `batches`: `model.encode` of its crops' pixel values
    (`table` from [`pixel_value_table`]), under autocast in `dtype` unless float32. Empty batches get empty ids."""
    device = model.device
    for batch in batches:
        if len(batch.crops) == 0:
            yield batch, torch.zeros((0, *token_shape(model.config)), dtype=torch.long)
            continue
        pixel_values = to_pixel_values(batch.crops.to(device, non_blocking=True), table)
        with inference_autocast(device, dtype):
            token_ids = model.encode(pixel_values)
        yield batch, token_ids.cpu()


def validation_batches(
    dataset: datasets.IterableDataset, image_column: str, processor: ViTVQImageProcessor, limit: int, batch_size: int
) -> list[torch.Tensor]:
    """The pixel values of the first `limit` decodable validation images in batches of `batch_size` (the last may
    hold fewer): the short side resized to the side of `processor`'s square crop, centre-cropped, rescaled and
    normalised by `processor`'s own functions (`processor(image).pixel_values` bit for bit for the training processor,
    `ViTVQImageProcessor.for_config`). Read by `image_shards`' reader in this process, shard after shard in order: the
    same images whatever the number of training workers. Undecodable images are skipped, each with a warning that
    names it (its `name` column, its webdataset `__key__`, else its place in the stream)."""
    shards = dataset_shards(dataset, image_column, None, shard_size=batch_size, key_column="name")
    reader = ShardBatchDataset(shards, processor, processor.crop_size["height"], batch_size=batch_size)
    crops: list[torch.Tensor] = []  # (N, 3, S, S) uint8 each
    count = 0
    for batch in reader:
        for key in batch.skipped:
            logger.warning("Skipped an undecodable validation image (%s).", key)
        crops.append(batch.crops[: limit - count])
        count += len(crops[-1])
        if count == limit:
            break
    if not count:
        raise ValueError("The validation set has no decodable image.")
    if count < limit:
        logger.warning("Validating on %d images: the validation set has no more decodable ones (asked: %d).",
                       count, limit)  # fmt: skip
    table = pixel_value_table(processor)
    return [to_pixel_values(chunk, table) for chunk in torch.cat(crops).split(batch_size)]
