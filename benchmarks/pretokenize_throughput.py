"""Pre-tokenization throughput: images/s of `hf-vitvq pretokenize` against its two limits, measured in the same run:
the model alone (`model.encode` on pixel values already in memory, same batches) and the data path alone (the same
shards read, decoded and centre-cropped by the same DataLoader workers, no model). The overlap works when
pretokenize reaches the slower of the two (target of issue 19: at least 90% of it).

    .venv/bin/python benchmarks/pretokenize_throughput.py --presets tiny --rounds 5 --draft_check
    .venv/bin/python benchmarks/pretokenize_throughput.py --presets S-128 --repeat 1 --shard_size 30   # 180 images

Images: `../shared/data/photos` (180 JPEGs, short side 320), each read `--repeat` times (links of other names: 540
images by default, so that the workers' start-up counts little). Models: the presets with random weights, saved to a
temporary folder (tiny: 32 px crops, decode-bound; S-128: 256 px, model-bound). Pretokenize is timed from the start
of `PretokenizeRun.run()` (model loaded and warmed up) to its end (shards and info written), into a new folder each
round; the model alone, on the same images in memory, after a warm-up too. The three measurements are interleaved,
`--rounds` times; the best round of each is reported (other load on the machine only slows runs down), with the
median ratio of the rounds beside it.

The model alone runs on the threads pretokenize gives it beside its workers on the CPU (the cores the workers leave,
at least one: `cpu_threads`). `--draft_check` also measures what `PIL.Image.draft` would do to these centre crops
under the training stream's rule (`hf_vitvq.training.data.draft_reduction`): the decode + crop rate, the PSNR of the
crop against the full decode's, and how many token ids of the random-weight model stay the same. Prints tables and
writes JSON (default: benchmarks/results/pretokenize_throughput.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel
from hf_vitvq.training.image_shards import (
    ShardBatchDataset,
    cpu_threads,
    file_shards,
    inference_loader,
    pixel_value_table,
    to_pixel_values,
)

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def save_preset(preset: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig.from_preset(preset))
    model.save_pretrained(folder)
    ViTVQImageProcessor.for_config(model.config).save_pretrained(folder)
    return folder


@dataclass
class Timing:
    """A timed run: images done, wall seconds, CPU seconds of this process and of its DataLoader workers (child
    processes, counted once they have exited)."""

    images: int = 0
    wall: float = 0.0
    main_cpu: float = 0.0
    worker_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.images / self.wall


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def timing() -> Iterator[Timing]:
    result = Timing()
    main, workers, start = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    yield result
    result.wall = time.perf_counter() - start
    result.main_cpu = cpu_seconds(resource.RUSAGE_SELF) - main
    result.worker_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - workers


def data_path_timing(files: list[str], processor: ViTVQImageProcessor, size: int, args: argparse.Namespace,
                     workers: int) -> Timing:  # fmt: skip
    """Reading, decoding and cropping `files` in `workers` DataLoader workers, no model."""
    shards = file_shards(files, files, args.shard_size)
    dataset = ShardBatchDataset(shards, processor, size, batch_size=args.batch_size)
    with timing() as result:
        loader = inference_loader(dataset, workers, torch.device("cpu"))
        result.images = sum(len(batch.keys) for batch in loader)
    return result


def model_timing(model: ViTVQModel, batches: list[torch.Tensor], workers: int) -> Timing:
    """`model.encode` on pixel values in memory, on the threads pretokenize gives the model beside `workers` workers
    (`cpu_threads`)."""
    with cpu_threads(model.device, workers), timing() as result:
        for pixel_values in batches:
            model.encode(pixel_values)
        result.images = sum(len(batch) for batch in batches)
    return result


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def repeated_photos(folder: Path, repeat: int) -> Path:
    """A folder of `repeat` links to each photo, so that a run lasts long enough for its start-up to count little."""
    folder.mkdir()
    for round_index in range(repeat):
        for path in sorted(PHOTOS.glob("*.jpg")):
            (folder / f"{round_index}-{path.name}").symlink_to(path)
    return folder


def pretokenize_timing(model_dir: Path, photos: Path, output_dir: Path, args: argparse.Namespace, workers: int,
                       state) -> Timing:  # fmt: skip
    """A pretokenize run, its model loaded and warmed up (a model's first encode also sets up its kernels)."""
    from hf_vitvq.training.pretokenize import PretokenizeArguments, PretokenizeRun

    run = PretokenizeRun(
        PretokenizeArguments(model=str(model_dir), output_dir=str(output_dir), train_data_dir=str(photos),
                             shard_size=args.shard_size, batch_size=args.batch_size, dataloader_num_workers=workers),
        state,
    )  # fmt: skip
    size = run.model.config.image_size
    with cpu_threads(run.model.device, workers):
        run.model.encode(torch.zeros(args.batch_size, 3, size, size))
    with timing() as result:
        result.images = run.run().num_images
    return result


def measure(preset: str, workers: int, args: argparse.Namespace, folder: Path, photos: Path, state) -> dict:
    model_dir = save_preset(preset, folder / f"{preset}-{workers}")
    model = ViTVQModel.from_pretrained(model_dir).eval()
    processor = ViTVQImageProcessor.from_pretrained(model_dir)
    size = model.config.image_size
    files = sorted(str(path) for path in photos.iterdir())
    table = pixel_value_table(processor)
    crops = ShardBatchDataset(file_shards(files, files, args.batch_size), processor, size, batch_size=args.batch_size)
    batches = [to_pixel_values(batch.crops, table) for batch in crops if batch.keys]
    with cpu_threads(model.device, workers):
        model.encode(batches[0])  # warm-up
    rounds = []
    for round_index in range(args.rounds):
        output_dir = folder / f"out-{preset}-{workers}-{round_index}"
        measurements = {
            "pretokenize": partial(pretokenize_timing, model_dir, photos, output_dir, args, workers, state),
            "model": partial(model_timing, model, batches, workers),
            "data_path": partial(data_path_timing, files, processor, size, args, workers),
        }
        order = list(measurements) if round_index % 2 == 0 else list(measurements)[::-1]  # load drifts: alternate
        timings = {name: measurements[name]() for name in order}
        rounds.append(
            {
                **{name: timings[name].rate for name in measurements},
                # CPU milliseconds per image: the workers' and the model process's, in pretokenize and alone (equal
                # when the pipeline adds no work: its wall time is then the slower part's where cores are free)
                "pretokenize_worker_cpu_ms": 1000 * timings["pretokenize"].worker_cpu / timings["pretokenize"].images,
                "data_path_worker_cpu_ms": 1000 * timings["data_path"].worker_cpu / timings["data_path"].images,
                "pretokenize_main_cpu_ms": 1000 * timings["pretokenize"].main_cpu / timings["pretokenize"].images,
                "model_cpu_ms": 1000 * timings["model"].main_cpu / timings["model"].images,
            }
        )
        values = ", ".join(f"{name} {value:.2f}" for name, value in rounds[-1].items())
        print(f"  {preset} workers={workers} round {round_index}: {values}", flush=True)
    rates = ("pretokenize", "model", "data_path")
    best = {name: max(r[name] for r in rounds) for name in rates}
    limit = min(best["model"], best["data_path"])
    return {
        "preset": preset,
        "image_size": size,
        "workers": workers,
        "batch_size": args.batch_size,
        "images": len(files),
        **{f"{name}_images_per_s": value for name, value in best.items()},
        "bound": "model" if best["model"] < best["data_path"] else "data path",
        "ratio_best": best["pretokenize"] / limit,
        "ratio_median": statistics.median(r["pretokenize"] / min(r["model"], r["data_path"]) for r in rounds),
        **{name: statistics.median(r[name] for r in rounds) for name in rounds[0] if name.endswith("_cpu_ms")},
        "rounds": rounds,
    }


def draft_crop(path: str, processor: ViTVQImageProcessor, size: int) -> np.ndarray | None:
    """The centre crop of `path` decoded at reduced scale, where `draft_reduction` allows it (else None): the
    processor's crop box mapped onto the drafted image, resized bicubically to `size`."""
    from hf_vitvq.training.data import draft_reduction

    image = PIL.Image.open(path)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized = (size, int(size * long / short)) if width <= height else (int(size * long / short), size)
    left, top = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
    scale_x, scale_y = width / resized[0], height / resized[1]  # source pixels per resized pixel
    reduction = draft_reduction(size * min(scale_x, scale_y), size)
    drafted = image.draft("RGB", (width // reduction, height // reduction)) if reduction > 1 else None
    if drafted is None:
        return None
    box_scale = drafted[1][2] / width  # the whole image's box at the decoded scale
    box = (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)
    box = tuple(edge * box_scale for edge in box)
    crop = image.convert("RGB").resize((size, size), PIL.Image.Resampling.BICUBIC, box=box)
    return np.moveaxis(np.asarray(crop), -1, 0)


def draft_check(preset: str, folder: Path) -> dict:
    """Draft decoding of the pretokenize crops: rate, PSNR against the full decode, token ids kept (drafted images
    only; the others would be decoded in full, as now)."""
    model_dir = save_preset(preset, folder / f"draft-{preset}")
    model = ViTVQModel.from_pretrained(model_dir).eval()
    processor = ViTVQImageProcessor.from_pretrained(model_dir)
    size = model.config.image_size
    files = sorted(str(path) for path in PHOTOS.glob("*.jpg"))
    start = time.perf_counter()
    full = next(iter(ShardBatchDataset(file_shards(files, files, len(files)), processor, size, batch_size=len(files))))
    full_rate = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    drafted = [draft_crop(path, processor, size) for path in files]
    draft_rate = len(files) / (time.perf_counter() - start)
    row = {"preset": preset, "image_size": size, "images": len(files),
           "drafted_images": sum(crop is not None for crop in drafted),
           "full_decode_images_per_s": full_rate, "draft_images_per_s": draft_rate}  # fmt: skip
    if not row["drafted_images"]:
        return row
    which = [index for index, crop in enumerate(drafted) if crop is not None]
    crops = torch.from_numpy(np.stack([drafted[index] for index in which]))
    reference = full.crops[which]
    psnr = 10 * torch.log10(255**2 / (crops.double() - reference.double()).pow(2).flatten(1).mean(1).clamp(min=1e-12))
    table = pixel_value_table(processor)
    same = model.encode(to_pixel_values(crops, table)) == model.encode(to_pixel_values(reference, table))
    return {
        **row,
        "psnr_min_db": psnr.min().item(),
        "psnr_mean_db": psnr.mean().item(),
        "max_abs_difference": (crops.int() - reference.int()).abs().max().item(),
        "token_ids_equal": same.float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "S-128"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="read each photo this many times (as another file)")
    parser.add_argument("--shard_size", type=int, default=90, help="images per shard (6 shards of 540 images)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draft_check", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "pretokenize_throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        photos = repeated_photos(Path(folder) / "photos", args.repeat)
        rows = [measure(preset, workers, args, Path(folder), photos, state) for preset in args.presets for workers in
                args.workers]  # fmt: skip
        drafts = [draft_check(preset, Path(folder)) for preset in args.presets] if args.draft_check else []
    print("\n| preset (crop) | workers | pretokenize img/s | model alone | data path alone | bound | pretokenize / "
          "slower (best, median) | CPU ms/img, pretokenize / alone: workers, model process |\n"
          "|---|---|---|---|---|---|---|---|")  # fmt: skip
    for row in rows:
        print(f"| {row['preset']} ({row['image_size']} px) | {row['workers']} | {row['pretokenize_images_per_s']:.1f} "
              f"| {row['model_images_per_s']:.1f} | {row['data_path_images_per_s']:.1f} | {row['bound']} | "
              f"{row['ratio_best']:.0%}, {row['ratio_median']:.0%} | {row['pretokenize_worker_cpu_ms']:.2f} / "
              f"{row['data_path_worker_cpu_ms']:.2f}, {row['pretokenize_main_cpu_ms']:.2f} / "
              f"{row['model_cpu_ms']:.2f} |")  # fmt: skip
    if drafts:
        print("\n| preset (crop) | drafted | full decode + crop img/s | draft img/s | PSNR min / mean (dB) | max abs "
              "| token ids equal |\n|---|---|---|---|---|---|---|")  # fmt: skip
        for row in drafts:
            quality = "| - | - | - |"
            if row["drafted_images"]:
                quality = (f"| {row['psnr_min_db']:.1f} / {row['psnr_mean_db']:.1f} | {row['max_abs_difference']} | "
                           f"{row['token_ids_equal']:.1%} |")  # fmt: skip
            print(f"| {row['preset']} ({row['image_size']} px) | {row['drafted_images']} / {row['images']} | "
                  f"{row['full_decode_images_per_s']:.0f} | {row['draft_images_per_s']:.0f} {quality}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                       "draft": drafts}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
