"""The input pipeline in DataLoader workers: sharding per process and worker, exact resume with workers, skipped-file
reports gathered from the workers, draft JPEG decoding, and validation through the centre-crop reader of `eval` and
`pretokenize` (`image_shards`)."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from test_training_parts import make_image_folder

from hf_vitvq import ViTVQImageProcessor
from hf_vitvq.pixel_conversion import normalize_pixels
from hf_vitvq.training.data import (
    DRAFT_MIN_OUTPUT_RATIO,
    PREFETCH_BATCHES,
    TrainingImageStream,
    _worker_loader,
    decode_image,
    decode_random_crop,
    draft_reduction,
    image_folder_stream,
    rgb_pixels,
)
from hf_vitvq.training.image_shards import (
    ShardBatchDataset,
    dataset_shards,
    pixel_value_table,
    shard_batch_loader,
    to_pixel_values,
    validation_batches,
)
from hf_vitvq.training.worker_memory import SharedBatchBuffers, freeze_inherited_objects


def make_stream(folder: Path, num_workers: int, rank: int = 0, world_size: int = 1, **kwargs) -> TrainingImageStream:
    kwargs = {"shuffle_buffer_size": 4, "crop_scale": (0.2, 1.0), **kwargs}
    return TrainingImageStream(image_folder_stream(folder), "image", (-1.0, 1.0), 8, seed=3, rank=rank,
                               world_size=world_size, num_workers=num_workers, **kwargs)  # fmt: skip


def read(stream: TrainingImageStream, count: int, batch_size: int) -> list:
    batches = stream.batches(batch_size)
    try:
        return [next(batches) for _ in range(count)]
    finally:
        batches.close()  # stops the workers now


# ---------------------------------------------------------------------------------------------- sharding


def test_two_workers_of_two_processes_share_out_every_epoch(tmp_path):
    """16 files, 2 processes x 2 workers: each worker reads 4 per epoch (2 batches of 2). In every epoch the four
    readers' files are disjoint and together all 16; the files move between readers from one epoch to the next."""
    folder = make_image_folder(tmp_path / "images", 16)
    files_by_epoch: dict[int, dict[tuple[int, int], list[str]]] = {}
    for rank in (0, 1):
        for batch in read(make_stream(folder, num_workers=2, rank=rank, world_size=2), count=12, batch_size=2):
            epoch = batch.position["epoch"]  # the position right after the batch: still in the batch's epoch
            files_by_epoch.setdefault(epoch, {}).setdefault((rank, batch.worker), []).extend(batch.names)
    assert sorted(files_by_epoch) == [0, 1, 2]
    for epoch, readers in files_by_epoch.items():
        assert sorted(readers) == [(0, 0), (0, 1), (1, 0), (1, 1)], epoch
        names = [name for files in readers.values() for name in files]
        assert len(names) == 16 and set(names) == {f"img{index:03d}.png" for index in range(16)}, epoch
    assert files_by_epoch[0][0, 0] != files_by_epoch[1][0, 0] or files_by_epoch[0][1, 1] != files_by_epoch[1][1, 1]


def test_workers_are_capped_at_the_shards_of_the_process(tmp_path, caplog):
    folder = make_image_folder(tmp_path / "images", 3)
    with caplog.at_level(logging.WARNING, logger="hf_vitvq.training.data"):
        stream = make_stream(folder, num_workers=5)
    assert stream.num_workers == 3 and "has 3 shard(s)" in caplog.text and "instead of 5" in caplog.text
    assert {batch.worker for batch in read(stream, count=6, batch_size=2)} == {0, 1, 2}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batches_are_the_seeded_crops_normalised(tmp_path, num_workers):
    """Unshuffled, the i-th image of worker 0 in epoch 0 is file i, cropped with the generator seeded from (seed,
    epoch, rank, worker, i): each batch holds exactly those crops, as `normalize_pixels` maps them, in order."""
    folder = make_image_folder(tmp_path / "images", 6)
    files = sorted(folder.iterdir())
    batches = read(make_stream(folder, num_workers=num_workers, shuffle_buffer_size=0), count=3, batch_size=2)
    pixel_values_in_order = torch.cat([batch.pixel_values for batch in batches])
    for index, (path, pixel_values) in enumerate(zip(files, pixel_values_in_order, strict=True)):
        rng = np.random.default_rng([3, 0, 0, 0, index])
        expected = decode_random_crop({"bytes": None, "path": str(path)}, 8, (0.2, 1.0), True, rng)
        chw = torch.from_numpy(np.array(expected)).permute(2, 0, 1)
        assert torch.equal(pixel_values, normalize_pixels(chw, (-1.0, 1.0))), path.name
    assert [name for batch in batches for name in batch.names] == [path.name for path in files]


def test_rgb_pixels_views_the_image_memory_where_pillow_exports_it_and_copies_otherwise(monkeypatch):
    small = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    pixels = rgb_pixels(small)
    assert pixels.dtype == torch.uint8 and torch.equal(pixels, torch.from_numpy(np.array(small)))
    if hasattr(small, "__arrow_c_array__"):  # Pillow >= 11.2: a view of its 4-byte pixels, nothing copied
        assert pixels.stride() == (7 * 4, 4, 1)
    # rows over several of Pillow's 16 MiB blocks cannot be exported: copied
    large = PIL.Image.new("RGB", (4096, 1100), (10, 20, 30))
    large.putpixel((4095, 1099), (1, 2, 3))
    pixels = rgb_pixels(large)
    assert pixels.shape == (1100, 4096, 3) and pixels.is_contiguous()
    assert pixels[0, 0].tolist() == [10, 20, 30] and pixels[-1, -1].tolist() == [1, 2, 3]
    # a Pillow without the Arrow export (before 11.2): copied
    monkeypatch.delattr(PIL.Image.Image, "__arrow_c_array__", raising=False)
    pixels = rgb_pixels(small)
    assert pixels.is_contiguous() and torch.equal(pixels, torch.from_numpy(np.array(small)))


# ---------------------------------------------------------------------------------------------- worker memory


def test_workers_reuse_the_batch_buffers_let_go_of_and_never_overwrite_a_held_batch(tmp_path):
    """One worker, 12 batches. Dropped as soon as they are copied, the batches come back in the worker's few shared
    buffers over and over; all held at once, the buffers run out and the worker makes new tensors. Both ways the
    pixels are the same: nothing a caller still holds is written over."""
    folder = make_image_folder(tmp_path / "images", 10)
    copies, buffers = [], []
    batches = make_stream(folder, num_workers=1).batches(2)
    for _ in range(12):
        batch = next(batches)
        copies.append(batch.pixel_values.clone())
        buffers.append(batch.buffer)
        del batch  # the buffer is free again
    batches.close()
    held = read(make_stream(folder, num_workers=1), count=12, batch_size=2)
    for copy, batch in zip(copies, held, strict=True):
        assert torch.equal(batch.pixel_values, copy)
    per_worker = PREFETCH_BATCHES + 2
    assert [batch.buffer for batch in held] == list(range(per_worker)) + [None] * (12 - per_worker)
    assert None not in buffers and set(buffers) <= set(range(per_worker))
    with pytest.raises(ValueError, match="at least one worker and one buffer per worker, got num_workers=0"):
        SharedBatchBuffers(0, per_worker)


def test_workers_stop_collecting_what_they_inherited():
    """Both loaders start their workers with `gc.freeze`, which leaves the objects inherited from this process out of
    every collection there (they are many: torch, numpy, PIL, datasets...)."""
    training = _worker_loader(lambda worker: iter(()), 1, 1, list, pin_memory=False)
    reading = shard_batch_loader(ShardBatchDataset([], ViTVQImageProcessor(), 8), num_workers=1)
    assert training.worker_init_fn is freeze_inherited_objects and reading.worker_init_fn is freeze_inherited_objects
    frozen = torch.utils.data.DataLoader(_FrozenCount(), batch_size=None, num_workers=1,
                                         worker_init_fn=freeze_inherited_objects)  # fmt: skip
    assert next(iter(frozen)) > 10_000


class _FrozenCount(torch.utils.data.IterableDataset):
    def __iter__(self):
        import gc

        yield gc.get_freeze_count()


# ---------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact_at_any_batch_boundary(tmp_path, num_workers):
    """7 files and 3 undecodable ones, batches of 3 over several epochs; resumed from the state after batch 1, 2, 3 or
    5 (with 2 workers: after either worker's batch, and with the workers' epochs apart), the stream gives the same
    batches, bit for bit. Reading batches leaves the global torch generator alone (a resumed run restores it)."""
    folder = make_image_folder(tmp_path / "images", 7, bad=True)
    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    expected = read(make_stream(folder, num_workers), count=9, batch_size=3)
    assert torch.equal(torch.rand(1), expected_draw)
    assert {batch.worker for batch in expected} == set(range(max(1, num_workers)))
    for boundary in (1, 2, 3, 5):
        resumed = make_stream(folder, num_workers)
        resumed.load_state_dict(json.loads(json.dumps(expected[boundary - 1].stream_state)))  # as a checkpoint
        for batch, again in zip(expected[boundary:], read(resumed, count=9 - boundary, batch_size=3), strict=True):
            assert again.names == batch.names and again.worker == batch.worker, boundary
            assert torch.equal(again.pixel_values, batch.pixel_values), boundary
            assert again.stream_state == batch.stream_state, boundary
    assert expected[-1].stream_state["workers"][0]["epoch"] >= 2  # several epochs


def test_resume_with_another_number_of_workers_is_refused(tmp_path):
    folder = make_image_folder(tmp_path / "images", 4)
    state = make_stream(folder, num_workers=2).state_dict()
    with pytest.raises(ValueError, match=r"written by 2 DataLoader worker\(s\) .* with 0: .*_num_workers 2"):
        make_stream(folder, num_workers=0).load_state_dict(state)
    older = {"epoch": 1, "examples_in_epoch": 3, "skipped_examples": 0, "skipped_names": []}  # one reader per process
    with pytest.raises(ValueError, match="written before the stream was read by DataLoader workers"):
        make_stream(folder, num_workers=0).load_state_dict(older)


# ---------------------------------------------------------------------------------------------- undecodable samples


def test_skipped_files_are_counted_once_from_the_workers(tmp_path, caplog):
    """3 undecodable files among 9, read by 2 workers over several epochs: counted and named once each (in the
    first epoch of the worker that met them), carried to the training process in the batches, warned about there."""
    folder = make_image_folder(tmp_path / "images", 6, bad=True)
    stream = make_stream(folder, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="hf_vitvq.training.data"):
        batches = read(stream, count=8, batch_size=3)  # 24 images: 4 epochs of 6
    assert min(position["epoch"] for position in batches[-1].stream_state["workers"]) >= 1  # both past epoch 0
    bad = ["0_empty.jpg", "0_not_an_image.png", "0_truncated.jpg"]
    assert sorted(name for batch in batches for name in batch.skipped) == bad
    assert stream.skipped_examples == 3 and sorted(stream.skipped_names) == bad
    assert caplog.text.count("Skipped an undecodable sample") == 3 and "3 so far" in caplog.text
    assert all(len(batch.names) == 3 and not set(batch.names) & set(bad) for batch in batches)


def test_a_worker_meeting_only_undecodable_samples_stops_the_stream(tmp_path):
    folder = make_image_folder(tmp_path / "images", 0, bad=True)
    stream = make_stream(folder, num_workers=2, max_consecutive_failures=4)
    with pytest.raises(ValueError, match=r"4 training samples in a row could not be decoded on process 0, DataLoader"):
        read(stream, count=1, batch_size=2)


# ---------------------------------------------------------------------------------------------- draft decoding


def test_draft_reduction_keeps_the_crop_at_least_twice_the_output():
    assert DRAFT_MIN_OUTPUT_RATIO == 2
    assert [draft_reduction(side, 128) for side in (127, 511, 512, 1023, 1024, 2048, 9000)] == [1, 1, 2, 2, 4, 8, 8]
    assert draft_reduction(1199, 256) == 2  # a 1600x1200 photo's crop at 256 px: decoded at half scale


def psnr(a: PIL.Image.Image, b: PIL.Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def crop(path: Path, size: int, seed: int, draft: bool) -> PIL.Image.Image:
    value = {"bytes": path.read_bytes(), "path": None}
    return decode_random_crop(value, size, (0.8, 1.0), True, np.random.default_rng(seed), draft=draft)


def test_draft_decoding_matches_the_full_decode_on_photos_and_runs_only_where_the_rule_allows(photo_paths):
    """64 px crops of ~320 px photos are drafted at 1/2 scale (the crop's source region stays >= 128 px): within
    40 dB of the full decode on every photo, 45 dB on average (benchmarks/data_throughput.py measures more). 128 px
    crops of them are not drafted: bit-identical to the full decode, as are PNG sources."""
    values = [psnr(crop(path, 64, seed, True), crop(path, 64, seed, False))
              for seed, path in enumerate(photo_paths[:40])]  # fmt: skip
    assert all(np.isfinite(values)), "the rule should have drafted these"  # draft really ran: not bit-identical
    assert min(values) > 40 and np.mean(values) > 45, (min(values), np.mean(values))
    for seed, path in enumerate(photo_paths[:10]):
        assert np.array_equal(np.asarray(crop(path, 128, seed, True)), np.asarray(crop(path, 128, seed, False)))
    photo = PIL.Image.open(photo_paths[0])
    buffer = io.BytesIO()
    photo.resize((photo.width * 4, photo.height * 4)).save(buffer, format="PNG")  # large enough to draft a JPEG
    big_png = {"bytes": buffer.getvalue(), "path": None}
    both = [decode_random_crop(big_png, 64, (0.8, 1.0), True, np.random.default_rng(0), draft=draft)
            for draft in (True, False)]  # fmt: skip
    assert np.array_equal(np.asarray(both[0]), np.asarray(both[1]))


# ---------------------------------------------------------------------------------------------- centre crops


@pytest.fixture(scope="module")
def photos_and_bad_files(tmp_path_factory, photo_paths) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for path in photo_paths[:7]:
        shutil.copy(path, folder / path.name)
    make_image_folder(folder, 0, bad=True, bad_prefix="zz_")  # after the photos in the sorted file list
    return folder


def test_centre_crops_read_by_workers_are_the_processor_output(photos_and_bad_files):
    """The reader that validation, `eval` and `pretokenize` share, on a stream of one file per shard, with 0 and 2
    workers: every decodable image once, keyed by its `name`, as `processor(image)` gives it (uint8 crops, then the
    table); the undecodable ones named in `skipped`."""
    processor = ViTVQImageProcessor.for_image_size(48)
    table = pixel_value_table(processor)
    files = sorted(path for path in photos_and_bad_files.iterdir() if not path.name.startswith("zz_"))
    expected = {path.name: processor(decode_image({"bytes": path.read_bytes(), "path": None}), return_tensors="pt")
                .pixel_values[0] for path in files}  # fmt: skip
    shards = dataset_shards(image_folder_stream(photos_and_bad_files), "image", None, shard_size=3, key_column="name")
    for num_workers in (0, 2):
        batches = list(shard_batch_loader(ShardBatchDataset(shards, processor, 48, batch_size=3), num_workers))
        keys = [key for batch in batches for key in batch.keys]
        assert sorted(keys) == sorted(expected), num_workers
        if num_workers == 0:
            assert keys == [path.name for path in files]  # shard after shard, in order
        for batch in filter(lambda batch: batch.keys, batches):
            assert batch.crops.dtype == torch.uint8 and batch.crops.shape[1:] == (3, 48, 48)
            pixel_values = to_pixel_values(batch.crops, table)
            assert torch.equal(pixel_values, torch.stack([expected[key] for key in batch.keys]))
        skipped = sorted(key for batch in batches for key in batch.skipped)
        assert skipped == ["zz_empty.jpg", "zz_not_an_image.png", "zz_truncated.jpg"], num_workers


def test_validation_batches_are_the_first_decodable_images(photos_and_bad_files):
    processor = ViTVQImageProcessor.for_image_size(32)
    files = sorted(path for path in photos_and_bad_files.iterdir() if not path.name.startswith("zz_"))[:5]
    images = [decode_image({"bytes": path.read_bytes(), "path": None}) for path in files]
    batches = validation_batches(image_folder_stream(photos_and_bad_files), "image", processor, limit=5, batch_size=2)
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert torch.equal(torch.cat(batches), processor(images, return_tensors="pt").pixel_values)


def test_validation_batches_stay_full_past_an_undecodable_image_and_name_it(photo_paths, tmp_path, caplog):
    """An undecodable file among the first images: skipped with a warning that names it, the next image takes its
    place in the batch."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in photo_paths[:5]:
        shutil.copy(path, folder / path.name)
    broken = f"{photo_paths[0].stem}_broken.jpg"  # sorts right after the first photo
    (folder / broken).write_bytes(b"not a jpeg")
    processor = ViTVQImageProcessor.for_image_size(32)
    with caplog.at_level("WARNING"):
        batches = validation_batches(image_folder_stream(folder), "image", processor, limit=4, batch_size=2)
    assert [len(batch) for batch in batches] == [2, 2]
    expected = processor([PIL.Image.open(path) for path in photo_paths[:4]], return_tensors="pt").pixel_values
    assert torch.equal(torch.cat(batches), expected)
    assert f"Skipped an undecodable validation image ({broken})" in caplog.text
