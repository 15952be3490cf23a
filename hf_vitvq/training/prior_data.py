"""Training data of the priors: pre-tokenized sequences (`hf-vitvq pretokenize`'s parquet shards, or any
`datasets.load_dataset` source with a column of token ids), read into memory as one (N, L) int64 tensor, a held-out
part for validation, and batches in a seeded order that resumes exactly.

Token data are small (ImageNet at 32 tokens is 1.3 M x 32 ids, 330 MB as int64), so they are read whole rather than
streamed: a batch is then a random row gather, and the position in the data is two integers (epoch, batches done).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow
import pyarrow.compute
import torch

logger = logging.getLogger(__name__)

# What `hf-vitvq pretokenize` writes next to its shards; `codebook_size` is read from it when present.
PRETOKENIZE_INFO = "pretokenize_info.json"
# Validation sequences held out of the training split when the data have no validation split and none is requested.
DEFAULT_VALIDATION_SEQUENCES = 1000


@dataclass
class TokenSequences:
    """Token sequences and, for labelled data, their classes."""

    token_ids: torch.LongTensor  # (N, L)
    class_labels: torch.LongTensor | None = None  # (N,)

    def __len__(self) -> int:
        return self.token_ids.shape[0]

    @property
    def sequence_length(self) -> int:
        return self.token_ids.shape[1]

    def select(self, rows: slice | torch.Tensor) -> TokenSequences:
        """The sequences at `rows` (a slice or an index tensor)."""
        labels = None if self.class_labels is None else self.class_labels[rows]
        return TokenSequences(self.token_ids[rows], labels)


def token_matrix(column: pyarrow.ChunkedArray | pyarrow.Array, name: str) -> torch.LongTensor:
    """A column of equal-length lists of ids as an (N, L) int64 tensor. Nested lists (e.g. the (L, num_quantizers)
    ids of a residual-VQ tokenizer) are flattened row-major into L * num_quantizers ids per row."""
    array = column.combine_chunks() if isinstance(column, pyarrow.ChunkedArray) else column
    num_rows, shape = len(array), []
    while pyarrow.types.is_list(array.type) or pyarrow.types.is_large_list(array.type):
        lengths = pyarrow.compute.min_max(pyarrow.compute.list_value_length(array))
        low, high = lengths["min"].as_py(), lengths["max"].as_py()
        if low != high or low is None:
            raise ValueError(
                f"Column `{name}` holds token sequences of different lengths ({low} to {high}); a prior needs every "
                "image encoded into the same number of tokens."
            )
        shape.append(low)
        array = array.flatten()
    if not shape or not pyarrow.types.is_integer(array.type):
        raise ValueError(f"Column `{name}` must hold lists of integer token ids, got the arrow type {column.type}.")
    values = torch.from_numpy(np.array(array.to_numpy(zero_copy_only=False), dtype=np.int64))
    return values.view(num_rows, int(np.prod(shape)))


def read_sequences(dataset: Any, token_column: str, label_column: str | None) -> TokenSequences:
    """The token ids (and labels, when `label_column` is set) of an in-memory `datasets.Dataset`."""
    missing = [column for column in (token_column, label_column) if column and column not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset has no column {missing[0]!r}; its columns are {dataset.column_names}.")
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    token_ids = token_matrix(table.column(token_column), token_column)
    labels = None
    if label_column:
        labels = torch.from_numpy(np.array(table.column(label_column).to_numpy(), dtype=np.int64))
    return TokenSequences(token_ids, labels)


def pretokenize_info(data_dir: str | Path | None) -> dict[str, Any]:
    """The `pretokenize_info.json` of a pre-tokenized folder, or {} when there is none."""
    if data_dir is None or not (path := Path(data_dir) / PRETOKENIZE_INFO).is_file():
        return {}
    return json.loads(path.read_text())


@dataclass
class TokenData:
    """What a prior trains on: training and validation sequences, the number of classes (0: no labels) and a
    description of the source for logs and model cards."""

    train: TokenSequences
    validation: TokenSequences
    num_classes: int
    source: str


def load_token_data(data_args: Any) -> TokenData:
    """Read the training (and validation) sequences that `data_args` name (see `TokenDataArguments` in
    training/train_prior.py): `--train_data_dir` (a folder of parquet shards, as `pretokenize` writes) or
    `--dataset_name` (anything `load_dataset` reads), `--token_column`, `--label_column` (used when the data have it,
    `none` to ignore labels), `--validation_split` or else the last `--validation_sequences` training rows (contiguous,
    so that the crops and flips of one image, written next to each other, stay on one side)."""
    import datasets

    if data_args.train_data_dir is not None:
        loaded = datasets.load_dataset("parquet", data_dir=data_args.train_data_dir, data_files=data_args.data_files)
        source = data_args.train_data_dir
    else:
        loaded = datasets.load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, data_files=data_args.data_files
        )
        source = data_args.dataset_name
    if data_args.train_split not in loaded:
        raise ValueError(f"--train_split {data_args.train_split!r}: the data have the splits {list(loaded)}.")
    train = loaded[data_args.train_split]
    label_column = data_args.label_column
    if label_column == "none" or (label_column == "label" and "label" not in train.column_names):
        label_column = None  # the default column is used when present
    sequences = read_sequences(train, data_args.token_column, label_column)
    validation_split = data_args.validation_split
    if validation_split is None and "validation" in loaded and data_args.train_split != "validation":
        validation_split = "validation"
    if validation_split is not None:
        if validation_split not in loaded:
            raise ValueError(f"--validation_split {validation_split!r}: the data have the splits {list(loaded)}.")
        validation = read_sequences(loaded[validation_split], data_args.token_column, label_column)
        if validation.sequence_length != sequences.sequence_length:
            raise ValueError(
                f"The {validation_split!r} split has sequences of {validation.sequence_length} tokens, the training "
                f"split of {sequences.sequence_length}."
            )
    else:
        requested = data_args.validation_sequences
        count = min(DEFAULT_VALIDATION_SEQUENCES, max(1, len(sequences) // 10)) if requested is None else requested
        if not 0 < count < len(sequences):
            raise ValueError(
                f"--validation_sequences {count}: the training split has {len(sequences)} sequences; at least one must "
                "be held out and one left to train on."
            )
        split_at = len(sequences) - count
        validation, sequences = sequences.select(slice(split_at, None)), sequences.select(slice(0, split_at))
    num_classes = class_count(train, label_column, data_args.num_classes, sequences, validation)
    return TokenData(sequences, validation, num_classes, str(source))


def class_count(dataset: Any, label_column: str | None, requested: int | None, *parts: TokenSequences) -> int:
    """The number of classes: `requested` (`--num_classes`), else that of a `ClassLabel` feature, else the largest
    label + 1; 0 without labels. Raises when a label falls outside [0, that number)."""
    if label_column is None:
        return 0
    feature = dataset.features[label_column]
    labels = torch.cat([part.class_labels for part in parts])
    if requested is not None:
        num_classes = requested
    elif hasattr(feature, "num_classes"):
        num_classes = feature.num_classes
    else:
        num_classes = int(labels.max()) + 1
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"Column {label_column!r} holds labels outside [0, {num_classes}): {sorted(set(labels[bad].tolist()))[:10]}"
            ". Pass --num_classes, or --label_column none to train an unconditional prior."
        )
    return num_classes


class SequenceBatches:
    """Batches of row indices for one process: each epoch a permutation of the N rows seeded by (seed, epoch), of
    which process `rank` takes every `world_size`-th, cut into batches of `batch_size` (the incomplete last one is
    dropped). The position, (epoch, batches done), is saved with checkpoints (`state_dict`), so that a resumed run
    reads exactly the batches the interrupted one would have."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.batches_per_epoch = num_rows // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_rows} training sequences do not fill one batch of {batch_size} on each of {world_size} "
                "process(es): lower --train_batch_size."
            )
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order: torch.Tensor | None = None

    def _epoch_order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_rows, generator=generator)[self.rank :: self.world_size]

    def next_indices(self) -> torch.LongTensor:
        """The (batch_size,) row indices of the next batch."""
        if self.position == self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order()
        start = self.position * self.batch_size
        self.position += 1
        return self._order[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
