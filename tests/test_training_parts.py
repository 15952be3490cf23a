"""The pieces of training/: arguments, checkpoint folders, data streams, losses, model cards."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_script
from training_utils import TRAINING_DIR

from hf_vitvq import ViTVQImageProcessor, ViTVQModelOutput
from hf_vitvq.training import checkpointing
from hf_vitvq.training.arguments import parse_args
from hf_vitvq.training.data import (
    INTERLEAVED_SHARDS,
    TrainingImageStream,
    consecutive_parts,
    decode_image,
    decode_random_crop,
    find_image_column,
    image_folder_stream,
    image_folder_streams,
    load_streams,
)
from hf_vitvq.training.image_shards import validation_batches
from hf_vitvq.training.losses import LossWeights, TokenizerLoss

# ---------------------------------------------------------------------------------------------- arguments


def test_config_file_sets_flags_and_command_line_overrides_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.01\nmax_train_steps: 7\nuse_ema: true\nmodel_overrides: {codebook_size: 64}\n")
    model_args, data_args, args = parse_args(["--config", str(config), "--max_train_steps", "9"])
    assert args.learning_rate == 0.01 and args.use_ema is True
    assert args.max_train_steps == 9  # the command line wins
    assert json.loads(model_args.model_overrides) == {"codebook_size": 64}
    assert data_args.dataset_name is None


def test_shipped_configs_parse(tmp_path):
    configs = sorted((TRAINING_DIR / "configs").glob("*.yaml"))
    tokenizer_configs = [path for path in configs if not path.name.startswith("prior_")]
    assert len(tokenizer_configs) >= 6  # demo, S-128, B-64, L-32 and TiTok's two recipes
    for path in tokenizer_configs:
        model_args, _, args = parse_args(["--config", str(path)])
        assert args.max_train_steps > 0, path
    train_prior = load_script(TRAINING_DIR / "train_prior.py", "train_prior")  # the priors' configs are its own
    for path in [path for path in configs if path.name.startswith("prior_")]:
        model_args, _, args = train_prior.parse_args(["--config", str(path), "--train_data_dir", str(tmp_path)])
        assert model_args.prior in ("maskgit", "ar") and args.max_train_steps > 0, path


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--push_to_hub"], "--hub_model_id"),
        (["--mixed_precision", "fp8"], "no, fp16 or bf16"),
        (["--dataset_name", "x", "--train_data_dir", "y"], "not both"),
        (["--checkpoints_total_limit", "0"], "checkpoints_total_limit"),
        (["--model_overrides", "[1]"], "JSON object"),
        (["--random_crop_scale_min", "0.9", "--random_crop_scale_max", "0.5"], "random_crop_scale"),
    ],
)
def test_bad_arguments_say_what_to_pass(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_args(argv)


def test_unknown_flag_in_config_file_is_an_error(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"learning_rate": 1e-3, "num_epochs": 3}))
    with pytest.raises(ValueError, match=r"unknown flags \['num_epochs'\]"):
        parse_args(["--config", str(config)])


# ---------------------------------------------------------------------------------------------- checkpoints


def test_latest_ignores_incomplete_folders_and_prune_keeps_newest(tmp_path):
    for step in (5, 10, 40):
        (tmp_path / f"checkpoint-{step}").mkdir()
    checkpointing.incomplete_dir(tmp_path, 50).mkdir()  # a crash while writing step 50
    (tmp_path / "checkpoint-final-notes").mkdir()
    assert checkpointing.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-40"
    assert checkpointing.remove_incomplete(tmp_path) == [tmp_path / "checkpoint-50.incomplete"]
    assert checkpointing.surplus_checkpoints(tmp_path, keep=None) == []
    surplus = checkpointing.surplus_checkpoints(tmp_path, keep=2)
    assert surplus == [tmp_path / "checkpoint-5"]
    checkpointing.remove_checkpoints(surplus)
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint-10", "checkpoint-40", "checkpoint-final-notes"}


def test_publish_renames_the_complete_folder(tmp_path):
    checkpointing.incomplete_dir(tmp_path, 3).mkdir()
    (checkpointing.incomplete_dir(tmp_path, 3) / "model.safetensors").write_bytes(b"x")
    final = checkpointing.publish(tmp_path, 3)
    assert final == tmp_path / "checkpoint-3" and (final / "model.safetensors").read_bytes() == b"x"
    assert checkpointing.checkpoint_step(final) == 3
    with pytest.raises(ValueError, match="checkpoint-500"):
        checkpointing.checkpoint_step(tmp_path / "final")


# ---------------------------------------------------------------------------------------------- data


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_image_folder(folder: Path, count: int, bad: bool = False, bad_prefix: str = "0_") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        rng = np.random.default_rng(index)
        coarse = PIL.Image.fromarray(rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8))  # smooth: learnable
        coarse.resize((36, 24 + index % 5), PIL.Image.Resampling.BICUBIC).save(folder / f"img{index:03d}.png")
    if bad:  # with the default prefix they sort first, so that the first batch meets them
        buffer = io.BytesIO()
        PIL.Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="JPEG")
        (folder / f"{bad_prefix}truncated.jpg").write_bytes(buffer.getvalue()[:200])
        (folder / f"{bad_prefix}empty.jpg").write_bytes(b"")
        (folder / f"{bad_prefix}not_an_image.png").write_text("hello")
    return folder


def test_decode_image_returns_none_for_undecodable_samples():
    assert decode_image({"bytes": png_bytes((1, 2, 3)), "path": None}).getpixel((0, 0)) == (1, 2, 3)
    assert decode_image({"bytes": b"", "path": None}) is None
    assert decode_image({"bytes": b"GIF89a not really", "path": None}) is None
    assert decode_image({"bytes": png_bytes((1, 2, 3))[:60], "path": None}) is None
    assert decode_image(PIL.Image.new("L", (4, 4), 9)).mode == "RGB"


def test_random_resized_crop_is_deterministic_given_the_generator():
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    crops = [decode_random_crop(image, 16, (0.1, 0.5), True, np.random.default_rng(7)) for _ in range(2)]
    assert crops[0].size == (16, 16) and np.array_equal(np.asarray(crops[0]), np.asarray(crops[1]))
    other = decode_random_crop(image, 16, (0.1, 0.5), True, np.random.default_rng(8))
    assert not np.array_equal(np.asarray(crops[0]), np.asarray(other))
    assert (
        decode_random_crop({"bytes": b"not an image", "path": None}, 16, (0.1, 0.5), True, np.random.default_rng(7))
        is None
    )


def test_image_folder_stream_has_one_shard_per_file(tmp_path):
    stream = image_folder_stream(make_image_folder(tmp_path / "images", 5))
    assert stream.num_shards == 5
    assert [example["name"] for example in stream] == [f"img{i:03d}.png" for i in range(5)]
    with pytest.raises(ValueError, match="no image files"):
        image_folder_stream(tmp_path / "empty")


def test_image_folder_holds_out_files_spread_over_it_that_no_process_trains_on(tmp_path):
    train, validation, count = image_folder_streams(make_image_folder(tmp_path / "images", 12), num_validation=3)
    held_out = [example["name"] for example in validation]
    assert held_out == ["img000.png", "img004.png", "img008.png"] and count == 3
    epochs = {}
    for rank in (0, 1):  # a buffer of 1 shuffles only the order of the shards (files)
        stream = TrainingImageStream(train, "image", (-1.0, 1.0), 8, seed=0, rank=rank,
                                     world_size=2, shuffle_buffer_size=1)  # fmt: skip
        epochs[rank] = [example["name"] for example in stream.dataset]
    assert not set(epochs[0]) & set(epochs[1]) and not set(epochs[0] + epochs[1]) & set(held_out)
    assert len(epochs[0]) + len(epochs[1]) == 9
    assert any(epoch != sorted(epoch) for epoch in epochs.values())
    with pytest.raises(ValueError, match="has 12 image files"):
        image_folder_streams(tmp_path / "images", num_validation=12)


def test_files_fill_the_shuffle_buffer_one_at_a_time_in_the_shuffled_shard_order(tmp_path):
    """A folder's shard is one file: the shard order mixes them, and interleaving shards would only cost a thread
    hand-off per example. The order then follows the shuffled shards alone (a buffer of 1 keeps it)."""
    _, data_args, _ = parse_args(["--train_data_dir", str(make_image_folder(tmp_path / "images", 12))])
    data = load_streams(data_args, resolution=8)
    assert data.interleaved_shards == 1
    assert load_streams(parse_args([])[1], resolution=8).interleaved_shards == 1  # the embedded photos, one per shard
    orders = {}
    for interleaved in (1, 4):
        stream = TrainingImageStream(data.train, "image", (-1.0, 1.0), 8, seed=0, shuffle_buffer_size=1,
                                     interleaved_shards=interleaved)  # fmt: skip
        orders[interleaved] = [example["name"] for example in stream.dataset]
    assert sorted(orders[1]) == sorted(orders[4]) and orders[1] != orders[4]


def make_stream(folder: Path, rank: int = 0, world_size: int = 1, buffer: int = 4) -> TrainingImageStream:
    return TrainingImageStream(
        image_folder_stream(folder), "image", (-1.0, 1.0), 8,
        seed=3, rank=rank, world_size=world_size, shuffle_buffer_size=buffer, crop_scale=(0.2, 1.0),
    )  # fmt: skip


def test_processes_read_disjoint_files(tmp_path):
    folder = make_image_folder(tmp_path / "images", 8)
    seen = []
    for rank in (0, 1):
        batches = make_stream(folder, rank=rank, world_size=2).batches(4)
        seen.append(set(next(batches).names))
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 8


def test_image_column_detection_and_errors():
    from datasets import Features, Image, Value

    assert find_image_column(Features({"img": Image(), "label": Value("int64")}), None) == "img"
    with pytest.raises(ValueError, match="no Image column.*--image_column"):
        find_image_column(Features({"text": Value("string")}), None)
    with pytest.raises(ValueError, match="2 Image columns"):
        find_image_column(Features({"a": Image(), "b": Image()}), None)
    with pytest.raises(ValueError, match="'photo' is not a column"):
        find_image_column(Features({"img": Image()}), "photo")


def parquet_args(data_files: str, **overrides):
    _, data_args, _ = parse_args(["--dataset_name", "parquet", "--data_files", data_files])
    for name, value in overrides.items():
        setattr(data_args, name, value)
    return data_args


def test_parquet_without_image_column_fails_before_training(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"]}).to_parquet(tmp_path / "text.parquet")
    with pytest.raises(ValueError, match="no Image column"):
        load_streams(parquet_args(str(tmp_path / "text.parquet")), resolution=8)


@pytest.mark.parametrize("streaming", [True, False])
def test_parquet_images_stream_and_hold_out_validation(tmp_path, streaming):
    import datasets

    images = [PIL.Image.new("RGB", (10, 12), (i * 20, 0, 0)) for i in range(6)]
    dataset = datasets.Dataset.from_dict({"picture": images, "label": list(range(6))})
    dataset = dataset.cast_column("picture", datasets.Image())
    dataset.to_parquet(tmp_path / "images.parquet")
    data_args = parquet_args(str(tmp_path / "images.parquet"), validation_images=2, streaming=streaming)
    # map-style data: streamed in shards
    train, validation, column, count, interleaved = load_streams(data_args, resolution=8)
    assert column == "picture" and count == 2
    assert interleaved == INTERLEAVED_SHARDS  # shards of many examples fill the shuffle buffer together
    assert [example["label"] for example in validation] == [0, 1]
    assert [example["label"] for example in train] == [2, 3, 4, 5]


def test_a_stream_in_one_shard_holds_out_validation_on_one_process_only(tmp_path):
    import datasets

    images = [PIL.Image.new("RGB", (10, 12), (i * 20, 0, 0)) for i in range(4)]
    datasets.Dataset.from_dict({"picture": images}).cast_column("picture", datasets.Image()).to_parquet(
        tmp_path / "images.parquet"
    )
    data_args = parquet_args(str(tmp_path / "images.parquet"), validation_images=2, streaming=True)
    with pytest.raises(ValueError, match="pass --validation_split, or --no_streaming"):
        load_streams(data_args, resolution=8, world_size=2)
    data_args.streaming = False  # map-style: rows are held out by index, on any number of processes
    train, validation, *_ = load_streams(data_args, resolution=8, world_size=2)
    assert len(list(validation)) == 2 and len(list(train)) == 2


def test_a_sharded_stream_holds_out_the_start_of_its_first_shard_on_every_process(tmp_path, caplog):
    import datasets
    from datasets.distributed import split_dataset_by_node

    for shard in range(4):
        labels = list(range(3 * shard, 3 * shard + 3))
        images = [PIL.Image.new("RGB", (10, 12), (label * 20, 0, 0)) for label in labels]
        dataset = datasets.Dataset.from_dict({"picture": images, "label": labels})
        dataset.cast_column("picture", datasets.Image()).to_parquet(tmp_path / f"part-{shard}.parquet")
    data_args = parquet_args(str(tmp_path / "part-*.parquet"), validation_images=2, streaming=True)
    train, validation, column, *_ = load_streams(data_args, resolution=8, world_size=2)
    assert [example["label"] for example in validation] == [0, 1]
    assert train.n_shards == 4  # so that 2 processes still read 2 whole shards each
    per_rank = [
        [example["label"] for example in split_dataset_by_node(train, rank=rank, world_size=2)] for rank in range(2)
    ]
    # every example but the held-out ones, once, in whole shards: 0 (less 0, 1) and 2 on rank 0, 1 and 3 on rank 1
    assert per_rank == [[2, 6, 7, 8], [3, 4, 5, 9, 10, 11]]
    # a shard holding fewer images than asked for: validation on what there is, and a warning that says so
    data_args.validation_images = 5
    _, short_validation, *_ = load_streams(data_args, resolution=8, world_size=2)
    processor = ViTVQImageProcessor(size={"height": 8, "width": 8})
    with caplog.at_level("WARNING"):
        batches = validation_batches(short_validation, column, processor, limit=5, batch_size=2)
    assert sum(len(batch) for batch in batches) == 3
    assert "Validating on 3 images" in caplog.text and "asked: 5" in caplog.text


def test_consecutive_parts_keep_the_shard_order():
    import datasets

    files = [f"file-{index}" for index in range(13)]
    stream = datasets.IterableDataset.from_generator(
        lambda files: ({"file": name} for name in files), gen_kwargs={"files": files}
    )
    parts = consecutive_parts(stream, max_shards=3)
    assert [part.n_shards for part in parts] == [2, 2, 3, 3, 3]  # halves of 13 -> 7 and 6 -> ...
    assert [example["file"] for part in parts for example in part] == files
    assert [part.n_shards for part in consecutive_parts(stream, max_shards=1)] == [1] * 13


def test_holding_out_the_first_of_a_thousand_shards_opens_few_files(tmp_path):
    """Each IterableDataset holds a file descriptor once torch is imported: under a limit of 256 open files, one
    stream per shard fails at a thousand shards."""
    script = tmp_path / "hold_out.py"
    script.write_text(
        textwrap.dedent(
            """
            import resource, sys
            import datasets, torch  # noqa: F401
            from hf_vitvq.training.data import hold_out_first_shard

            resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            stream = datasets.IterableDataset.from_generator(
                lambda files: ({"file": name} for name in files),
                features=datasets.Features({"file": datasets.Value("int64")}),
                gen_kwargs={"files": list(range(1000))},
            )
            train, validation = hold_out_first_shard(stream, 1)
            print(train.n_shards, [example["file"] for example in validation])
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1000", "[0]"]


def test_webdataset_shards_stream_with_detected_column_and_per_rank_shards(tmp_path):
    import tarfile

    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for index in range(3):
                members = {"jpg": png_bytes((shard * 100, index * 50, 0)), "cls": str(index).encode()}
                for suffix, data in members.items():  # (PNG bytes under .jpg: PIL reads by content)
                    info = tarfile.TarInfo(f"s{shard}{index}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    _, data_args, _ = parse_args(["--dataset_name", "webdataset", "--data_files", str(tmp_path / "shard-*.tar"),
                                  "--validation_split", "train"])  # fmt: skip
    train, _, column, *_ = load_streams(data_args, resolution=8)
    assert column == "jpg"
    names = [
        set(next(TrainingImageStream(train, column, (-1.0, 1.0), 8, seed=0, rank=rank,
                                     world_size=2, shuffle_buffer_size=0).batches(3)).names)
        for rank in (0, 1)
    ]  # fmt: skip
    assert names == [{"s00", "s01", "s02"}, {"s10", "s11", "s12"}]


# ---------------------------------------------------------------------------------------------- loss


def test_loss_composition_weights_every_term():
    images = torch.zeros(1, 3, 2, 2)
    output = ViTVQModelOutput(reconstruction=torch.full((1, 3, 2, 2), 0.5), quantizer_loss=torch.tensor(0.25))
    terms = TokenizerLoss(LossWeights(reconstruction_l1=2.0, reconstruction_l2=3.0, quantizer=4.0))(images, output)
    assert terms["l1_loss"].item() == pytest.approx(0.5) and terms["l2_loss"].item() == pytest.approx(0.25)
    assert terms["loss"].item() == pytest.approx(2 * 0.5 + 3 * 0.25 + 4 * 0.25)
    assert "l1_loss" not in TokenizerLoss(LossWeights(reconstruction_l1=0.0))(images, output)
    with pytest.raises(ValueError, match="At least one"):
        TokenizerLoss(LossWeights(reconstruction_l1=0.0, reconstruction_l2=0.0))


def test_trackers_record_the_arguments_but_not_the_hub_token():
    from hf_vitvq.training.trainer_utils import tracker_config

    _, _, args = parse_args(["--hub_token", "hf_secret", "--learning_rate", "0.5"])
    recorded = tracker_config(args)
    assert recorded["learning_rate"] == 0.5 and "hf_secret" not in recorded.values() and "hub_token" not in recorded


def test_weight_ema_averages_floats_and_copies_counters():
    from torch.optim.swa_utils import AveragedModel

    from hf_vitvq.training.trainer_utils import ema_of_floats

    model = torch.nn.Module()
    model.register_buffer("weight", torch.zeros(2))
    model.register_buffer("step", torch.zeros((), dtype=torch.long))
    averaged = AveragedModel(model, multi_avg_fn=ema_of_floats(0.5), use_buffers=True)
    for step in range(1, 4):
        model.weight.fill_(8.0 * step)
        model.step.fill_(step)
        averaged.update_parameters(model)
    # 8 (copied at the first update), then 0.5 * 8 + 0.5 * 16 = 12, then 0.5 * 12 + 0.5 * 24 = 18
    assert averaged.module.weight.tolist() == [18.0, 18.0] and int(averaged.module.step) == 3


def test_code_histogram_reaches_tensorboard_with_one_bucket_per_code(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from hf_vitvq.training.trainer_utils import write_code_histogram

    writer = SummaryWriter(tmp_path)
    write_code_histogram(writer, torch.tensor([[0.5, 0.0, 0.25, 0.25], [0.0, 0.0, 1.0, 0.0]]), step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    [event] = events.Histograms("train/code_frequency")
    assert event.step == 3 and list(event.histogram_value.bucket) == [0.5, 0.0, 1.25, 0.25]


def test_validation_metrics_for_discrete_and_continuous_tokens():
    from conftest import tiny_config_kwargs

    from hf_vitvq import ViTVQConfig, ViTVQModel
    from hf_vitvq.training.evaluation import evaluate_reconstruction

    processor = ViTVQImageProcessor.for_image_size(32)
    batches = [processor([PIL.Image.new("RGB", (32, 32), (i * 60, 90, 30)) for i in range(3)], return_tensors="pt")
               .pixel_values]  # fmt: skip
    for quantizer_type, expected in (
        ("vq", {"psnr", "ssim", "codebook_usage", "perplexity"}),
        ("kl", {"psnr", "ssim"}),
    ):
        model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs(quantizer_type=quantizer_type)))
        metrics = evaluate_reconstruction(model, batches)
        assert set(metrics) == expected and 0 < metrics["psnr"] < 60
