"""The CUDA path: encode/decode on a GPU agree with the CPU (fp32, TF32, bf16 autocast); skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig, ViTVQModel
from hf_vitvq.precision import has_native_bf16, inference_autocast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def models() -> tuple[ViTVQModel, ViTVQModel]:
    torch.manual_seed(0)
    cpu = ViTVQModel(ViTVQConfig(**tiny_config_kwargs(), attn_implementation="sdpa")).eval()
    gpu = ViTVQModel(ViTVQConfig(**tiny_config_kwargs())).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.to("cuda")


def pixels(config: ViTVQConfig, batch: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, config.num_channels, config.image_size, config.image_size, generator=generator) * 2 - 1


def test_fp32_on_gpu_matches_cpu(models):
    cpu, gpu = models
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        x = pixels(cpu.config)
        token_ids = gpu.encode(x.cuda())
        assert token_ids.device.type == "cuda"
        assert torch.equal(token_ids.cpu(), cpu.encode(x))
        torch.testing.assert_close(gpu.decode(token_ids).cpu(), cpu.decode(token_ids.cpu()), atol=1e-4, rtol=1e-4)
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("mode", ["tf32", "bf16"])
def test_reduced_precision_on_gpu_stays_close_to_fp32(models, mode):
    _, gpu = models
    x = pixels(gpu.config, batch=16).cuda()
    reference_ids = gpu.encode(x)
    reference = gpu.decode(reference_ids)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if mode == "tf32" else "highest")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    if mode == "bf16" and not has_native_bf16("cuda"):
        pytest.skip("this GPU has no native bf16")
    try:
        with inference_autocast("cuda", dtype):
            token_ids = gpu.encode(x)
            decoded = gpu.decode(reference_ids)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert token_ids.dtype == torch.int64
    assert (token_ids == reference_ids).float().mean() >= 0.9
    torch.testing.assert_close(decoded.float(), reference, atol=5e-2, rtol=0)


def test_compiled_encode_decode_on_gpu(models):
    _, gpu = models
    torch._dynamo.reset()
    x = pixels(gpu.config).cuda()
    encode = torch.compile(gpu.encode, fullgraph=True)
    decode = torch.compile(gpu.decode, fullgraph=True)
    token_ids = encode(x)
    assert torch.equal(token_ids, gpu.encode(x))
    torch.testing.assert_close(decode(token_ids), gpu.decode(token_ids), atol=1e-4, rtol=1e-4)
