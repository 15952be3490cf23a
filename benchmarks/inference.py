"""Inference benchmark: encode / decode images per second, batch-1 latency, peak memory and FLOP/s against torch.mm.

Run from the repository root (prints Markdown tables, writes JSON to `--output`):

    .venv/bin/python benchmarks/inference.py            # default sweep: about 10 minutes on an idle 2-core CPU
    .venv/bin/python benchmarks/inference.py --full     # batch 1/8/32 x fp32/bf16 x sdpa/eager x compile off/on
    .venv/bin/python benchmarks/inference.py --presets S-128 --batch_sizes 8 --attn sdpa eager --compile off on
    .venv/bin/python benchmarks/inference.py --device cuda --dtypes fp32 tf32 bf16 --batch_sizes 1 8 32 128 256

`--titok_repo PATH` also times the published TiTok implementation (a local checkout of bytedance/1d-tokenizer,
random weights, pixel head, same size) interleaved with ours; its code needs `einops` and `omegaconf`.

FLOPs are counted from the config, one multiply-add = 2 FLOPs, over every matmul and convolution the forward
runs (elementwise ops, LayerNorm, softmax and GELU are not counted): a layer over S tokens of width W with MLP width I
costs 2*S*(4*W^2 + 2*W*I) + 4*S^2*W; the last layer computes only the K positions kept (the encoder's latent
tokens, the decoder's patches): 2*S*3*W^2 + 4*K*S*W + 2*K*(W^2 + 2*W*I). The reference is torch.mm on
the encoder's MLP shape, (B*S, W) x (W, I), in the same dtype, timed in the same rounds as the model's calls (so that
load from other processes hits both alike). Throughput comes from each function's fastest round (load only ever adds
time); batch-1 latency is the median.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, or from another interpreter (--titok_repo)

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel  # noqa: E402
from hf_vitvq.metrics import psnr  # noqa: E402
from hf_vitvq.precision import has_native_bf16, inference_autocast  # noqa: E402

PRESETS = ["tiny", "S-128", "B-64", "L-32"]
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
TITOK_SIZES = {512: "small", 768: "base", 1024: "large"}
MATMULS_PER_ROUND = 4  # the reference mm is short next to a model call: several per round, fewer outliers
DEFAULT_PHOTOS_DIR = REPO_ROOT.parent / "shared" / "data" / "photos"


# ----------------------------------------------------------------------------------------------- FLOP counting


def layer_flops(num_tokens: int, num_outputs: int, width: int, mlp_width: int) -> int:
    """Matmul FLOPs of one block over `num_tokens` that computes `num_outputs` of them: QKV for every token,
    attention (QK^T and AV), output projection and MLP for the outputs."""
    qkv = 2 * num_tokens * 3 * width * width
    attention = 4 * num_outputs * num_tokens * width
    return qkv + attention + 2 * num_outputs * (width * width + 2 * width * mlp_width)


def transformer_flops(num_tokens: int, num_kept: int, width: int, mlp_width: int, num_layers: int) -> int:
    """Matmul FLOPs of a ViT stack whose last layer computes only the `num_kept` positions it returns."""
    full_layers = (num_layers - 1) * layer_flops(num_tokens, num_tokens, width, mlp_width)
    return full_layers + layer_flops(num_tokens, num_kept, width, mlp_width)


def encoder_flops(config: ViTVQConfig) -> int:
    """FLOPs to encode one image: patch embedding, the ViT over [cls] + patches + latents, projection, VQ search."""
    sizes = config.encoder_sizes
    num_tokens = int(config.use_class_token) + config.num_patches + config.num_latent_tokens
    patch_embedding = 2 * config.num_patches * config.num_channels * config.patch_size**2 * sizes.hidden_size
    projection = 2 * config.num_latent_tokens * sizes.hidden_size * config.codebook_dim
    search = 2 * config.num_latent_tokens * config.codebook_dim * config.codebook_size
    stack = transformer_flops(
        num_tokens, config.num_latent_tokens, sizes.hidden_size, sizes.intermediate_size, sizes.num_hidden_layers
    )
    return patch_embedding + stack + projection + search


def decoder_flops(config: ViTVQConfig) -> int:
    """FLOPs to decode one image: code embedding, the ViT, the per-patch pixel projection and the 3x3 output conv."""
    sizes = config.decoder_sizes
    num_tokens = int(config.use_class_token) + config.num_patches + config.num_latent_tokens
    embedding = 2 * config.num_latent_tokens * config.codebook_dim * sizes.hidden_size
    pixels = 2 * config.num_patches * sizes.hidden_size * config.patch_size**2 * config.num_channels
    conv_out = 2 * config.image_size**2 * config.num_channels**2 * 9
    stack = transformer_flops(
        num_tokens, config.num_patches, sizes.hidden_size, sizes.intermediate_size, sizes.num_hidden_layers
    )
    return embedding + stack + pixels + conv_out


# ----------------------------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(function: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(
    functions: dict[str, Callable[[], object]], device: torch.device, repeats: int, min_time: float
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin (one call of each per round) after one warm-up call
    each, for at least `repeats` rounds and `min_time` seconds, so that load changes hit every function alike."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    start = time.perf_counter()
    while len(next(iter(times.values()))) < repeats or time.perf_counter() - start < min_time:
        for name, function in functions.items():
            times[name].append(time_once(function, device))
    return times


@contextmanager
def peak_memory(device: torch.device, sample_every: float = 0.002) -> Iterator[dict[str, float]]:
    """Peak memory in MiB while the block runs: max allocated on a GPU, sampled process RSS on the CPU."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["peak_mib"] = peak[0] / 2**20


@contextmanager
def precision(device: torch.device, dtype_name: str) -> Iterator[None]:
    """fp32 as is, tf32 via `torch.set_float32_matmul_precision("high")`, bf16 via autocast."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if dtype_name == "tf32" else "highest")
    try:
        with inference_autocast(device, DTYPES[dtype_name]):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


# ----------------------------------------------------------------------------------------------- the published TiTok


def load_titok_class(repo: Path) -> type:
    """Import `TiTok` from a checkout of bytedance/1d-tokenizer. Its `modeling.modules` package imports the training
    losses, whose perceptual loss imports torchvision; the tokenizer does not use it, so an empty stand-in is
    registered when torchvision is missing."""
    sys.path.insert(0, str(repo))
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("torchvision")
        stand_in.models = types.ModuleType("torchvision.models")
        sys.modules["torchvision"], sys.modules["torchvision.models"] = stand_in, stand_in.models
    from modeling.titok import TiTok

    return TiTok


def build_titok(titok_class: type, config: ViTVQConfig) -> torch.nn.Module | None:
    """The published TiTok at the size of `config` (pixel head, `is_legacy=False`), or None for non-TiTok sizes."""
    sizes = (config.encoder_hidden_size, config.decoder_hidden_size)
    if not all(size in TITOK_SIZES for size in sizes) or config.patch_size != 16 or not config.use_class_token:
        return None
    vq_model = {
        "codebook_size": config.codebook_size,
        "token_size": config.codebook_dim,
        "use_l2_norm": config.use_l2_norm_codes,
        "commitment_cost": config.commitment_cost,
        "vit_enc_model_size": TITOK_SIZES[sizes[0]],
        "vit_dec_model_size": TITOK_SIZES[sizes[1]],
        "vit_enc_patch_size": config.patch_size,
        "vit_dec_patch_size": config.patch_size,
        "num_latent_tokens": config.num_latent_tokens,
        "finetune_decoder": False,
        "is_legacy": False,
    }
    titok_config = {
        "experiment": {},
        "model": {"vq_model": vq_model},
        "dataset": {"preprocessing": {"crop_size": config.image_size}},
    }
    return titok_class(titok_config).eval()


# ----------------------------------------------------------------------------------------------- one benchmark


@dataclass
class Result:
    preset: str
    batch_size: int
    dtype: str
    attn: str
    compile: bool
    encode_seconds: list[float]
    decode_seconds: list[float]
    encode_images_per_second: float
    decode_images_per_second: float
    encode_model_flops_per_image: int
    decode_model_flops_per_image: int
    encode_flops_per_second: float
    decode_flops_per_second: float
    matmul_flops_per_second: float
    encode_percent_of_matmul: float
    decode_percent_of_matmul: float
    peak_memory_mib: float
    titok: dict[str, float] = field(default_factory=dict)


def compile_frozen(function: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> Callable:
    """`torch.compile(function)`, compiled now on `example` with inductor's `freezing`: the weights become constants
    that inductor may pre-pack and fold into fused kernels (the compiled function then ignores later changes to the
    weights: the inference recipe, not one for training)."""
    compiled = torch.compile(function)
    with torch._inductor.config.patch(freezing=True):
        compiled(example)
    return compiled


def build_model(preset: str, attn: str, device: torch.device) -> ViTVQModel:
    torch.manual_seed(0)
    config = ViTVQConfig.from_preset(preset)
    return ViTVQModel._from_config(config, attn_implementation=attn).to(device).eval()


def benchmark(
    model: ViTVQModel,
    preset: str,
    batch_size: int,
    dtype_name: str,
    compile_model: bool,
    device: torch.device,
    args: argparse.Namespace,
    titok: torch.nn.Module | None,
) -> Result:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, config.num_channels, config.image_size, config.image_size)
    pixel_values = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    token_ids = torch.randint(0, config.codebook_size, (batch_size, config.num_latent_tokens), generator=generator)
    token_ids = token_ids.to(device)
    encode, decode = model.encode, model.decode
    if compile_model:
        with precision(device, dtype_name):  # compiled for the autocast state it will run under
            encode, decode = compile_frozen(encode, pixel_values), compile_frozen(decode, token_ids)

    # The reference matmul: the encoder's MLP shape in the same dtype, timed in the same rounds as the model.
    sizes = config.encoder_sizes
    num_tokens = int(config.use_class_token) + config.num_patches + config.num_latent_tokens
    mm_shape = (batch_size * num_tokens, sizes.hidden_size, sizes.intermediate_size)
    mm_dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a = torch.randn(mm_shape[:2], device=device, dtype=mm_dtype)
    b = torch.randn(mm_shape[1:], device=device, dtype=mm_dtype)
    functions = {
        "encode": lambda: encode(pixel_values),
        "decode": lambda: decode(token_ids),
        "matmul": lambda: [torch.mm(a, b) for _ in range(MATMULS_PER_ROUND)],
    }
    if titok is not None:

        @torch.inference_mode()
        def titok_encode() -> torch.Tensor:
            return titok.encode(pixel_values)[1]["min_encoding_indices"]

        @torch.inference_mode()
        def titok_decode() -> torch.Tensor:
            return titok.decode_tokens(token_ids)

        functions |= {"titok_encode": titok_encode, "titok_decode": titok_decode}

    with precision(device, dtype_name), peak_memory(device) as memory:
        times = time_interleaved(functions, device, args.repeats, args.min_time)
    # Throughput from each function's fastest round: load from other processes only ever adds time.
    matmul = 2 * mm_shape[0] * mm_shape[1] * mm_shape[2] * MATMULS_PER_ROUND / min(times["matmul"])
    per_image = {"encode": encoder_flops(config), "decode": decoder_flops(config)}
    rate = {name: batch_size / min(seconds) for name, seconds in times.items() if name != "matmul"}
    titok_rates = {}
    if titok is not None:
        titok_rates = {
            "encode_images_per_second": rate["titok_encode"],
            "decode_images_per_second": rate["titok_decode"],
            "encode_speedup": rate["encode"] / rate["titok_encode"],
            "decode_speedup": rate["decode"] / rate["titok_decode"],
        }
    return Result(
        preset=preset,
        batch_size=batch_size,
        dtype=dtype_name,
        attn=config._attn_implementation,
        compile=compile_model,
        encode_seconds=times["encode"],
        decode_seconds=times["decode"],
        encode_images_per_second=rate["encode"],
        decode_images_per_second=rate["decode"],
        encode_model_flops_per_image=per_image["encode"],
        decode_model_flops_per_image=per_image["decode"],
        encode_flops_per_second=rate["encode"] * per_image["encode"],
        decode_flops_per_second=rate["decode"] * per_image["decode"],
        matmul_flops_per_second=matmul,
        encode_percent_of_matmul=100 * rate["encode"] * per_image["encode"] / matmul,
        decode_percent_of_matmul=100 * rate["decode"] * per_image["decode"] / matmul,
        peak_memory_mib=memory["peak_mib"],
        titok=titok_rates,
    )


def load_photos(photos_dir: Path, image_size: int, count: int) -> torch.Tensor | None:
    """Up to `count` photos from `photos_dir`, preprocessed as the model expects, or None if there are none."""
    paths = sorted(photos_dir.glob("*.jpg"))[:count] if photos_dir.is_dir() else []
    if not paths:
        return None
    processor = ViTVQImageProcessor.for_image_size(image_size)
    images = [Image.open(path).convert("RGB") for path in paths]
    return processor(images, return_tensors="pt").pixel_values


def low_precision_agreement(
    model: ViTVQModel, photos: torch.Tensor, dtype_name: str, device: torch.device, batch_size: int
) -> dict[str, float]:
    """How far `dtype_name` strays from float32 on real photos: the fraction of identical token ids, and the PSNR
    (images mapped to [0, 1]) of the low-precision decode of the float32 tokens against their float32 decode."""
    same, total, psnrs = 0, 0, []
    for batch in photos.split(batch_size):
        batch = batch.to(device)
        with precision(device, "fp32"):
            ids32 = model.encode(batch)
            images32 = model.decode(ids32)
        with precision(device, dtype_name):
            ids_low = model.encode(batch)
            images_low = model.decode(ids32)
        same += int((ids_low == ids32).sum())
        total += ids32.numel()

        def to_unit(images: torch.Tensor) -> torch.Tensor:
            return ((images.float().clamp(-1, 1) + 1) / 2).cpu()

        psnrs.append(psnr(to_unit(images_low), to_unit(images32)))
    return {"token_agreement": same / total, "psnr_db": float(torch.cat(psnrs).mean()), "num_images": len(photos)}


# ----------------------------------------------------------------------------------------------- reporting


def machine_description(device: torch.device) -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    description = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "native_bf16": has_native_bf16(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


CASE_COLUMNS = ["preset", "batch", "dtype", "attn", "compile"]


def case_cells(r: Result) -> list[object]:
    """The cells of `CASE_COLUMNS`: which configuration a row measured."""
    return [r.preset, r.batch_size, r.dtype, r.attn, "yes" if r.compile else "no"]


def report(machine: dict[str, object], results: list[Result], agreement: dict[str, dict], notes: list[str]) -> str:
    where = f"{machine['cpu']}, {machine['threads']} threads" + (f", {machine['gpu']}" if "gpu" in machine else "")
    lines = [f"Machine: {where}; torch {machine['torch']}; native bf16: {machine['native_bf16']}", ""]
    has_titok = any(result.titok for result in results)
    header = [
        *CASE_COLUMNS,
        "encode img/s",
        "decode img/s",
        "encode GFLOP/s",
        "mm GFLOP/s",
        "encode % of mm",
        "decode % of mm",
        "peak MiB",
    ]
    if has_titok:
        header += ["TiTok encode img/s", "TiTok decode img/s", "encode vs TiTok", "decode vs TiTok"]
    rows = []
    for r in results:
        row = [
            *case_cells(r),
            f"{r.encode_images_per_second:.2f}",
            f"{r.decode_images_per_second:.2f}",
            f"{r.encode_flops_per_second / 1e9:.1f}",
            f"{r.matmul_flops_per_second / 1e9:.1f}",
            f"{r.encode_percent_of_matmul:.0f}%",
            f"{r.decode_percent_of_matmul:.0f}%",
            f"{r.peak_memory_mib:.0f}",
        ]
        if has_titok:
            t = r.titok
            row += (
                [
                    f"{t['encode_images_per_second']:.2f}",
                    f"{t['decode_images_per_second']:.2f}",
                    f"{t['encode_speedup']:.2f}x",
                    f"{t['decode_speedup']:.2f}x",
                ]
                if t
                else ["-"] * 4
            )
        rows.append(row)
    lines += ["Throughput (fastest of the timed rounds):", "", markdown_table(header, rows), ""]

    batch_one = [r for r in results if r.batch_size == 1]
    if batch_one:
        rows = [
            [
                r.preset,
                r.dtype,
                r.attn,
                "yes" if r.compile else "no",
                f"{1000 * statistics.median(r.encode_seconds):.1f}",
                f"{1000 * statistics.median(r.decode_seconds):.1f}",
            ]
            for r in batch_one
        ]
        header = ["preset", "dtype", "attn", "compile", "encode ms", "decode ms"]
        lines += ["Batch-1 latency (median):", "", markdown_table(header, rows), ""]

    rows = []
    fp32 = {(r.preset, r.batch_size, r.attn, r.compile): r for r in results if r.dtype == "fp32"}
    for r in results:
        base = fp32.get((r.preset, r.batch_size, r.attn, r.compile))
        if r.dtype == "fp32" or base is None:
            continue
        quality = agreement.get(f"{r.preset}/{r.dtype}", {})
        rows.append(
            [
                *case_cells(r),
                f"{r.encode_images_per_second / base.encode_images_per_second:.2f}x",
                f"{r.decode_images_per_second / base.decode_images_per_second:.2f}x",
                f"{r.matmul_flops_per_second / base.matmul_flops_per_second:.2f}x",
                f"{100 * quality['token_agreement']:.2f}%" if quality else "-",
                f"{quality['psnr_db']:.1f}" if quality else "-",
            ]
        )
    if rows:
        header = [
            *CASE_COLUMNS,
            "encode vs fp32",
            "decode vs fp32",
            "mm vs fp32 mm",
            "token ids = fp32",
            "PSNR vs fp32 decode (dB)",
        ]
        lines += [
            "Lower precision against fp32 (same run; 'mm vs fp32 mm': what the hardware gains on a plain matmul;"
            " agreement on real photos):",
            "",
            markdown_table(header, rows),
        ]
        lines.append("")
    lines += [f"Note: {note}" for note in notes]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["fp32", "bf16"],
        choices=list(DTYPES),
        help="bf16 runs only where the device computes it natively (see --force_bf16); tf32: CUDA.",
    )
    parser.add_argument("--attn", nargs="+", default=["sdpa"], choices=["sdpa", "eager"])
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument(
        "--full",
        action="store_true",
        help="Every preset at batch 1, 8, 32, fp32 and bf16, sdpa and eager, compile off and on.",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per measurement (after one warm-up).")
    parser.add_argument("--min_time", type=float, default=1.0, help="Keep timing until this many seconds passed.")
    parser.add_argument(
        "--titok_repo",
        type=Path,
        default=None,
        help="Local checkout of bytedance/1d-tokenizer: time its TiTok too, interleaved with ours.",
    )
    parser.add_argument("--force_bf16", action="store_true", help="Time bf16 even without native bf16 (slow).")
    parser.add_argument(
        "--photos_dir",
        type=Path,
        default=DEFAULT_PHOTOS_DIR,
        help="Real photos for the bf16 vs fp32 agreement check (skipped when absent).",
    )
    parser.add_argument("--num_photos", type=int, default=16)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs" / "benchmarks" / "inference.json")
    args = parser.parse_args(argv)
    if args.full:
        args.batch_sizes, args.dtypes = [1, 8, 32], ["fp32", "bf16"]
        args.attn, args.compile = ["sdpa", "eager"], ["off", "on"]
    if any(size < 1 for size in args.batch_sizes):
        raise ValueError("--batch_sizes must be positive integers, e.g. --batch_sizes 1 8 32.")
    if "tf32" in args.dtypes and not args.device.startswith("cuda"):
        raise ValueError("--dtypes tf32 is a CUDA mode; on a CPU pass --dtypes fp32 bf16.")
    if args.titok_repo is not None and not (args.titok_repo / "modeling" / "titok.py").is_file():
        raise ValueError(f"--titok_repo {args.titok_repo} has no modeling/titok.py; pass a 1d-tokenizer checkout.")
    return args


def main(args: argparse.Namespace) -> list[Result]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = machine_description(device)
    notes, dtypes = [], list(args.dtypes)
    if "bf16" in dtypes and not machine["native_bf16"] and not args.force_bf16:
        dtypes.remove("bf16")
        notes.append(
            f"bf16 skipped: this {device.type} has no native bf16 (CPU flags avx512_bf16 / amx_bf16 missing), where "
            "bf16 matmuls run 50-100x slower than fp32. Pass --force_bf16 to time it anyway."
        )
    titok_class = load_titok_class(args.titok_repo) if args.titok_repo else None
    print(f"Machine: {machine}", flush=True)

    results, agreement = [], {}
    for preset in args.presets:
        for attn in args.attn:
            model = build_model(preset, attn, device)
            titok = None
            if titok_class is not None:
                titok = build_titok(titok_class, model.config)
                if titok is None:
                    notes.append(f"{preset}: not a published TiTok size, timed without the TiTok comparison.")
                else:
                    titok = titok.to(device)
            for compile_model in (flag == "on" for flag in args.compile):
                torch._dynamo.reset()
                for dtype_name in dtypes:
                    for batch_size in args.batch_sizes:
                        result = benchmark(model, preset, batch_size, dtype_name, compile_model, device, args, titok)
                        results.append(result)
                        print(
                            f"{preset} batch {batch_size} {dtype_name} {attn} compile={compile_model}: encode "
                            f"{result.encode_images_per_second:.2f} img/s, decode "
                            f"{result.decode_images_per_second:.2f} img/s {result.titok or ''}",
                            flush=True,
                        )
            for dtype_name in dtypes:
                key = f"{preset}/{dtype_name}"
                if dtype_name == "fp32" or key in agreement:
                    continue
                photos = load_photos(args.photos_dir, model.config.image_size, args.num_photos)
                if photos is None:
                    notes.append(f"no photos in {args.photos_dir}: {dtype_name} agreement not measured.")
                    continue
                agreement[key] = low_precision_agreement(model, photos, dtype_name, device, max(args.batch_sizes))
            del model, titok

    text = report(machine, results, agreement, notes)
    print("\n" + text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine,
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "results": [asdict(result) for result in results],
        "low_precision_agreement": agreement,
        "notes": notes,
    }
    args.output.write_text(json.dumps(payload, indent=1))
    print(f"\nWrote {args.output}")
    return results


if __name__ == "__main__":
    main(parse_args())
