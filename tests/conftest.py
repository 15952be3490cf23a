"""Shared fixtures: tiny configs, real photos from ../shared/data/photos, and a quiet, offline environment."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTOS_DIR = REPO_ROOT.parent / "shared" / "data" / "photos"


def load_script(path: Path, name: str) -> ModuleType:
    """The script at `path` (a launchable script, not part of the package: training/train.py, a benchmark) imported as
    module `name`, once: registered in `sys.modules` under that name, where its dataclasses look their module up and
    where a script that imports a sibling by name (`from collapse_ablation import ...`) finds it once it is loaded."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_on_two_cpu_processes(target: list[str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`torchrun` of `target` (a script and its arguments, or `-m module ...`) as 2 CPU processes (gloo), one thread
    each, offline; fails the test with the end of its stderr unless it succeeds. (`accelerate launch --cpu
    --num_processes 2` silently starts one process; torchrun starts two synchronised ranks.)"""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def tiny_config_kwargs(**overrides: object) -> dict:
    """A ViTVQConfig small enough for 2 CPU cores, with odd sizes so that mixed-up dimensions show."""
    kwargs = {
        "image_size": 32,
        "patch_size": 8,
        "encoder_hidden_size": 64,
        "encoder_num_hidden_layers": 2,
        "encoder_num_attention_heads": 4,
        "encoder_mlp_ratio": 2.0,
        "decoder_hidden_size": 48,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 3,
        "decoder_mlp_ratio": 3.0,
        "num_latent_tokens": 7,
        "codebook_size": 37,
        "codebook_dim": 5,
    }
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_config():
    from hf_vitvq import ViTVQConfig

    return ViTVQConfig(**tiny_config_kwargs())


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    """The shared real photos (sorted); tests that need them skip when the folder is absent."""
    if not PHOTOS_DIR.is_dir():
        pytest.skip(f"real photos not found at {PHOTOS_DIR}")
    return sorted(PHOTOS_DIR.glob("*.jpg"))
