"""Numeric precision for inference: where bf16 is fast, and an autocast context that says so where it is not.

bf16 autocast pays off only where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and x86 CPUs with
`avx512_bf16` or `amx_bf16`. On other CPUs (AVX2 only) torch emulates bf16 matmuls, which measured 50-100x slower
than float32 on this project's machines, so nothing here picks bf16 on its own.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises a native bf16 matmul instruction set (`avx512_bf16` or `amx_bf16`).

    Reads the flags of `cpuinfo` (Linux); returns `False` where that file does not exist.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with native bf16 flags."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def inference_autocast(
    device: torch.device | str, dtype: torch.dtype = torch.float32
) -> contextlib.AbstractContextManager:
    """A context for running [`ViTVQModel.encode`] / `decode` in `dtype`.

    `torch.float32` runs as is (no autocast); `torch.bfloat16` / `torch.float16` run under `torch.autocast` (the
    quantizer's nearest-code search stays in float32 either way). Asking for bf16 on a CPU without native bf16 logs
    one warning (once per process) and honours the request.

    Example:

    ```python
    >>> with inference_autocast("cpu", torch.bfloat16):
    ...     token_ids = model.encode(pixel_values)
    ```
    """
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype == torch.bfloat16 and not has_native_bf16(device):
        logger.warning_once(
            f"bf16 was requested on {device.type}, which has no native bf16 matmuls (CPU flags "
            f"{' / '.join(NATIVE_BF16_CPU_FLAGS)} missing): it runs emulated, typically 50-100x slower than float32. "
            "Use torch.float32 here."
        )
    return torch.autocast(device_type=device.type, dtype=dtype)


__all__ = ["cpu_has_native_bf16", "has_native_bf16", "inference_autocast"]
