"""`hf-vitvq pretokenize`: a whole dataset to token ids, once, so that a generative prior trains on integers instead of
pixels (as TiTok's `scripts/pretokenization.py` does for ImageNet), on any number of processes, resumable.

    accelerate launch -m hf_vitvq.cli pretokenize MODEL --dataset_name NAME --output_dir DIR
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 -m hf_vitvq.cli pretokenize MODEL \\
        --train_data_dir photos/ --output_dir DIR

`OUTPUT_DIR` receives one parquet file per shard of the source (see `image_shards`: `--shard_size` images of a folder
or map-style dataset, one file of a streamed dataset), named `{split}-00000-of-00042.parquet` so that
`datasets.load_dataset("parquet", data_dir=OUTPUT_DIR)` and the Hub read it as that split, with the columns `key`
(the file's path in the folder, `__key__`, or the example's index), `view` (with `--augment`: which view of the image,
a `ClassLabel` of `AUGMENTATIONS[augment]`; one row per view), `token_ids` (list of int32) and `label` (when the source
has labels: a `ClassLabel` column, a column named `label`, `--label_column`, or the class subfolders of a folder), and
`pretokenize_info.json` (the model, the settings, the counts; `complete` once every shard is written).

Processes take every n-th missing shard; a shard is written by the process that read it, atomically (temporary name,
then rename), and records in its parquet metadata the hash of the run's settings, its image count and its skipped
keys. A rerun of the same command skips the shards already written and finishes the others; shards written with
other settings (another model, augmentation, source) are refused unless `--overwrite` removes them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

import hf_vitvq
from hf_vitvq.token_files import (
    METADATA_KEY,
    atomic_path,
    id_lists,
    is_temporary_file,
    token_metadata,
    tokens_per_image,
    weights_sha256,
)

from .data import image_files
from .image_shards import (
    AUGMENTATIONS,
    ImageShard,
    ShardBatch,
    ShardBatchDataset,
    check_discrete,
    cpu_threads,
    dataset_shards,
    encode_batches,
    file_shards,
    inference_dtype,
    inference_loader,
    load_image_dataset,
    load_tokenizer,
    pixel_value_table,
)
from .prior_data import PRETOKENIZE_INFO

logger = logging.getLogger(__name__)

INFO_FILE = PRETOKENIZE_INFO  # what prior training reads (`prior_data.pretokenize_info`)
SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.parquet"


@dataclass
class PretokenizeArguments:
    """What `hf-vitvq pretokenize` takes (its flags have these names; `hf-vitvq pretokenize --help` explains them)."""

    model: str
    output_dir: str
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    data_files: str | None = None
    split: str = "train"
    streaming: bool = True
    train_data_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None  # None: detected; "none": no labels
    augment: str = "none"
    shard_size: int = 1000
    max_samples: int | None = None
    batch_size: int = 64
    dataloader_num_workers: int | None = None  # None: image_shards.default_num_workers
    mixed_precision: str = "no"
    overwrite: bool = False
    push_to_hub: str | None = None
    hub_token: str | None = None


@dataclass
class PretokenizeSummary:
    """What a run did: images and rows (image views) in the output, skipped keys, shards written by this run (on
    all processes) and found written before it, this process's index, the number of processes and the shards this
    one wrote, and the dataset repo's URL when pushed (by the main process)."""

    output_dir: str
    num_images: int
    num_rows: int
    skipped: list[str]
    num_shards: int
    shards_written: int
    shards_found: int
    process_index: int = 0
    num_processes: int = 1
    shards_written_here: int = 0
    repo_url: str | None = None

    @property
    def main_process(self) -> bool:
        return self.process_index == 0


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """The shards to encode, and what the info file says about where they come from."""

    shards: list[ImageShard]
    description: dict[str, Any]
    label: dict[str, Any] | None = None  # {"source": column or "subfolders", "names": [...] or None}
    label_feature: Any = None  # the `datasets` feature of the `label` column, when known


def find_label_column(features: datasets.Features | None, requested: str | None, image_column: str) -> str | None:
    """The column to take labels from: `requested` (`"none"`: no labels), else the dataset's only `ClassLabel`
    column, else a column named `label`, else none."""
    if requested == "none":
        return None
    if requested is not None:
        if features is not None and requested not in features:
            raise ValueError(f"--label_column {requested!r} is not a column of the dataset: {list(features)}.")
        return requested
    if features is None:
        return None
    class_columns = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(class_columns) == 1:
        return class_columns[0]
    return "label" if "label" in features and image_column != "label" else None


def folder_labels(keys: list[str]) -> tuple[list[int], list[str]] | None:
    """(label of each file, class names) when the files lie in class subfolders (`CLASS/FILE`, at least two classes:
    torchvision's `ImageFolder` layout, whose sorted class names give the labels), else None."""
    folders = [key.split("/")[0] for key in keys]
    if any(key.count("/") != 1 for key in keys) or len(set(folders)) < 2:
        return None
    names = sorted(set(folders))
    index = {name: label for label, name in enumerate(names)}
    return [index[folder] for folder in folders], names


def folder_source(args: PretokenizeArguments) -> Source:
    folder = Path(args.train_data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"--train_data_dir {folder}: no such folder.")
    files = image_files(folder)  # raises for a folder without images
    keys = [Path(path).relative_to(folder).as_posix() for path in files]
    if args.label_column not in (None, "none"):
        raise ValueError(
            "--label_column applies to --dataset_name; the labels of a --train_data_dir are its class subfolders "
            "(CLASS/FILE), or pass --label_column none."
        )
    found = folder_labels(keys) if args.label_column is None else None
    labels, names = found or (None, None)
    count = len(files) if args.max_samples is None else min(len(files), args.max_samples)
    description = {"train_data_dir": str(folder.resolve()), "max_samples": args.max_samples}
    label = None if names is None else {"source": "subfolders", "names": names}
    label_feature = None if names is None else datasets.ClassLabel(names=names)
    shards = file_shards(files[:count], keys[:count], args.shard_size, None if labels is None else labels[:count])
    return Source(shards, description, label, label_feature)


def dataset_source(args: PretokenizeArguments) -> Source:
    dataset, image_column = load_image_dataset(args)
    label_column = find_label_column(dataset.features, args.label_column, image_column)
    description = {
        "dataset_name": args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "data_files": args.data_files,
        "split": args.split,
        "streaming": args.streaming,
        "image_column": image_column,
        "max_samples": args.max_samples,
    }
    label, label_feature = None, None
    if label_column is not None:
        label_feature = dataset.features[label_column] if dataset.features is not None else None
        names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
        label = {"source": label_column, "names": names}
    shards = dataset_shards(dataset, image_column, label_column, args.shard_size, args.max_samples)
    return Source(shards, description, label, label_feature)


def load_source(args: PretokenizeArguments) -> Source:
    """The shards of `--train_data_dir` or of `--dataset_name`."""
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise ValueError("Pass either --dataset_name or --train_data_dir (one of the two).")
    source = folder_source(args) if args.train_data_dir is not None else dataset_source(args)
    if not source.shards:
        raise ValueError("The source holds no examples: nothing to pretokenize.")
    return source


# ---------------------------------------------------------------------------------------------- output


def shard_names(split: str, count: int) -> list[str]:
    """The file names of `count` shards of `split`, which `load_dataset("parquet", data_dir=...)` reads as `split`."""
    return [SHARD_PATTERN.format(split=split, index=index, count=count) for index in range(count)]


def read_shard_metadata(path: Path) -> dict[str, Any]:
    """The `hf_vitvq` metadata of a shard file ({} for a parquet file without it), plus its row count `rows`."""
    import pyarrow.parquet as pq

    file_metadata = pq.read_metadata(path)
    raw = (file_metadata.schema.to_arrow_schema().metadata or {}).get(METADATA_KEY.encode())
    return {**(json.loads(raw) if raw else {}), "rows": file_metadata.num_rows}


def is_shard_file(path: Path) -> bool:
    """Whether `path` looks like a shard of some pretokenize run (`*-NNNNN-of-NNNNN.parquet`)."""
    stem, _, count = path.name.removesuffix(".parquet").rpartition("-of-")
    return path.suffix == ".parquet" and count.isdigit() and stem.rpartition("-")[2].isdigit()


def check_output_dir(output_dir: Path, names: list[str], settings_sha256: str, overwrite: bool) -> None:
    """Raise a `ValueError` when `output_dir` holds shards of another run (other settings, or another shard count)
    and `overwrite` is not set; shards of this run are fine (they are skipped)."""
    if overwrite or not output_dir.is_dir():
        return
    expected = set(names)
    for path in sorted(output_dir.iterdir()):
        if not is_shard_file(path):
            continue
        if path.name not in expected:
            problem = f"{path.name} is not one of the {len(names)} shards of this run"
        elif read_shard_metadata(path).get("settings_sha256") != settings_sha256:
            problem = f"{path.name} was written with other settings (model, augmentation, source or shard size)"
        else:
            continue
        raise ValueError(
            f"--output_dir {output_dir} holds the output of another pretokenize run: {problem}. Pass another "
            "--output_dir, or --overwrite to delete that run's shards and info file."
        )


def prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Create `output_dir`; remove the temporary files of killed runs and, with `overwrite`, the shards and info
    file of earlier runs (nothing else)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in output_dir.iterdir():
        if is_temporary_file(path) or overwrite and (is_shard_file(path) or path.name == INFO_FILE):
            path.unlink()


def write_json(path: Path, values: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(values, indent=2) + "\n")


@dataclass
class ShardRows:
    """The encoded images of one shard so far (views consecutive per image)."""

    keys: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    token_ids: list[torch.Tensor] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, batch: ShardBatch, token_ids: torch.Tensor) -> None:
        self.keys += batch.keys
        self.labels += batch.labels or [None] * len(batch.keys)
        self.token_ids.append(token_ids)
        self.skipped += batch.skipped


def shard_table(rows: ShardRows, views: tuple[str, ...], has_labels: bool, label_feature: Any) -> Any:
    """A shard's pyarrow table: one row per view of each image, columns `key`, `view` (several views only),
    `token_ids`, `label` (`has_labels` only), typed with `datasets` features (kept in the schema metadata, which
    `load_dataset` restores: `ClassLabel` names included)."""
    import numpy as np
    import pyarrow as pa

    num_views = len(views)
    columns = {"key": pa.array(np.repeat(np.array(rows.keys, dtype=object), num_views).tolist(), pa.string())}
    if num_views > 1:
        columns["view"] = pa.array(np.tile(np.arange(num_views), len(rows.keys)), pa.int64())
    columns["token_ids"] = id_lists(torch.cat(rows.token_ids))  # one tensor per batch, empty ones included
    if has_labels:
        columns["label"] = pa.array([label for label in rows.labels for _ in range(num_views)])
    table = pa.table(columns)
    features = datasets.Features.from_arrow_schema(table.schema)
    features["token_ids"] = datasets.List(datasets.Value("int32"))
    if num_views > 1:
        features["view"] = datasets.ClassLabel(names=list(views))
    if has_labels and label_feature is not None:
        features["label"] = label_feature
    return table.cast(features.arrow_schema)


class PretokenizeRun:
    """One process's part of a pretokenize run (see the module docstring); `run()` returns the summary."""

    def __init__(self, args: PretokenizeArguments, state: Any) -> None:
        if args.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {list(AUGMENTATIONS)}, got {args.augment!r}.")
        for name in ("shard_size", "batch_size", "max_samples"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
        self.args = args
        self.state = state
        self.output_dir = Path(args.output_dir)
        self.dtype = inference_dtype(args.mixed_precision, state.device)
        self.source = load_source(args)  # before the model: bad data options fail fast
        self.model, self.processor = load_tokenizer(args.model, state.device)
        check_discrete(self.model.config)
        self.views = AUGMENTATIONS[args.augment]
        self.names = shard_names(args.split, len(self.source.shards))
        self.settings = self.run_settings()
        self.settings_sha256 = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()

    def run_settings(self) -> dict[str, Any]:
        """Everything the shards' contents depend on (their hash is checked on resume)."""
        config = self.model.config
        return {
            **token_metadata(config, self.args.model),
            "model": None,  # the same model may be named by another path on a rerun
            "weights_sha256": weights_sha256(self.model),
            "image_size": config.image_size,
            "augment": self.args.augment,
            "views": list(self.views),
            "mixed_precision": self.args.mixed_precision,
            "source": self.source.description,
            "label": self.source.label,
            "shard_size": self.args.shard_size,
            "num_shards": len(self.names),
        }

    def info(self, complete: bool, counts: dict[str, Any] | None = None) -> dict[str, Any]:
        """The contents of `pretokenize_info.json`."""
        config = self.model.config
        label = None if self.source.label is None else {"column": "label", **self.source.label}
        return {
            **self.settings,
            "model": self.args.model,
            "tokens_per_image": tokens_per_image(config),
            "views_per_image": len(self.views),
            "label": label,
            "settings_sha256": self.settings_sha256,
            "hf_vitvq_version": hf_vitvq.__version__,
            "complete": complete,
            **(counts or {}),
        }

    def run(self) -> PretokenizeSummary:
        state, output_dir = self.state, self.output_dir
        check_output_dir(output_dir, self.names, self.settings_sha256, self.args.overwrite)
        state.wait_for_everyone()
        if state.is_main_process:
            prepare_output_dir(output_dir, self.args.overwrite)
            write_json(output_dir / INFO_FILE, self.info(complete=False))
        state.wait_for_everyone()
        pending = [shard for shard in self.source.shards if not (output_dir / self.names[shard.index]).exists()]
        state.wait_for_everyone()  # every process has listed the shards before any writes one
        mine = pending[state.process_index :: state.num_processes]
        self.write_shards(mine)
        state.wait_for_everyone()
        counts = self.counts()
        if state.is_main_process:
            write_json(output_dir / INFO_FILE, self.info(complete=True, counts=counts))
        repo_url = self.push() if self.args.push_to_hub and state.is_main_process else None
        return PretokenizeSummary(
            output_dir=str(output_dir),
            num_images=counts["num_images"],
            num_rows=counts["num_rows"],
            skipped=counts["skipped"],
            num_shards=len(self.names),
            shards_written=len(pending),
            shards_found=len(self.names) - len(pending),
            process_index=state.process_index,
            num_processes=state.num_processes,
            shards_written_here=len(mine),
            repo_url=repo_url,
        )

    def write_shards(self, shards: list[ImageShard]) -> None:
        """Encode `shards` and write each one's file as soon as its last batch is encoded."""
        from tqdm.auto import tqdm

        args, device = self.args, self.state.device
        dataset = ShardBatchDataset(shards, self.processor, self.model.config.image_size, args.augment, args.batch_size)
        loader = inference_loader(dataset, args.dataloader_num_workers, device)
        progress = tqdm(
            total=dataset.num_examples, unit="img", desc="pretokenize", disable=not self.state.is_local_main_process
        )
        table = pixel_value_table(self.processor)
        open_shards: dict[int, ShardRows] = {}
        with cpu_threads(device, loader.num_workers), progress:
            for batch, token_ids in encode_batches(self.model, loader, table, self.dtype):
                rows = open_shards.setdefault(batch.shard, ShardRows())
                rows.add(batch, token_ids)
                progress.update(len(batch.keys) + len(batch.skipped))
                for key in batch.skipped:
                    logger.warning("Skipped %s: it could not be decoded as an image.", key)
                if batch.last:
                    self.write_shard(batch.shard, open_shards.pop(batch.shard))

    def write_shard(self, index: int, rows: ShardRows) -> None:
        import pyarrow.parquet as pq

        has_labels = self.source.label is not None
        table = shard_table(rows, self.views, has_labels, self.source.label_feature)
        metadata = {
            **token_metadata(self.model.config, self.args.model),
            "settings_sha256": self.settings_sha256,
            "shard": index,
            "images": len(rows.keys),
            "skipped": rows.skipped,
            "views": list(self.views),
        }
        table = table.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: json.dumps(metadata)})
        with atomic_path(self.output_dir / self.names[index]) as temporary:
            if table.num_rows:
                pq.write_table(table, temporary)
            else:  # no row group at all: `datasets` fails on a row group of 0 rows ("BatchSize must be greater than 0")
                pq.ParquetWriter(temporary, table.schema).close()

    def counts(self) -> dict[str, Any]:
        """Images, rows and skipped keys over all shard files (read from their metadata)."""
        missing = [name for name in self.names if not (self.output_dir / name).exists()]
        if missing:
            raise RuntimeError(
                f"{len(missing)} of {len(self.names)} shards were not written (e.g. {missing[0]}): a process failed; "
                "rerun the same command to finish them."
            )
        shards = [read_shard_metadata(self.output_dir / name) for name in self.names]
        skipped = [key for shard in shards for key in shard.get("skipped", [])]
        return {
            "num_images": sum(shard["images"] for shard in shards),
            "num_rows": sum(shard["rows"] for shard in shards),
            "num_skipped": len(skipped),
            "skipped": skipped,
        }

    def push(self) -> str:
        """Upload the shards and the info file to the dataset repo `--push_to_hub`; returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=self.args.hub_token)
        repo_id = self.args.push_to_hub
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=self.output_dir,
            allow_patterns=[*self.names, INFO_FILE],
            commit_message=f"Pretokenize with hf-vitvq ({self.args.model})",
        )
        return commit.commit_url


def pretokenize(args: PretokenizeArguments) -> PretokenizeSummary:
    """Run `hf-vitvq pretokenize` on this process (one of many under `accelerate launch` / `torchrun`)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # On CPUs, accelerate needs `cpu=True` to join the processes of `torchrun` / `accelerate launch` into one run
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(
            f"Launched as {launched} processes, but accelerate runs this one as {state.num_processes} of "
            f"{state.num_processes}: each would tokenize everything. Set ACCELERATE_USE_CPU=1 to run on CPUs."
        )
    try:
        return PretokenizeRun(args, state).run()
    finally:
        gc.collect()  # workers and model gone before the process group (gloo otherwise aborts at exit at times)
        if state.use_distributed:
            state.destroy_process_group()


__all__ = ["INFO_FILE", "PretokenizeArguments", "PretokenizeSummary", "pretokenize", "shard_names"]
