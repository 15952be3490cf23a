"""Input pipeline throughput: the training stream's images/s against the decode limit, draft decoding's speed and
quality, and end-to-end training against the synthetic-data step rate.

    .venv/bin/python benchmarks/data_throughput.py                        # everything, ~7 minutes on 2 idle cores
    .venv/bin/python benchmarks/data_throughput.py --images 128 --skip_training

Image sets: (a) `../shared/data/photos` (small JPEGs, mostly 427x320), (b) JPEGs written by this script into a
temporary folder, quality 90: 1600x1200 and ImageNet-like 500x375 (the shared photos resized, with mild noise for
photo-like detail and file sizes).

Per set, all in this run, configurations interleaved (best of `--repeats`, so that other load on the machine shows
less; the 1-minute load average is printed with the tables), images/s and CPU time per image (this process and its
DataLoader workers, read from /proc):
- decode limit: a bare loop in this process of `PIL.Image.open` + decode + crop + resize to 256x256 (the training
  stream's crop boxes), with full decoding and with draft decoding (`draft_reduction`'s rule); and the same loop
  normalising each crop into a float32 batch as the workers do (the limit for a pipeline that outputs floats);
- the training stream (`TrainingImageStream`: 256x256 random resized crops of 80-100% of the area, flips, a shuffle
  buffer of 1000, normalised float32 batches of 32) with 0, 1 and 2 DataLoader workers, draft off and on. Steady
  state: the clock starts once each worker's first 4 batches (the DataLoader's prefetch of 2, and the shared batch
  buffers the worker makes once) have arrived.

Draft quality: PSNR of the final crop, draft against full decode, on the shared photos: the rule at work (random crops
at 64 and 32 px, drafted at 1/2 and 1/4), and centre crops drafted down to 1x, 1.5x and 2x the output side, beside the
PSNR between bicubic and Lanczos resizing of the full decode at the same downscale (a difference nobody minds).

End to end: `training/train.py`, the `tiny` preset (32 px crops of the shared photos, batch 8), with 0 and 2 workers
(it then trains on the cores they leave), and 2 workers beside one torch thread per core (`OMP_NUM_THREADS`),
images/s between the 50th and the last step (from `train_log.jsonl`), against `benchmarks/train_throughput.py`'s
synthetic-data rate for the same preset and batch.
With a CUDA device also S-128 bf16 (256 px crops of the 500x375 set, batch 32, `--gpu_workers` workers) against its
synthetic-data step rate.

Targets (issue 21): 1 worker >= 90% of the bare loop; 2 workers >= 1.7x one worker; draft >= 2x the full decode on
the large set. Prints tables and writes JSON to benchmarks/results/data_throughput.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
RESOLUTION, BATCH_SIZE, CROP_SCALE, RATIO = 256, 32, (0.8, 1.0), (3 / 4, 4 / 3)
TARGETS = {"one_worker_vs_bare_loop": 0.9, "two_vs_one_worker": 1.7, "draft_vs_full_decode": 2.0}


def write_large_jpegs(photos: list[Path], folder: Path, size: tuple[int, int], count: int) -> list[str]:
    """`count` JPEGs (quality 90) of `size`: shared photos resized (bicubic), plus Gaussian noise (sigma 3) for the
    fine detail and file sizes of real photos at that size."""
    rng = np.random.default_rng(0)
    paths = []
    for index, photo in enumerate(photos[:count]):
        image = PIL.Image.open(photo).convert("RGB").resize(size, PIL.Image.Resampling.BICUBIC)
        noisy = np.asarray(image, np.float32) + rng.normal(0, 3, (size[1], size[0], 3))
        path = folder / f"{size[0]}x{size[1]}-{index:03d}.jpg"
        PIL.Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------- the decode limit


def children_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process's live child processes: the DataLoader workers."""
    total, me = 0, os.getpid()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # from field 3, the state, on
            except OSError:  # ended meanwhile
                continue
            if int(fields[1]) == me:
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time and CPU time (this process's threads, and its workers) from construction to `stop`."""

    def __init__(self) -> None:
        self.workers = children_cpu_seconds()
        self.wall, self.main = time.perf_counter(), time.process_time()

    def stop(self, images: int) -> dict[str, float]:
        wall, main = time.perf_counter() - self.wall, time.process_time() - self.main
        workers = children_cpu_seconds() - self.workers
        return {"images_per_second": images / wall, "cpu_ms_per_image": 1000 * (main + workers) / images,
                "main_cpu_ms_per_image": 1000 * main / images}  # fmt: skip


def bare_loop(files: list[str], images: int, draft: bool, to_float: bool = False) -> dict[str, float]:
    """PIL open + decode + crop + resize in this process, over `images` crops of `files` in turn. `to_float`: also
    normalise each crop into a float32 batch, as the workers do (`rgb_pixels`, `normalize_pixels`): the decode limit
    for a pipeline whose output is normalised float tensors."""
    import torch

    from hf_vitvq.pixel_conversion import normalize_pixels
    from hf_vitvq.training.data import draft_reduction, rgb_pixels, sample_crop_box

    batch = torch.empty(BATCH_SIZE, 3, RESOLUTION, RESOLUTION) if to_float else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    clock = Clock()
    for index in range(images):
        image = PIL.Image.open(files[index % len(files)])
        box = sample_crop_box(image.size, CROP_SCALE, RATIO, np.random.default_rng(index))
        scale = 1.0
        if draft and (reduction := draft_reduction(min(box[2] - box[0], box[3] - box[1]), RESOLUTION)) > 1:
            width = image.width
            scale = width / image.draft(image.mode, (width // reduction, image.height // reduction))[1][2]
        image.load()
        crop = image.resize((RESOLUTION, RESOLUTION), PIL.Image.Resampling.BICUBIC, box=tuple(e / scale for e in box))
        if batch is not None:
            pixels = rgb_pixels(crop).permute(2, 0, 1)
            normalize_pixels(pixels, (-1.0, 1.0), out=batch[index % BATCH_SIZE])
    result = clock.stop(images)
    torch.set_num_threads(threads)
    return result


# ---------------------------------------------------------------------------------------------- the training stream


def training_stream(files: list[str], images: int, num_workers: int, draft: bool) -> dict[str, float]:
    """Steady state of `TrainingImageStream` batches: after the first `PREFETCH_BATCHES + 2` of each worker, by which
    the worker has made all its shared batch buffers (a training run makes them once, in its first seconds)."""
    from hf_vitvq.training.data import PREFETCH_BATCHES, TrainingImageStream, file_stream

    # one shard per file, not interleaved: as `train.py --train_data_dir` reads a folder
    stream = TrainingImageStream(file_stream(files), "image", (-1.0, 1.0), RESOLUTION, seed=0, crop_scale=CROP_SCALE,
                                 num_workers=num_workers, draft=draft, interleaved_shards=1)  # fmt: skip
    measured = -(-images // BATCH_SIZE)
    batches = stream.batches(BATCH_SIZE)
    try:
        for _ in range(max(1, (PREFETCH_BATCHES + 2) * num_workers)):
            next(batches)
        clock = Clock()
        for _ in range(measured):
            next(batches)
        return clock.stop(measured * BATCH_SIZE)
    finally:
        batches.close()


def measure_set(name: str, files: list[str], images: int, repeats: int) -> dict:
    """Every configuration, `repeats` rounds: the best images/s and the least CPU time per image of each."""
    configurations = {f"bare loop, draft {'on' if draft else 'off'}": (bare_loop, (files, images, draft))
                      for draft in (False, True)}  # fmt: skip
    configurations["bare loop + float32, draft off"] = (bare_loop, (files, images, False, True))
    for workers in (0, 1, 2):
        for draft in (False, True):
            configurations[f"{workers} workers, draft {'on' if draft else 'off'}"] = (
                training_stream, (files, images, workers, draft)
            )  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(repeats):  # interleaved: a burst of other load hits one round, not one configuration
        for key, (function, arguments) in configurations.items():
            runs.setdefault(key, []).append(function(*arguments))
    print(f"  measured {name}", file=sys.stderr)
    return {
        "set": name,
        "files": len(files),
        "rates": {key: max(run["images_per_second"] for run in values) for key, values in runs.items()},
        "cpu_ms": {key: min(run["cpu_ms_per_image"] for run in values) for key, values in runs.items()},
        "main_cpu_ms": {key: min(run["main_cpu_ms_per_image"] for run in values) for key, values in runs.items()},
        "runs": runs,
    }


def ratios(row: dict) -> dict[str, float]:
    """The targets' ratios, from images/s and (for the work each configuration does) from CPU time per image."""
    rate, cpu = row["rates"], row["cpu_ms"]
    return {
        "1 worker / bare loop": rate["1 workers, draft off"] / rate["bare loop, draft off"],
        "1 worker / bare loop, draft": rate["1 workers, draft on"] / rate["bare loop, draft on"],
        "bare loop + float32 / bare loop": rate["bare loop + float32, draft off"] / rate["bare loop, draft off"],
        "1 worker / bare loop + float32": rate["1 workers, draft off"] / rate["bare loop + float32, draft off"],
        "2 / 1 workers": rate["2 workers, draft off"] / rate["1 workers, draft off"],
        "2 / 1 workers, draft": rate["2 workers, draft on"] / rate["1 workers, draft on"],
        "draft / full decode, 1 worker": rate["1 workers, draft on"] / rate["1 workers, draft off"],
        "CPU: bare loop / 1 worker": cpu["bare loop, draft off"] / cpu["1 workers, draft off"],
        "CPU: bare loop / 1 worker, draft": cpu["bare loop, draft on"] / cpu["1 workers, draft on"],
        "CPU: full decode / draft, 1 worker": cpu["1 workers, draft off"] / cpu["1 workers, draft on"],
    }


# ---------------------------------------------------------------------------------------------- draft quality


def psnr(a: PIL.Image.Image, b: PIL.Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def centre_crop(path: Path, output: int, reduction: int, method: int = PIL.Image.Resampling.BICUBIC) -> PIL.Image:
    """The centred square of the short side, decoded at 1/`reduction` scale, resized to `output`."""
    image = PIL.Image.open(path)
    width, height = image.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
    scale = 1.0
    if reduction > 1:
        scale = width / image.draft(image.mode, (width // reduction, height // reduction))[1][2]
    return image.convert("RGB").resize((output, output), method, box=tuple(edge / scale for edge in box))


def draft_quality(photos: list[Path], large: list[str]) -> list[dict]:
    """PSNR (mean, worst) of draft against full decode: the rule at work, and forced reductions."""
    from hf_vitvq.training.data import decode_random_crop

    def random_crops(paths: list, output: int) -> list[float]:
        values = []
        for seed, path in enumerate(paths):
            value = {"bytes": Path(path).read_bytes(), "path": None}
            crops = [decode_random_crop(value, output, CROP_SCALE, True, np.random.default_rng(seed), draft=draft)
                     for draft in (True, False)]  # fmt: skip
            values.append(psnr(*crops))
        return values

    rows = []
    for output, reduction in ((64, 2), (32, 4)):
        rows.append({"case": f"photos, random {output} px crops (rule: 1/{reduction} scale, >= 2x left)",
                     "psnr": random_crops(photos, output)})  # fmt: skip
    rows.append({"case": f"1600x1200, random {RESOLUTION} px crops (rule: 1/2 scale)",
                 "psnr": random_crops(large, RESOLUTION)})  # fmt: skip
    for left in (1.0, 1.5, 2.0):  # the drafted source region's side over the output side
        values, reference = [], []
        for path in photos:
            side = min(PIL.Image.open(path).size)
            output = int(side / 2 / left)
            full = centre_crop(path, output, 1)
            values.append(psnr(centre_crop(path, output, 2), full))
            reference.append(psnr(centre_crop(path, output, 1, PIL.Image.Resampling.LANCZOS), full))
        rows.append({"case": f"photos, centre crops drafted to {left:g}x the output side", "psnr": values})
        rows.append({"case": f"  reference: Lanczos vs bicubic, full decode, same {2 * left:g}x downscale",
                     "psnr": reference})  # fmt: skip
    for row in rows:
        row["mean"], row["worst"] = float(np.mean(row["psnr"])), float(np.min(row["psnr"]))
        del row["psnr"]
    print("  measured draft quality", file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------- end to end


def train_throughput_module():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def end_to_end_rate(argv: list[str], steps: int, logging_steps: int, threads: int | None = None) -> float:
    """Images/s of `training/train.py ARGV` between its first logged step and its last (start-up excluded); with
    `threads`, torch's intra-op threads in the training process (`OMP_NUM_THREADS`; workers always use 1)."""
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, str(ROOT / "training" / "train.py"), *argv, "--output_dir", output_dir,
                   "--max_train_steps", str(steps), "--logging_steps", str(logging_steps), "--validation_steps",
                   str(10 * steps), "--checkpointing_steps", str(10 * steps), "--report_to", "none"]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        subprocess.run(command, check=True, cwd=ROOT, env=env, capture_output=True, text=True)
        log = [json.loads(line) for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines()]
    batch = int(argv[argv.index("--train_batch_size") + 1])
    first, last = log[0], log[-1]
    # train.py logs the images/s since its start: images / rate gives the time at each logged step
    seconds = [entry["step"] * batch / entry["images_per_second"] for entry in (first, last)]
    return (last["step"] - first["step"]) * batch / (seconds[1] - seconds[0])


def measure_end_to_end(photos_dir: Path, large_dir: Path | None, steps: int, repeats: int, gpu_workers: int) -> list:
    """`tiny` at 32 px on the CPU: 0 and 2 workers (`train.py` then trains on the cores the workers leave), and 2
    workers beside as many training threads as cores (`OMP_NUM_THREADS`: the workers compete with torch's threads);
    S-128 bf16 on a GPU when there is one."""
    import torch

    synthetic = train_throughput_module()
    tiny = ["--model_config", "tiny", "--train_data_dir", str(photos_dir), "--train_batch_size", "8"]
    cores = len(os.sched_getaffinity(0))
    cases = {(0, None): [], (2, None): [], (2, cores): []}  # (workers, training threads): images/s of each round
    synthetic_rates = []
    for _ in range(repeats):
        for (workers, threads), rates in cases.items():
            argv = [*tiny, "--dataloader_num_workers", str(workers)]
            rates.append(end_to_end_rate(argv, steps, logging_steps=50, threads=threads))
        synthetic_rates.append(synthetic.launch("tiny", 8, steps=100, warmup=5, processes=1)["images_per_second"])
    rows = [{"preset": "tiny", "device": "cpu", "workers": workers, "training_threads": threads or "default",
             "images_per_second": max(rates), "synthetic_images_per_second": max(synthetic_rates)}
            for (workers, threads), rates in cases.items()]  # fmt: skip
    if torch.cuda.is_available() and large_dir is not None:
        s128 = ["--model_config", "S-128", "--train_data_dir", str(large_dir), "--train_batch_size", "32",
                "--mixed_precision", "bf16", "--dataloader_num_workers", str(gpu_workers)]  # fmt: skip
        step_rate = synthetic.launch("S-128", 32, steps=20, warmup=3, processes=1, mixed_precision="bf16")
        rows.append({"preset": "S-128 bf16", "device": torch.cuda.get_device_name(), "workers": gpu_workers,
                     "training_threads": "default", "images_per_second": end_to_end_rate(s128, 200, logging_steps=50),
                     "synthetic_images_per_second": step_rate["images_per_second"]})  # fmt: skip
    print("  measured end to end", file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------- report


def print_tables(sets: list[dict], quality: list[dict], end_to_end: list[dict]) -> None:
    columns = ["bare loop, draft off", "bare loop, draft on", "bare loop + float32, draft off"] + [
        f"{workers} workers, draft {draft}" for draft in ("off", "on") for workers in (0, 1, 2)
    ]
    header = ("| images | | bare loop | bare loop, draft | bare loop + float32 | 0 workers | 1 worker | 2 workers "
              "| 0 workers, draft | 1 worker, draft | 2 workers, draft |")  # fmt: skip
    print(f"\n{header}\n|---|---|---|---|---|---|---|---|---|---|---|")
    for row in sets:
        measures = (("images/s", "rates", 1), ("CPU ms / image", "cpu_ms", 2),
                    ("of which the training process", "main_cpu_ms", 2))  # fmt: skip
        for measure, key, digits in measures:
            cells = " | ".join(f"{row[key][column]:.{digits}f}" for column in columns)
            print(f"| {row['set']} ({row['files']} files) | {measure} | {cells} |")
    names = list(sets[0]["ratios"])
    print("\nRatios (targets: 1 worker >= 0.9x the bare loop, 2 workers >= 1.7x 1 worker, draft >= 2x on 1600x1200)\n")
    print("| images | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in sets:
        print(f"| {row['set']} | " + " | ".join(f"{value:.2f}" for value in row["ratios"].values()) + " |")
    print("\nDraft decoding: PSNR (dB) of the final crop against the full decode\n")
    print("| case | mean | worst |")
    print("|---|---|---|")
    for row in quality:
        print(f"| {row['case']} | {row['mean']:.1f} | {row['worst']:.1f} |")
    if end_to_end:
        print("\nEnd to end (`training/train.py`) against the synthetic-data step rate (`train_throughput.py`)\n")
        print("| preset | device | workers | training threads | images/s | synthetic images/s | ratio |")
        print("|---|---|---|---|---|---|---|")
        for row in end_to_end:
            rate, synthetic = row["images_per_second"], row["synthetic_images_per_second"]
            print(f"| {row['preset']} | {row['device']} | {row['workers']} | {row['training_threads']} "
                  f"| {rate:.1f} | {synthetic:.1f} | {rate / synthetic:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="images timed per configuration")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all configurations (best one kept)")
    parser.add_argument("--large_files", type=int, default=180,
                        help="generated files per size, one per shared photo (fewer: short epochs, whose restarts "
                        "count in the rates)")  # fmt: skip
    parser.add_argument("--training_steps", type=int, default=300, help="steps of each end-to-end run")
    parser.add_argument("--gpu_workers", type=int, default=8, help="workers of the GPU end-to-end run")
    parser.add_argument("--skip_training", action="store_true", help="no end-to-end runs")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "data_throughput.json")
    args = parser.parse_args()

    train_throughput = train_throughput_module()
    load_before = os.getloadavg()[0]  # other work on the machine skews absolute rates (and worker scaling) most
    photos = sorted(PHOTOS.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as folder:
        large = {size: write_large_jpegs(photos, Path(folder), size, args.large_files)
                 for size in ((1600, 1200), (500, 375))}  # fmt: skip
        sets = [
            measure_set("shared photos", [str(path) for path in photos], args.images, args.repeats),
            measure_set("1600x1200, q90", large[1600, 1200], args.images // 2, args.repeats),
            measure_set("500x375, q90", large[500, 375], args.images, args.repeats),
        ]
        for row in sets:
            row["ratios"] = ratios(row)
        quality = draft_quality(photos, large[1600, 1200])
        end_to_end = []
        if not args.skip_training:
            imagenet_like = Path(folder) / "imagenet_like"
            imagenet_like.mkdir()
            for path in large[500, 375]:
                Path(path).rename(imagenet_like / Path(path).name)
            end_to_end = measure_end_to_end(PHOTOS, imagenet_like, args.training_steps, args.repeats,
                                            args.gpu_workers)  # fmt: skip
    load = (load_before, os.getloadavg()[0])
    print(f"\nInput pipeline on {train_throughput.machine()}, 256x256 crops, batches of {BATCH_SIZE}, images/s "
          f"(1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end)")  # fmt: skip
    print_tables(sets, quality, end_to_end)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": train_throughput.machine(), "load_average": load, "targets": TARGETS, "sets": sets,
               "draft_quality": quality, "end_to_end": end_to_end}  # fmt: skip
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    main()
