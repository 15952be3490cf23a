"""Token files: the token ids of images together with the names of their files, as `hf-vitvq encode` writes them and
`hf-vitvq decode` reads them back.

Two formats, chosen by the file's suffix:

- `.safetensors`: one tensor `token_ids`, (N, num_latent_tokens) int32 ((N, num_latent_tokens, num_quantizers) for a
  residual-VQ model), and under the header's metadata key `hf_vitvq` a JSON object: the file names (`files`, in the
  order of the rows) and the model's description ([`token_metadata`]).
- `.parquet`: one row per image, columns `file` (string) and `token_ids` (list of int32; a residual-VQ model's ids
  flattened row-major), and the same JSON object, less `files`, under the schema metadata key `hf_vitvq`. The shards
  that `hf-vitvq pretokenize` writes (columns `key`, `token_ids`, with `--augment` also `view`) read as token files
  too.

The model's description lets `decode` refuse ids from a model with another codebook or token count. A file written
with `hf-vitvq encode --num_tokens K` holds the first K ids of each image (its `token_shape` says so, e.g. `[K]`
with `num_latent_tokens` 32): a model trained with tail-token dropout decodes it, others refuse it, by the rule of
`ViTVQModel.decode` ([`check_num_tokens`]). Beside the package's own config, only the standard library, torch,
transformers, safetensors and (imported when a parquet file is read or written) numpy and pyarrow are needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePath
from typing import Any

import torch
from transformers import PretrainedConfig

from .configuration_vitvq import ViTVQConfig

METADATA_KEY = "hf_vitvq"
TOKEN_FILE_SUFFIXES = (".safetensors", ".parquet")


def token_shape(config: ViTVQConfig, num_tokens: int | None = None) -> tuple[int, ...]:
    """The shape of one image's token ids: (num_latent_tokens,), or (num_latent_tokens, num_quantizers) for `rvq`;
    with `num_tokens`, of its first `num_tokens` tokens: (num_tokens,) or (num_tokens, num_quantizers)."""
    length = config.num_latent_tokens if num_tokens is None else num_tokens
    return (length, config.num_quantizers) if config.quantizer_type == "rvq" else (length,)


def tokens_per_image(config: ViTVQConfig, num_tokens: int | None = None) -> int:
    """Token ids per image (of its first `num_tokens` tokens): their count, times `num_quantizers` for `rvq`."""
    return math.prod(token_shape(config, num_tokens))


def check_num_tokens(config: ViTVQConfig, num_tokens: int, source: str) -> None:
    """Raise a `ValueError` starting with `source` unless a model with `config` decodes the first `num_tokens` tokens
    of an image: all `num_latent_tokens` of them, or, trained with tail-token dropout, any number from
    `config.min_num_tokens` on (the rule of `ViTVQModel.decode`)."""
    low, high = config.min_num_tokens, config.num_latent_tokens
    if low <= num_tokens <= high:
        return
    if config.token_dropout == "none":
        rule = (
            f"the model was trained without tail-token dropout (token_dropout='none') and decodes all {high} tokens "
            "only; decoding the first k tokens needs a model trained with token_dropout='tail'"
        )
    else:
        rule = f"the model (token_dropout='tail') decodes the first k tokens for {low} <= k <= {high}"
    raise ValueError(f"{source}: {rule}.")


def config_sha256(config: ViTVQConfig) -> str:
    """SHA-256 of the config's own fields (not `PretrainedConfig`'s: names, versions, dtypes) as sorted JSON: equal
    for equal architectures, whatever folder or Hub repo they were loaded from."""
    inherited = {field.name for field in fields(PretrainedConfig)}
    values = {field.name: getattr(config, field.name) for field in fields(config) if field.name not in inherited}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the model's state dict (persistent buffers included), in
    name order: two checkpoints give the same ids only if this is equal (with equal configs)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # reshape: 0-dim buffers too
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def token_metadata(config: ViTVQConfig, model_name: str, num_tokens: int | None = None) -> dict[str, Any]:
    """What a token file records about the model that wrote it (`model` is the name or path it was loaded from) and
    its ids: `token_shape` is the shape of one image's ids, of its first `num_tokens` tokens when given."""
    return {
        "model": model_name,
        "config_sha256": config_sha256(config),
        "codebook_size": config.codebook_size,
        "num_latent_tokens": config.num_latent_tokens,
        "token_shape": list(token_shape(config, num_tokens)),
    }


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (a hidden name ending in `.tmp-PID`) to write to; renamed to `path` when the
    block ends without error (an atomic replace on one file system), removed otherwise. A process killed meanwhile
    leaves only the temporary file, never a partial `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def is_temporary_file(path: Path) -> bool:
    """Whether `path` is a leftover of [`atomic_path`] (of any process)."""
    return path.name.startswith(".") and ".tmp-" in path.name


@dataclass
class TokenFile:
    """The contents of a token file: one name per row of `token_ids` (N, *token_shape) and the writer's metadata."""

    names: list[str]
    token_ids: torch.Tensor
    metadata: dict[str, Any]


def check_token_file_suffix(path: str | os.PathLike) -> None:
    """Raise a `ValueError` unless `path` ends in one of `TOKEN_FILE_SUFFIXES`."""
    if Path(path).suffix not in TOKEN_FILE_SUFFIXES:
        raise ValueError(f"{path}: a token file must end in {' or '.join(TOKEN_FILE_SUFFIXES)}.")


def save_token_file(
    path: str | os.PathLike, names: Sequence[str], token_ids: torch.Tensor, metadata: dict[str, Any]
) -> None:
    """Write `names` and their `token_ids` (N, *token_shape) with `metadata` (see [`token_metadata`]) to `path`,
    atomically, as `.safetensors` or `.parquet` by its suffix. Ids are stored as int32."""
    check_token_file_suffix(path)
    if len(names) != len(token_ids):
        raise ValueError(f"Got {len(names)} names for {len(token_ids)} rows of token ids.")
    token_ids = token_ids.to(torch.int32).contiguous()
    with atomic_path(path) as temporary:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import save_file

            header = json.dumps({**metadata, "files": list(names)})
            save_file({"token_ids": token_ids}, str(temporary), metadata={METADATA_KEY: header})
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({"file": pa.array(list(names), pa.string()), "token_ids": id_lists(token_ids)})
            pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata)}), temporary)


def id_lists(token_ids: torch.Tensor) -> Any:
    """(N, *token_shape) ids -> a pyarrow array of N lists of int32 (each row's ids flattened row-major)."""
    import numpy as np
    import pyarrow as pa

    flat = token_ids.to(torch.int32).flatten(1)  # (N, *token_shape) -> (N, K)
    offsets = np.arange(len(flat) + 1, dtype=np.int32) * flat.shape[1]  # row n: values [n * K, (n + 1) * K)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.flatten().numpy()), type=pa.list_(pa.int32()))


def load_token_file(path: str | os.PathLike) -> TokenFile:
    """Read a token file written by [`save_token_file`] or a `pretokenize` shard. Raises a `FileNotFoundError` for a
    missing file and a `ValueError` for a file that is not a token file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such token file.")
    check_token_file_suffix(path)
    try:
        return _read_safetensors(path) if path.suffix == ".safetensors" else _read_parquet(path)
    except (OSError, ValueError, KeyError, TypeError) as error:  # corrupt files, foreign files
        raise ValueError(f"{path} is not a readable token file: {error}") from error


def _read_safetensors(path: Path) -> TokenFile:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        metadata = json.loads((file.metadata() or {}).get(METADATA_KEY) or "{}")
        if "token_ids" not in set(file.keys()) or "files" not in metadata:
            raise ValueError("expected a tensor `token_ids` and the file names in its `hf_vitvq` metadata")
        token_ids = file.get_tensor("token_ids")
    names = metadata.pop("files")
    if len(names) != len(token_ids):
        raise ValueError(f"{len(names)} file names for {len(token_ids)} rows of token ids")
    return TokenFile(names, token_ids, metadata)


def _read_parquet(path: Path) -> TokenFile:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    metadata = json.loads((table.schema.metadata or {}).get(METADATA_KEY.encode(), b"{}"))
    name_column = next((name for name in ("file", "key") if name in table.column_names), None)
    if name_column is None or "token_ids" not in table.column_names:
        raise ValueError(f"expected columns `file` (or `key`) and `token_ids`, got {table.column_names}")
    names = table.column(name_column).to_pylist()
    if "view" in table.column_names:  # a pretokenize shard with --augment: one row per view of an image
        views = metadata.get("views") or []
        names = [view_name(name, views[view] if view < len(views) else f"view{view}")
                 for name, view in zip(names, table.column("view").to_pylist(), strict=True)]  # fmt: skip
    ids = table.column("token_ids").combine_chunks()
    lengths = set(ids.value_lengths().to_pylist()) if len(ids) else set()
    if len(lengths) > 1:
        raise ValueError(f"rows of `token_ids` have different lengths: {sorted(lengths)}")
    flat = torch.from_numpy(ids.flatten().to_numpy(zero_copy_only=False, writable=True))  # int32 as written
    shape = metadata.get("token_shape") or [lengths.pop() if lengths else 0]
    return TokenFile(names, flat.view(len(names), *shape), metadata)


def view_name(name: str, view: str) -> str:
    """The name of one view of an image: `a/b.jpg`, `center_flipped` -> `a/b_center_flipped.jpg`."""
    path = PurePath(name)
    return str(path.with_name(f"{path.stem}_{view}{path.suffix}")) if path.name else f"{name}_{view}"


def check_token_file(token_file: TokenFile, config: ViTVQConfig, source: str = "the token file") -> None:
    """Raise a `ValueError` when `token_file` cannot come from a model with `config`: another codebook size or token
    count in its metadata, or ids of another layout; or when the model does not decode as many tokens as the file
    holds per image (a file of the first k tokens, for a model trained without tail-token dropout: see
    [`check_num_tokens`]). (Ids outside the codebook are `model.decode`'s to report.)"""
    recorded = token_file.metadata
    expected = {"codebook_size": config.codebook_size, "num_latent_tokens": config.num_latent_tokens}
    mismatches = [f"{name} {recorded[name]} (the model: {value})" for name, value in expected.items()
                  if name in recorded and recorded[name] != value]  # fmt: skip
    ids = token_file.token_ids
    model_shape = list(token_shape(config))
    if not mismatches and len(ids) and (ids.ndim != len(model_shape) + 1 or list(ids.shape[2:]) != model_shape[1:]):
        mismatches.append(f"ids of shape {list(ids.shape[1:])} per image (the model: {model_shape})")
    if mismatches:
        writer = f" by {recorded['model']}" if "model" in recorded else ""
        raise ValueError(
            f"{source} was written{writer} with {', '.join(mismatches)}: decode it with the model that encoded it."
        )
    if len(ids):
        check_num_tokens(config, ids.shape[1], f"{source} holds {ids.shape[1]} tokens per image")


def png_names(names: Sequence[str]) -> list[str]:
    """Relative PNG file names for images named `names` (paths): the directories all names share dropped, the
    suffix replaced by `.png`; no absolute paths or `..` (a name cannot point outside the output folder). Names that
    would collide get their row number: `photo-3.png`."""
    parts = [[part for part in PurePath(name).parts if part not in ("..", ".", PurePath(name).anchor)]
             for name in names]  # fmt: skip
    folders = [tuple(part[:-1]) for part in parts]
    shared = len(os.path.commonprefix(folders)) if folders else 0
    relative = [PurePath(*part[shared:]) if part else PurePath(str(index)) for index, part in enumerate(parts)]
    pngs = [str(path.with_suffix(".png")) for path in relative]
    counts = Counter(pngs)
    return [
        str(PurePath(png).with_name(f"{PurePath(png).stem}-{index}.png")) if counts[png] > 1 else png
        for index, png in enumerate(pngs)
    ]
