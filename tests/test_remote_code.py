"""A saved folder loads with `trust_remote_code=True` in a process where `hf_vitvq` cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from conftest import tiny_config_kwargs
from PIL import Image
from safetensors.torch import load_file, save_file

from hf_vitvq import ViTVQConfig, ViTVQImageProcessor, ViTVQModel

# The start of every script `run_without_the_package` runs: any import of hf_vitvq fails, so only the files in the
# folder can be used; the script's arguments are the folder and the paths of its inputs and outputs.
BLOCK_THE_PACKAGE = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    class BlockHfVitvq(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_vitvq" or name.startswith("hf_vitvq."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockHfVitvq())
    folder, inputs_path, outputs_path = sys.argv[1:]
    """
)

LOADER = textwrap.dedent(
    """
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert "hf_vitvq" not in sys.modules, "hf_vitvq was imported"
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    pixel_values = load_file(inputs_path)["pixel_values"]
    output = model(pixel_values)
    codes = model.encode(pixel_values)  # token ids; latents for continuous tokens
    image = Image.new("RGB", (40, 50), (200, 30, 90))
    outputs = {
        "token_ids": codes,
        "reconstruction": output.reconstruction.detach(),
        "decoded": model.decode(codes),
        "processed": processor(image, return_tensors="pt").pixel_values,
    }
    save_file(outputs, outputs_path)
    print(type(model).__name__, type(processor).__name__)
    """
)


def run_without_the_package(
    script: str, folder: Path, inputs: dict[str, torch.Tensor], tmp_path: Path
) -> tuple[str, dict[str, torch.Tensor]]:
    """Run `BLOCK_THE_PACKAGE` + `script` in a fresh, offline interpreter that cannot import hf_vitvq (its working
    folder is `tmp_path`, not the repository root, where hf_vitvq/ would be importable), on the saved `folder` and
    `inputs` (saved for it); returns what it printed and the tensors it saved to `outputs_path`."""
    save_file(inputs, tmp_path / "inputs.safetensors")
    script_path = tmp_path / "load.py"
    script_path.write_text(BLOCK_THE_PACKAGE + script)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    arguments = [str(folder), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")]
    result = subprocess.run([sys.executable, str(script_path), *arguments], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, load_file(tmp_path / "out.safetensors")


def load_without_the_package(folder: Path, pixel_values: torch.Tensor, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Run `LOADER` on the saved `folder` without hf_vitvq (`run_without_the_package`), and return what it computed
    from `pixel_values`: token_ids (latents for continuous tokens), reconstruction, decoded, and `processed` (a 40x50
    image)."""
    stdout, outputs = run_without_the_package(LOADER, folder, {"pixel_values": pixel_values}, tmp_path)
    assert "ViTVQModel ViTVQImageProcessor" in stdout
    return outputs


def test_saved_folder_loads_with_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = ViTVQModel(ViTVQConfig(**tiny_config_kwargs())).eval()
    processor = ViTVQImageProcessor.for_image_size(model.config.image_size)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vitvq.ViTVQConfig",
        "AutoModel": "modeling_vitvq.ViTVQModel",
    }
    assert json.loads((folder / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoImageProcessor": "image_processing_vitvq.ViTVQImageProcessor"
    }
    assert (folder / "modeling_vitvq.py").is_file() and (folder / "quantizer_vq.py").is_file()

    pixel_values = torch.rand(2, 3, 32, 32) * 2 - 1
    remote = load_without_the_package(folder, pixel_values, tmp_path)
    output = model(pixel_values)
    assert torch.equal(remote["token_ids"], model.encode(pixel_values))
    assert torch.equal(remote["reconstruction"], output.reconstruction.detach())
    assert torch.equal(remote["decoded"], model.decode(output.token_ids))
    image_pixels = processor(Image.new("RGB", (40, 50), (200, 30, 90)), return_tensors="pt").pixel_values
    assert torch.equal(remote["processed"], image_pixels)
