"""`hf-vitvq pretokenize`: ids equal to `model.encode` of the same crops, labels and keys of every kind of source,
two processes covering the input exactly once, resuming after a kill to the same files, refusing another run's
output, skipped images, and pushing to (a local fake) Hub."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from conftest import run_on_two_cpu_processes
from fake_hub import fake_hub_fixture  # noqa: F401 - fixture `fake_hub`
from PIL import Image
from test_cli import run_cli, save_tiny_model, tiny_model_dir_fixture  # noqa: F401 - fixture `tiny_model_dir`

from hf_vitvq import ViTVQImageProcessor, ViTVQModel
from hf_vitvq.token_files import weights_sha256
from hf_vitvq.training.image_shards import AUGMENTATIONS
from hf_vitvq.training.pretokenize import INFO_FILE


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch) -> None:
    """`load_dataset` caches under the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def copy_photos(photo_paths: list[Path], folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for path in photo_paths[:count]:
        shutil.copy(path, folder)
    return folder


def load_output(folder: Path) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_dir=str(folder), split="train")


def output_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def pretokenize_argv(model_dir: Path, data_dir: Path, output_dir: Path, *extra: object) -> list:
    return ["pretokenize", model_dir, "--train_data_dir", data_dir, "--output_dir", output_dir, *extra]


def ten_crops(processor: ViTVQImageProcessor, image: Image.Image, size: int) -> torch.Tensor:
    """LlamaGen's ten crops, written out: resize and centre-crop to int(1.1 * size), then the four corners and the
    centre (torchvision's offsets), then their mirror images."""
    large = int(1.1 * size)
    pixels = processor(image, size={"shortest_edge": large}, crop_size={"height": large, "width": large},
                       return_tensors="pt").pixel_values[0]  # fmt: skip
    margin, center = large - size, int(round((large - size) / 2))
    corners = [(0, 0), (0, margin), (margin, 0), (margin, margin), (center, center)]
    crops = torch.stack([pixels[:, top : top + size, left : left + size] for top, left in corners])
    return torch.cat([crops, crops.flip(-1)])


def reference_views(processor: ViTVQImageProcessor, path: Path, augment: str, size: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    if augment == "ten_crop":
        return ten_crops(processor, image, size)
    center = processor(image, return_tensors="pt").pixel_values
    return torch.cat([center, center.flip(-1)]) if augment == "flip" else center


@pytest.mark.parametrize("augment, workers", [("none", 2), ("flip", 0), ("ten_crop", 0)])
def test_ids_equal_model_encode_of_the_same_crops(tiny_model_dir, photo_paths, tmp_path, capsys, augment, workers):
    photos = copy_photos(photo_paths, tmp_path / "photos", 7)
    output = tmp_path / "tokens"
    argv = pretokenize_argv(tiny_model_dir, photos, output, "--shard_size", 3, "--batch_size", 2, "--augment", augment,
                            "--num_workers", workers)  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    num_views = len(AUGMENTATIONS[augment])
    assert f"7 images ({7 * num_views} rows) in 3 shards" in out
    assert sorted(path.name for path in output.glob("*.parquet")) == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)
    ]

    rows = load_output(output)
    assert set(rows.column_names) == {"key", "token_ids"} | ({"view"} if num_views > 1 else set())
    if num_views > 1:
        assert rows.features["view"].names == list(AUGMENTATIONS[augment])
    model, processor = (
        ViTVQModel.from_pretrained(tiny_model_dir).eval(),
        ViTVQImageProcessor.from_pretrained(tiny_model_dir),
    )
    files = sorted(photos.iterdir())
    assert rows["key"] == [path.name for path in files for _ in range(num_views)]
    views = torch.cat([reference_views(processor, path, augment, 32) for path in files])
    assert torch.equal(torch.tensor(rows["token_ids"]), model.encode(views))

    info = json.loads((output / INFO_FILE).read_text())
    assert info["complete"] and info["num_images"] == 7 and info["num_rows"] == 7 * num_views
    assert info["codebook_size"] == 1024 and info["tokens_per_image"] == 32 and info["augment"] == augment
    assert info["model"] == str(tiny_model_dir) and info["label"] is None and info["num_skipped"] == 0


def test_two_processes_cover_the_input_exactly_once_and_write_what_one_process_writes(
    tiny_model_dir, photo_paths, tmp_path, capsys
):
    photos = copy_photos(photo_paths, tmp_path / "photos", 20)
    argv = pretokenize_argv(tiny_model_dir, photos, tmp_path / "two", "--shard_size", 3, "--num_workers", 1)
    result = run_on_two_cpu_processes(["-m", "hf_vitvq.cli", *map(str, argv)], cwd=tmp_path)
    assert "process 0 of 2: wrote 4 of the 7 shards" in result.stderr
    assert "process 1 of 2: wrote 3 of the 7 shards" in result.stderr

    keys = load_output(tmp_path / "two")["key"]
    assert sorted(keys) == sorted(path.name for path in photos.iterdir()) and len(set(keys)) == len(keys)

    code, _, err = run_cli(pretokenize_argv(tiny_model_dir, photos, tmp_path / "one", "--shard_size", 3,
                                            "--num_workers", 0), capsys)  # fmt: skip
    assert code == 0, err
    assert output_files(tmp_path / "two") == output_files(tmp_path / "one")


def test_killed_after_the_first_shard_the_rerun_writes_the_same_files(tiny_model_dir, photo_paths, tmp_path, capsys):
    photos = copy_photos(photo_paths, tmp_path / "photos", 24)
    argv = pretokenize_argv(tiny_model_dir, photos, tmp_path / "killed", "--shard_size", 2, "--batch_size", 1,
                            "--num_workers", 0)  # fmt: skip
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "hf_vitvq.cli", *map(str, argv)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((tmp_path / "killed").glob("train-*.parquet")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no shard written in 300 s"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    written = sorted(path.name for path in (tmp_path / "killed").glob("train-*.parquet"))
    assert 1 <= len(written) < 12, written  # killed after its first shard, not after its last
    (tmp_path / "killed" / ".train-00011-of-00012.parquet.tmp-99999").write_bytes(b"half a file")  # killed mid-write

    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"({12 - len(written)} shards written now, {len(written)} found complete)" in out
    code, _, err = run_cli(pretokenize_argv(tiny_model_dir, photos, tmp_path / "uninterrupted", "--shard_size", 2),
                           capsys)  # fmt: skip
    assert code == 0, err
    assert output_files(tmp_path / "killed") == output_files(tmp_path / "uninterrupted")  # the temporary file is gone


def test_another_runs_output_is_refused_unless_overwrite(tiny_model_dir, photo_paths, tmp_path, capsys):
    photos = copy_photos(photo_paths, tmp_path / "photos", 6)
    output = tmp_path / "tokens"
    assert run_cli(pretokenize_argv(tiny_model_dir, photos, output, "--shard_size", 3), capsys)[0] == 0
    code, out, _ = run_cli(pretokenize_argv(tiny_model_dir, photos, output, "--shard_size", 3), capsys)
    assert code == 0 and "(0 shards written now, 2 found complete)" in out

    code, _, err = run_cli(pretokenize_argv(tiny_model_dir, photos, output, "--shard_size", 3, "--augment", "flip"),
                           capsys)  # fmt: skip
    assert code == 2 and "was written with other settings" in err and "--overwrite" in err
    code, _, err = run_cli(pretokenize_argv(tiny_model_dir, photos, output, "--shard_size", 2), capsys)
    assert code == 2 and "train-00000-of-00002.parquet is not one of the 3 shards of this run" in err

    code, _, err = run_cli(pretokenize_argv(tiny_model_dir, photos, output, "--shard_size", 2, "--overwrite"), capsys)
    assert code == 0, err
    assert sorted(path.name for path in output.glob("*.parquet")) == [f"train-0000{i}-of-00003.parquet" for i in
                                                                      range(3)]  # fmt: skip


def image_table(photo_paths: list[Path], folder: Path, rows_per_file: int) -> Path:
    """A parquet image dataset in two files (a stream of two shards), with a `ClassLabel` column and one undecodable
    image (row 3)."""
    images = [{"bytes": path.read_bytes(), "path": None} for path in photo_paths[: 2 * rows_per_file]]
    images[3] = {"bytes": b"not an image", "path": None}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["indoor", "outdoor"])})  # fmt: skip
    table = datasets.Dataset.from_dict(
        {"image": images, "caption": ["x"] * len(images), "label": [i % 2 for i in range(len(images))]}, features
    )
    folder.mkdir()
    for index in range(2):
        table.shard(2, index, contiguous=True).to_parquet(folder / f"part-{index}.parquet")
    return folder


def test_dataset_sources_give_keys_labels_and_the_same_ids_streamed_or_not(tiny_model_dir, photo_paths, tmp_path,
                                                                           capsys):  # fmt: skip
    source = image_table(photo_paths, tmp_path / "source", rows_per_file=5)
    base = ["pretokenize", tiny_model_dir, "--dataset_name", "parquet", "--data_files", str(source / "*.parquet")]
    runs = {
        "streamed": ["--output_dir", tmp_path / "streamed", "--num_workers", 2],
        "map_style": ["--output_dir", tmp_path / "map_style", "--no_streaming", "--shard_size", 4],
        "first_6": ["--output_dir", tmp_path / "first_6", "--max_samples", 6],
    }
    for name, extra in runs.items():
        code, out, err = run_cli([*base, *extra], capsys)
        assert code == 0, err
        assert "Skipped 1 of" in err, name
    streamed, map_style, first_6 = (load_output(tmp_path / name) for name in runs)
    assert streamed["key"] == ["0-0", "0-1", "0-2", "0-4", "1-0", "1-1", "1-2", "1-3", "1-4"]  # shard-position
    assert map_style["key"] == ["0", "1", "2", "4", "5", "6", "7", "8", "9"]  # index in the dataset
    assert first_6["key"] == ["0", "1", "2", "4", "5"]
    assert streamed.features["label"] == map_style.features["label"] == datasets.ClassLabel(names=["indoor", "outdoor"])
    assert streamed["label"] == map_style["label"] == [0, 1, 0, 0, 1, 0, 1, 0, 1]
    assert streamed["token_ids"] == map_style["token_ids"] and first_6["token_ids"] == map_style["token_ids"][:5]
    info = json.loads((tmp_path / "map_style" / INFO_FILE).read_text())
    assert info["label"] == {"column": "label", "source": "label", "names": ["indoor", "outdoor"]}
    assert info["source"]["image_column"] == "image" and info["num_skipped"] == 1 and info["skipped"] == ["3"]
    assert json.loads((tmp_path / "streamed" / INFO_FILE).read_text())["skipped"] == ["0-3"]


def test_class_subfolders_give_labels_and_unreadable_images_are_skipped(tiny_model_dir, photo_paths, tmp_path, capsys):
    photos = tmp_path / "photos"
    copy_photos(photo_paths[:2], photos / "cats", 2)
    copy_photos(photo_paths[2:3], photos / "dogs", 1)
    (photos / "dogs" / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (photos / "dogs" / "zz-empty.png").write_bytes(b"")
    code, out, err = run_cli(pretokenize_argv(tiny_model_dir, photos, tmp_path / "tokens", "--shard_size", 3), capsys)
    assert code == 0, err
    assert "3 images (3 rows) in 2 shards" in out and "Skipped 2 of 5 files" in err
    rows = load_output(tmp_path / "tokens")  # the second shard holds no image: an empty file that still loads
    assert rows["label"] == [0, 0, 1] and rows.features["label"].names == ["cats", "dogs"]
    assert rows["key"][2].startswith("dogs/")
    info = json.loads((tmp_path / "tokens" / INFO_FILE).read_text())
    assert info["label"] == {"column": "label", "source": "subfolders", "names": ["cats", "dogs"]}
    assert info["skipped"] == ["dogs/zz-broken.jpg", "dogs/zz-empty.png"]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    code, _, err = run_cli(pretokenize_argv(tiny_model_dir, broken, tmp_path / "none"), capsys)
    assert code == 1 and "Skipped 1 of 1 files" in err and "Traceback" not in err


def test_push_to_hub_uploads_the_shards_and_info_as_a_dataset_repo(tiny_model_dir, photo_paths, tmp_path, capsys,
                                                                     fake_hub):  # fmt: skip
    photos = copy_photos(photo_paths, tmp_path / "photos", 4)
    output = tmp_path / "tokens"
    code, out, err = run_cli(pretokenize_argv(tiny_model_dir, photos, output, "--shard_size", 2, "--push_to_hub",
                                              "org/photo-tokens"), capsys)  # fmt: skip
    assert code == 0, err
    assert "Pushed:" in out
    assert fake_hub.repos["datasets/org/photo-tokens"] == output_files(output)
    assert fake_hub.unhandled == [] and fake_hub.errors == []


@pytest.mark.parametrize("pixel_value_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_worker_crops_give_the_processors_pixel_values_bit_for_bit(photo_paths, tmp_path, pixel_value_range):
    """The data path (uint8 crops in the workers, a table lookup on the device) against `processor(image)`: real photos
    (downscaled), an odd-sized image (upscaled) and a grayscale one."""
    from hf_vitvq import ViTVQConfig
    from hf_vitvq.training.image_shards import ShardBatchDataset, file_shards, pixel_value_table, to_pixel_values

    generator = torch.Generator().manual_seed(0)
    odd = torch.randint(0, 256, (21, 45, 3), dtype=torch.uint8, generator=generator).numpy()
    Image.fromarray(odd).save(tmp_path / "odd.png")
    Image.fromarray(odd[..., 0]).save(tmp_path / "gray.png")
    files = [*map(str, photo_paths[:6]), str(tmp_path / "odd.png"), str(tmp_path / "gray.png")]
    config = ViTVQConfig.from_preset("tiny", image_size=48, patch_size=8, pixel_value_range=pixel_value_range)
    processor = ViTVQImageProcessor.for_config(config)
    batch, end = ShardBatchDataset(file_shards(files, files, shard_size=8), processor, 48, batch_size=8)
    assert batch.keys == files and not batch.last and end.keys == [] and end.last  # a full batch, then the shard's end
    expected = processor([Image.open(path) for path in files], return_tensors="pt").pixel_values
    assert torch.equal(to_pixel_values(batch.crops, pixel_value_table(processor)), expected)


def test_the_model_runs_on_the_cores_the_workers_leave_and_gets_them_back(monkeypatch):
    from hf_vitvq.training.image_shards import cores_per_process, cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with cpu_threads(torch.device("cpu"), num_workers=1):
        assert torch.get_num_threads() == max(1, cores_per_process() - 1)
    assert torch.get_num_threads() == before
    with cpu_threads(torch.device("cpu"), num_workers=0), cpu_threads(torch.device("cuda"), num_workers=4):
        assert torch.get_num_threads() == before  # no workers, or the model on a GPU: torch's own choice
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    with cpu_threads(torch.device("cpu"), num_workers=cores_per_process()):
        assert torch.get_num_threads() == before  # the user's choice


def test_a_model_with_dead_code_restarts_pretokenizes_and_its_weights_digest_follows_every_buffer(
    photo_paths, tmp_path, capsys
):
    """Dead-code restarts save a 0-dim `step` buffer with the model (the demo's recipe): the weights digest written
    into the info file must cover it, not crash on it."""
    model_dir = save_tiny_model(tmp_path / "restarting", dead_code_steps=10)
    model = ViTVQModel.from_pretrained(model_dir)
    assert model.quantize.usage.step.dim() == 0 and "quantize.usage.step" in model.state_dict()
    photos = copy_photos(photo_paths, tmp_path / "photos", 2)
    code, _, err = run_cli(pretokenize_argv(model_dir, photos, tmp_path / "tokens"), capsys)
    assert code == 0, err
    digest = json.loads((tmp_path / "tokens" / INFO_FILE).read_text())["weights_sha256"]
    assert digest == weights_sha256(model)
    model.quantize.usage.step += 1
    assert weights_sha256(model) != digest
