"""Training throughput: images/s and peak memory per optimizer step, and 2-process vs 1-process scaling.

    .venv/bin/python benchmarks/train_throughput.py                      # tiny and S-128, batch 8 and 32, CPU
    .venv/bin/python benchmarks/train_throughput.py --presets tiny --batch_sizes 8 --steps 20

Each case runs in its own process (clean peak memory) on synthetic images, so the numbers measure the model and
the optimizer, not image decoding. A step is forward + loss + backward + AdamW step, as in training/train.py.
The scaling rows run the same per-process batch on 1 process (all cores) and on 2 processes (Accelerate
MULTI_CPU over gloo, one thread each), and report the total images/s of each. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_case(preset: str, batch_size: int, steps: int, warmup: int, mixed_precision: str) -> dict:
    """Time `steps` training steps (after `warmup`) in this process; returns the measurements."""
    import torch
    from accelerate import Accelerator

    from hf_vitvq import ViTVQConfig, ViTVQModel

    accelerator = Accelerator(mixed_precision=mixed_precision)
    torch.manual_seed(0)
    config = ViTVQConfig.from_preset(preset)
    model = ViTVQModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    size = config.image_size
    pixel_values = torch.rand(batch_size, 3, size, size, device=accelerator.device) * 2 - 1

    def step() -> None:
        output = model(pixel_values)
        loss = (output.reconstruction - pixel_values).pow(2).mean() + output.quantizer_loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:  # the GPU's queued work is done, on every process
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)
        accelerator.wait_for_everyone()

    for _ in range(warmup):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    total_rss = accelerator.reduce(torch.tensor([peak_rss], device=accelerator.device), reduction="sum").item()
    return {
        "preset": preset,
        "device": str(accelerator.device),
        "mixed_precision": mixed_precision,
        "batch_size": batch_size,
        "processes": accelerator.num_processes,
        "threads_per_process": torch.get_num_threads(),
        "seconds_per_step": seconds,
        "images_per_second": batch_size * accelerator.num_processes / seconds,
        "peak_rss_mib": total_rss,
        "peak_gpu_mib": peak_gpu,
    }


def launch(preset: str, batch_size: int, steps: int, warmup: int, processes: int, mixed_precision: str = "no") -> dict:
    """Run one case in fresh process(es) and return its JSON result."""
    result_file = ROOT / "benchmarks" / f".result-{os.getpid()}.json"
    case = ["--case", preset, str(batch_size), str(steps), str(warmup), mixed_precision, str(result_file)]
    env = dict(os.environ)
    if processes == 1:
        command = [sys.executable, __file__, *case]
    else:
        env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // processes)))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), __file__, *case]  # fmt: skip
    subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True, text=True)
    result = json.loads(result_file.read_text())
    result_file.unlink()
    return result


def machine() -> str:
    import torch

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "S-128"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 for tiny, 3 otherwise)")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--scaling_preset", default="tiny", help="preset of the 1- vs 2-process CPU rows, or none")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    parser.add_argument("--case", nargs=6, help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = parser.parse_args()

    if args.case:
        preset, batch_size, steps, warmup, mixed_precision, result_file = args.case
        result = run_case(preset, int(batch_size), int(steps), int(warmup), mixed_precision)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(result_file).write_text(json.dumps(result))
        return

    rows = []
    for preset in args.presets:
        for batch_size in args.batch_sizes:
            steps = args.steps or (30 if preset == "tiny" else 3)
            rows.append(launch(preset, batch_size, steps, warmup=1, processes=1, mixed_precision=args.mixed_precision))
            print(f"  measured {preset} batch {batch_size}", file=sys.stderr)
    scaling = [] if args.scaling_preset == "none" else [
        {**launch(args.scaling_preset, 8, args.steps or 30, warmup=2, processes=processes), "scaling": True}
        for processes in (1, 2)
    ]  # fmt: skip

    print(f"\nTraining throughput on {machine()}\n")
    print("| preset | device | precision | batch / process | processes x threads | s / step | images / s "
          "| peak RSS (MiB, all processes) | peak GPU memory (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows + scaling:
        layout = f"{row['processes']} x {row['threads_per_process']}"
        timing = f"{row['seconds_per_step']:.3f} | {row['images_per_second']:.1f} | {row['peak_rss_mib']:.0f}"
        where = f"{row['device']} | {row['mixed_precision']}"
        print(f"| {row['preset']} | {where} | {row['batch_size']} | {layout} | {timing} | {row['peak_gpu_mib']:.0f} |")
    if scaling:
        one, two = scaling
        print(f"\n2 processes vs 1 ({args.scaling_preset}, batch 8 per process): "
              f"{two['images_per_second'] / one['images_per_second']:.2f}x the images/s")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine(), "rows": rows + scaling}, indent=2))
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    main()
