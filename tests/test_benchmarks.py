"""benchmarks/inference.py: its FLOP count from the config matches torch's FLOP counter, and the script runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import load_script, tiny_config_kwargs
from torch.utils.flop_counter import FlopCounterMode

from hf_vitvq import ViTVQConfig, ViTVQModel

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "inference.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    yield load_script(BENCHMARK, "inference_benchmark")
    del sys.modules["inference_benchmark"]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_class_token": False, "encoder_mlp_ratio": 2.0, "num_latent_tokens": 5}],
    ids=["tiny", "no-class-token"],
)
def test_flops_from_the_config_match_torch_flop_counter(bench, overrides):
    """Eager attention runs as matmuls, which torch's counter sees: every matmul and convolution of encode (search
    included) and decode must be in the formula, and nothing else."""
    torch.manual_seed(0)
    config = ViTVQConfig(**tiny_config_kwargs(**overrides))
    model = ViTVQModel._from_config(config, attn_implementation="eager").eval()
    batch = 2
    with FlopCounterMode(display=False) as counter:
        token_ids = model.encode(torch.rand(batch, 3, config.image_size, config.image_size))
    assert counter.get_total_flops() == batch * bench.encoder_flops(config)
    with FlopCounterMode(display=False) as counter:
        model.decode(token_ids)
    assert counter.get_total_flops() == batch * bench.decoder_flops(config)


def test_benchmark_runs_and_writes_its_tables_and_json(bench, tmp_path, capsys):
    output = tmp_path / "inference.json"
    args = bench.parse_args(
        ["--presets", "tiny", "--batch_sizes", "1", "2", "--dtypes", "fp32", "--repeats", "2", "--min_time", "0"]
        + ["--photos_dir", str(tmp_path / "none"), "--output", str(output)]
    )
    results = bench.main(args)
    printed = capsys.readouterr().out
    assert [(r.preset, r.batch_size) for r in results] == [("tiny", 1), ("tiny", 2)]
    for result in results:
        assert len(result.encode_seconds) >= 2 and result.encode_images_per_second > 0
        assert result.encode_model_flops_per_image == bench.encoder_flops(ViTVQConfig.from_preset("tiny"))
        assert result.encode_percent_of_matmul > 0 and result.matmul_flops_per_second > 0
    assert "| tiny | 2 | fp32 | sdpa | no |" in printed and "Batch-1 latency" in printed
    payload = json.loads(output.read_text())
    assert payload["machine"]["torch"] == torch.__version__ and len(payload["results"]) == 2


def test_benchmark_compiles_with_frozen_weights(bench, tmp_path):
    args = bench.parse_args(
        ["--presets", "tiny", "--batch_sizes", "2", "--dtypes", "fp32", "--compile", "on", "--repeats", "1"]
        + ["--min_time", "0", "--photos_dir", str(tmp_path / "none"), "--output", str(tmp_path / "inference.json")]
    )
    (result,) = bench.main(args)
    assert result.compile and result.encode_images_per_second > 0 and result.decode_images_per_second > 0
