"""ONNX export of a [`ViTVQModel`]: the encoder (pixels -> token ids) and the decoder (token ids -> pixels) as two
graphs with a dynamic batch dimension, so that a tokenizer runs under onnxruntime without PyTorch.

Needs the `onnx` extra (`pip install "hf-vitvq[onnx]"`: onnx, onnxscript and onnxruntime to check the result).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .modeling_vitvq import ViTVQModel

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"


class ViTVQEncodeGraph(nn.Module):
    """`model.encode` as a module: (batch_size, C, H, W) float pixels -> what `encode` returns (token ids)."""

    def __init__(self, model: ViTVQModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode(pixel_values)


def gather_valid_ids(token_ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """The same ids, read through a Gather from the table `arange(codebook_size)`, at index `codebook_size` (out of
    its bounds) for every id outside [0, codebook_size): an exported graph's range check, since ONNX has no assertion
    op. onnxruntime rejects the out-of-bounds index (the exporter writes a GatherND node: "invalid index found,
    index = <codebook_size>"); without this, a negative id would index from the end of the codebook."""
    table = torch.arange(codebook_size, device=token_ids.device)
    in_range = (token_ids >= 0) & (token_ids < codebook_size)
    return table[torch.where(in_range, token_ids, codebook_size)]


class ViTVQDecodeGraph(nn.Module):
    """`model.decode` as a module: what `encode` returns (token ids) -> (batch_size, C, H, W) pixels; token ids
    outside [0, codebook_size) make the exported graph fail (see [`gather_valid_ids`])."""

    def __init__(self, model: ViTVQModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if not self.model.quantize.is_continuous:
            token_ids = gather_valid_ids(token_ids, self.model.config.codebook_size)
        return self.model.decode(token_ids)


def export_onnx(
    model: ViTVQModel, output_dir: str | Path, opset_version: int = 18, example_batch_size: int = 2
) -> dict[str, Path]:
    """Export `model` to `output_dir/encoder.onnx` and `output_dir/decoder.onnx` (float32, dynamic batch size).

    The encoder graph takes `pixel_values` (batch_size, num_channels, image_size, image_size) float32, normalised as
    [`ViTVQImageProcessor`] does, and returns `token_ids`: (batch_size, num_latent_tokens) int64 ids,
    (batch_size, num_latent_tokens, num_quantizers) for `quantizer_type="rvq"`, float32 latents
    (batch_size, num_latent_tokens, codebook_dim) for `"kl"`. The decoder graph takes `token_ids` and returns
    `pixel_values`. Both compute what [`ViTVQModel.encode`] / `decode` compute, with these differences in input
    checks (ONNX has no assertion op): the decoder graph rejects ids outside [0, codebook_size) by failing in
    onnxruntime with "invalid index found, index = <codebook_size>" (whatever the bad id was); the
    encoder graph does not check for NaN or infinite pixel values (such an image gets arbitrary ids, e.g. all 0),
    so check inputs you do not trust (`numpy.isfinite(pixel_values).all()`) before running it.

    Args:
        model: the tokenizer; it is exported in eval mode on the CPU in float32 (the model itself is not changed).
        output_dir: folder for the two files (created if missing).
        opset_version: ONNX opset of the graphs.
        example_batch_size: batch size of the example inputs traced (any size >= 2 gives the same graphs).

    Returns:
        `{"encoder": path, "decoder": path}`.
    """
    if example_batch_size < 2:
        raise ValueError("`example_batch_size` must be >= 2: a batch of 1 would be traced as a fixed size.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    was_training, device, dtype = model.training, model.device, model.dtype
    model.eval().to("cpu", torch.float32)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.rand(
        example_batch_size, config.num_channels, config.image_size, config.image_size, generator=generator
    )
    token_ids = model.encode(pixel_values)  # the decoder's input in the layout of the model's quantizer
    batch = torch.export.Dim("batch_size", min=1)
    graphs = {
        "encoder": (ViTVQEncodeGraph(model).eval(), pixel_values, "pixel_values", "token_ids", ENCODER_FILE),
        "decoder": (ViTVQDecodeGraph(model).eval(), token_ids, "token_ids", "pixel_values", DECODER_FILE),
    }
    paths = {}
    try:
        for name, (module, example, input_name, output_name, file_name) in graphs.items():
            paths[name] = output_dir / file_name
            torch.onnx.export(
                module,
                (example,),
                paths[name],
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes={input_name: {0: batch}},
                opset_version=opset_version,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        model.to(device, dtype).train(was_training)
    return paths


__all__ = ["export_onnx", "gather_valid_ids", "ViTVQEncodeGraph", "ViTVQDecodeGraph", "ENCODER_FILE", "DECODER_FILE"]
