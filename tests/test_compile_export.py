"""torch.compile of encode/decode without graph breaks, ONNX export (onnxruntime against PyTorch), the CLI, and the
precision helpers."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig, ViTVQModel
from hf_vitvq import precision as precision_module
from hf_vitvq.cli import main as cli_main
from hf_vitvq.precision import cpu_has_native_bf16, inference_autocast

# Inductor's generated code and onnxruntime's MLAS kernels sum in other orders than eager PyTorch, and each picks its
# kernels by the CPU's instruction set (AVX2 or AVX-512): a relative part plus an absolute floor. Measured here: up
# to 1e-7 on values up to 0.3 (ONNX), 1.5e-8 (inductor): at most 0.009 of this tolerance.
OTHER_KERNELS_TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def make_model(**overrides) -> ViTVQModel:
    torch.manual_seed(0)
    return ViTVQModel(ViTVQConfig(**tiny_config_kwargs(**overrides))).eval()


def pixels(config: ViTVQConfig, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.num_channels, config.image_size, config.image_size, generator=generator) * 2 - 1


def test_compiled_encode_and_decode_have_no_graph_breaks_and_match_eager():
    torch._dynamo.reset()
    model = make_model()
    x = pixels(model.config, batch=3)
    encode = torch.compile(model.encode, fullgraph=True, backend="inductor")
    decode = torch.compile(model.decode, fullgraph=True, backend="inductor")
    token_ids = encode(x)
    assert torch.equal(token_ids, model.encode(x))
    torch.testing.assert_close(decode(token_ids), model.decode(token_ids), **OTHER_KERNELS_TOLERANCE)
    # compiled outside inference mode, but the results carry no autograd history
    assert not decode(token_ids).requires_grad


onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX tests need the onnx extra: pip install '.[onnx]'")
pytest.importorskip("onnxscript", reason="torch.onnx.export (dynamo) needs onnxscript: pip install '.[onnx]'")


# The three layouts of what `encode` returns: (B, L) ids, (B, L, num_quantizers) ids, (B, L, codebook_dim) latents.
QUANTIZERS = {
    "vq": {},
    "rvq": {"quantizer_type": "rvq", "num_quantizers": 2, "use_l2_norm_codes": False},
    "kl": {"quantizer_type": "kl"},
}


@pytest.fixture(scope="module", params=list(QUANTIZERS))
def exported(request, tmp_path_factory):
    from hf_vitvq.onnx_export import export_onnx

    model = make_model(**QUANTIZERS[request.param])
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_pytorch_at_any_batch_size(exported, batch):
    model, paths = exported
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    encoder = onnxruntime.InferenceSession(paths["encoder"], options, providers=["CPUExecutionProvider"])
    decoder = onnxruntime.InferenceSession(paths["decoder"], options, providers=["CPUExecutionProvider"])
    x = pixels(model.config, batch=batch, seed=batch)
    expected_ids = model.encode(x)
    (token_ids,) = encoder.run(None, {"pixel_values": x.numpy()})
    assert token_ids.shape == tuple(expected_ids.shape) and str(token_ids.dtype) == str(expected_ids.dtype)[6:]
    if model.quantize.is_continuous:
        torch.testing.assert_close(torch.from_numpy(token_ids), expected_ids, **OTHER_KERNELS_TOLERANCE)
    else:
        assert torch.equal(torch.from_numpy(token_ids), expected_ids)
    (decoded,) = decoder.run(None, {"token_ids": token_ids})
    expected = model.decode(torch.from_numpy(token_ids))
    torch.testing.assert_close(torch.from_numpy(decoded), expected, **OTHER_KERNELS_TOLERANCE)


def test_export_leaves_the_model_as_it_was(exported):
    model, _ = exported
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"


def test_cli_export_onnx_writes_both_graphs(tmp_path, capsys):
    model = make_model()
    model.save_pretrained(tmp_path / "model")
    cli_main(["export-onnx", str(tmp_path / "model"), str(tmp_path / "onnx")])
    assert {path.name for path in (tmp_path / "onnx").iterdir()} == {"encoder.onnx", "decoder.onnx"}
    assert "encoder:" in capsys.readouterr().out


def test_cpu_bf16_detection_reads_the_cpu_flags(tmp_path):
    with_flags = tmp_path / "with"
    with_flags.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16(with_flags) and not cpu_has_native_bf16(without)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_bf16_without_native_support_warns_once_and_fp32_never_autocasts(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    model = make_model()
    x = pixels(model.config, batch=2)
    with inference_autocast("cpu", torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    type(precision_module.logger).warning_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hf_vitvq.precision"):
        for _ in range(3):
            with inference_autocast("cpu", torch.bfloat16):
                assert torch.is_autocast_enabled("cpu")
                token_ids = model.encode(x)
    assert token_ids.dtype == torch.int64
    warnings = [record for record in caplog.records if "bf16" in record.getMessage()]
    assert len(warnings) == 1 and "50-100x slower" in warnings[0].getMessage()
